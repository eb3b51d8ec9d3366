"""Wants (what a receiver still lacks) and the loop that asks for them until none is left.

A :class:`Want` lists ``(entry index, offset, length)`` items: the bytes of those files
that a receiver asks a source to send, as one response (a frame stream ending in END).
:func:`batch_wants` cuts what is missing into wants that carry many small files at once
(up to ``max_items``) and split large files, so one response stays under a byte
``budget`` (a cut costs at most what was in flight, and a long file does not hold one
response open for minutes).

Every receiver (:class:`~mlsm.bulk.sink.Sink`, :class:`~mlsm.bulk.inplace.InPlaceSink`,
:class:`~mlsm.bulk.storesink.StoreSink`) is a :class:`Receiver`: ``next_want()`` says what to ask
for next (None: complete), ``feed()`` takes the response's bytes. The contract a transport
keeps: one response at a time per receiver, in order; ``next_want()`` before each request
(it also forgets a half-read frame of a response that was cut); bytes of a response that
broke off are simply followed by the next ``next_want()``. :func:`pump` is that loop for
a synchronous fetch function (a local source, tests, a thread of a transport);
:func:`apump` the same for an async one.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator
from typing import Annotated, Protocol

import msgspec

from mlsm.errors import TransferFailed

__all__ = [
    "FEED_BATCH_BYTES",
    "MAX_WANT_ITEMS",
    "WANT_BYTES",
    "WANT_ITEMS",
    "Receiver",
    "Want",
    "afeed",
    "apump",
    "batch_wants",
    "decode_want",
    "encode_want",
    "no_progress",
    "pump",
]

WANT_BYTES = 256 << 20  # bytes asked for in one response
WANT_ITEMS = 8192  # files asked for in one response
MAX_WANT_ITEMS = 65_536  # decode bound

_Item = tuple[
    Annotated[int, msgspec.Meta(ge=0, lt=0xFFFFFFFF)],
    Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)],
    Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)],
]


class Want(msgspec.Struct, frozen=True):
    """Bytes a receiver asks for: ``(entry index, offset, length)`` items, in order."""

    items: Annotated[list[_Item], msgspec.Meta(max_length=MAX_WANT_ITEMS)]

    def total_bytes(self) -> int:
        return sum(length for _, _, length in self.items)


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Want)


def encode_want(want: Want) -> bytes:
    return _ENCODER.encode(want)


def decode_want(data: bytes | memoryview) -> Want:
    """A want from MessagePack, bounds checked (a :class:`~mlsm.errors.TransferFailed`
    when malformed); the source still checks each index against its manifest."""
    try:
        return _DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise TransferFailed(f"not a valid want: {exc}") from None


def batch_wants(
    missing: Iterable[tuple[int, int, int]],
    *,
    budget: int = WANT_BYTES,
    max_items: int = WANT_ITEMS,
) -> Iterator[Want]:
    """Cut ``missing`` (index, offset, length) ranges, in order, into wants of at most
    ``max_items`` items and ``budget`` bytes (a range longer than what is left is split;
    an empty range, an empty file's, still counts as an item)."""
    budget = max(1, budget)
    max_items = max(1, min(max_items, MAX_WANT_ITEMS))
    items: list[tuple[int, int, int]] = []
    room = budget
    for index, offset, length in missing:
        while True:
            take = min(length, room)
            items.append((index, offset, take))
            room -= take
            offset += take
            length -= take
            if room == 0 or len(items) >= max_items:
                yield Want(items)
                items = []
                room = budget
            if length == 0:
                break
    if items:
        yield Want(items)


class Receiver(Protocol):
    """What a transport drives (see the module docstring)."""

    def next_want(self) -> Want | None: ...

    def feed(self, chunk: bytes | bytearray | memoryview) -> bool:
        """Take bytes of the current response; True once its END frame came."""
        ...

    def progress_mark(self) -> int:
        """A number that grows whenever the receiver gets closer to complete (bytes
        accepted, files done or given up): a response that leaves it unchanged made none."""
        ...


def no_progress(want: Want) -> TransferFailed:
    """The error of a response that brought a receiver no progress at all."""
    first = want.items[0][0] if want.items else -1
    return TransferFailed(
        f"the source sent nothing useful for {len(want.items)} requested file(s) "
        f"(first: entry {first}); giving up instead of asking again"
    )


def pump(receiver: Receiver, fetch: Callable[[Want], Iterable[bytes]]) -> None:
    """Ask for and take bytes until ``receiver`` wants nothing more.

    ``fetch(want)`` sends the request and returns the response's chunks; a response that
    stops early (the source was cut) is followed by the next want. A response that brings
    no progress at all raises :class:`~mlsm.errors.TransferFailed` (no endless loop over a
    source that never sends what is asked).
    """
    while (want := receiver.next_want()) is not None:
        before = receiver.progress_mark()
        for chunk in fetch(want):
            if receiver.feed(chunk):
                break
        if receiver.progress_mark() == before:
            raise no_progress(want)


async def apump(
    receiver: Receiver,
    fetch: Callable[[Want], Awaitable[AsyncIterable[bytes]]],
    *,
    feed: Callable[[bytes], Awaitable[bool]] | None = None,
) -> None:
    """:func:`pump` for an async ``fetch`` (which returns the response's async chunks).

    ``feed`` runs the receiver's (blocking, disk-writing) ``feed``: pass one that moves
    it off the event loop (``lambda c: asyncio.to_thread(receiver.feed, c)``); by default
    it runs inline.
    """
    while (want := receiver.next_want()) is not None:
        before = receiver.progress_mark()
        body = await fetch(want)
        async for chunk in body:
            done = await feed(chunk) if feed is not None else receiver.feed(chunk)
            if done:
                break
        if receiver.progress_mark() == before:
            raise no_progress(want)


FEED_BATCH_BYTES = 1 << 20  # bytes of a response handed to a blocking receiver at once


def _feed_all(receiver: Receiver, chunks: list[bytes]) -> bool:
    for chunk in chunks:
        if receiver.feed(chunk):
            return True
    return False


async def afeed(
    receiver: Receiver, chunks: AsyncIterable[bytes], *, batch_bytes: int = FEED_BATCH_BYTES
) -> bool:
    """Feed one async response to a (blocking, disk-writing) receiver off the event loop,
    about ``batch_bytes`` per thread hop rather than one hop per chunk; True once the
    receiver says the response ended (the rest of ``chunks`` is then not read)."""
    import asyncio  # here: the CLI imports Want alone and never runs a loop

    batch: list[bytes] = []
    size = 0
    async for chunk in chunks:
        batch.append(chunk)
        size += len(chunk)
        if size >= batch_bytes:
            if await asyncio.to_thread(_feed_all, receiver, batch):
                return True
            batch, size = [], 0
    return bool(batch) and await asyncio.to_thread(_feed_all, receiver, batch)
