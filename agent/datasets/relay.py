"""A dataset copy's bytes through the master: the agent side of the relay.

Copies never connect two agents: the source uploads the manifest and the packed dataset to
the master in chunks (idempotent by offset, resent from the master's ``next_offset`` after
a fault), and the target downloads them from the master by offset, the next chunk fetched
while the caller unpacks this one. Every call is retried with backoff through network
faults and busy answers; a refusal ends the transfer with a :class:`DatasetError`, and the
master saying the transfer is over (cancelled or failed there) with :class:`TransferStopped`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from agent.link import MasterLink
from mlsm import errors
from mlsm.wire import agent as w

from . import DatasetCancelled, DatasetError, pack_dataset
from ._tasks import Progress

T = TypeVar("T")

RETRY_TRIES = 8  # attempts of one upload/download call before the transfer fails
RETRY_BASE_S = 0.5
RETRY_MAX_S = 10.0
SEND_QUEUE = 4  # packed chunks buffered between the packing thread and the uploader
PUT_WAIT_S = 0.2  # how often a packing thread blocked on a full queue checks for stop


class TransferStopped(Exception):
    """The master answered that the transfer is over (cancelled or failed there)."""

    def __init__(self, state: w.AgentTransferState, message: str) -> None:
        super().__init__(message)
        self.state = state
        self.message = message


class Relay:
    """Uploads and downloads of transfers, over the agent's link to the master."""

    def __init__(self, link: MasterLink) -> None:
        self._link = link

    async def upload_pack(
        self,
        transfer_id: int,
        path: Path,
        cancel: asyncio.Event,
        stop: threading.Event,
        report: Progress,
    ) -> int:
        """Pack in a thread (bounded queue) while uploading here; the bytes sent."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(SEND_QUEUE)

        def put(item: bytes | BaseException | None) -> bool:
            fut = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
            while True:
                try:
                    fut.result(timeout=PUT_WAIT_S)
                    return True
                except TimeoutError:
                    if stop.is_set():
                        fut.cancel()
                        return False

        def produce() -> None:
            try:
                for chunk in pack_dataset(path, should_stop=stop):
                    for piece in _pieces(chunk):
                        if not put(piece):
                            return
                put(None)
            except BaseException as exc:  # handed to the uploader, which raises it
                put(exc)

        thread = asyncio.ensure_future(asyncio.to_thread(produce))
        offset = 0
        try:
            while True:
                if cancel.is_set():
                    raise DatasetCancelled("cancelled")
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                offset = await self._upload(transfer_id, "data", offset, item, False, cancel)
                report.update(offset, "sending")
            await self._upload(transfer_id, "data", offset, b"", True, cancel)
        finally:
            stop.set()
            while not queue.empty():  # unblock a producer waiting on a full queue
                queue.get_nowait()
            with contextlib.suppress(BaseException):
                await thread
        return offset

    async def upload_part(
        self,
        transfer_id: int,
        part: w.TransferPart,
        data: bytes,
        cancel: asyncio.Event,
        digest_value: str = "",
    ) -> int:
        """Upload ``data`` as the transfer's ``part`` and close it; the bytes sent."""
        offset = 0
        for piece in _pieces(data):
            offset = await self._upload(transfer_id, part, offset, piece, False, cancel)
        return await self._upload(transfer_id, part, offset, b"", True, cancel, digest_value)

    async def _upload(
        self,
        transfer_id: int,
        part: w.TransferPart,
        offset: int,
        data: bytes,
        eof: bool,
        cancel: asyncio.Event,
        digest_value: str = "",
    ) -> int:
        """Send ``data`` at ``offset`` until the master holds all of it; the new offset."""
        end = offset + len(data)
        while True:
            if cancel.is_set():
                raise DatasetCancelled("cancelled")
            chunk = w.TransferChunk(
                transfer_id=transfer_id,
                part=part,
                offset=offset,
                data=data,
                eof=eof,
                digest=digest_value if eof else "",
            )
            ack = await self._call("transfers/upload", chunk, w.decode_transfer_ack, cancel)
            if ack.state != "running":
                raise TransferStopped(ack.state, ack.message or f"the transfer is {ack.state}")
            if ack.next_offset >= end:
                return end
            if ack.next_offset < offset:  # the master lost bytes it had acknowledged
                raise DatasetError(
                    f"the master holds {ack.next_offset} bytes of the {part}, "
                    f"expected at least {offset}"
                )
            data = data[ack.next_offset - offset :]
            offset = ack.next_offset

    async def _call(
        self, route: str, body: Any, decode: Callable[[bytes], T], cancel: asyncio.Event
    ) -> T:
        """One agent call, retried with backoff through network faults and busy answers."""
        delay = RETRY_BASE_S
        for attempt in range(RETRY_TRIES):
            try:
                result: T = await self._link.call(route, body, decode)
                return result
            except errors.MlsmError as exc:
                if isinstance(exc, errors.ClientError) and not isinstance(exc, errors.RateLimited):
                    raise DatasetError(f"the master refused the transfer: {exc.message}") from None
                why = exc.message  # unreachable, busy or failing: worth another try
            if attempt == RETRY_TRIES - 1:
                raise DatasetError(f"cannot reach the master for the transfer: {why}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cancel.wait(), timeout=delay)
            if cancel.is_set():
                raise DatasetCancelled("cancelled")
            delay = min(delay * 2, RETRY_MAX_S)
        raise AssertionError("unreachable")

    async def download(
        self,
        transfer_id: int,
        part: w.TransferPart,
        cancel: asyncio.Event,
    ) -> AsyncIterator[bytes]:
        """The spooled ``part`` from the master, in order; the next chunk is already being
        fetched while the caller unpacks and hashes this one."""

        def fetch(offset: int) -> asyncio.Future[w.TransferData]:
            req = w.TransferFetch(transfer_id=transfer_id, part=part, offset=offset)
            return asyncio.ensure_future(
                self._call("transfers/fetch", req, w.decode_transfer_data, cancel)
            )

        offset = 0
        pending = fetch(offset)
        try:
            while True:
                got = await pending
                if got.offset != offset:
                    raise DatasetError(f"the master answered offset {got.offset}, asked {offset}")
                if not got.data and not got.eof:
                    raise DatasetError(f"the master sent no bytes of the {part} at {offset}")
                offset += len(got.data)
                if not got.eof:
                    pending = fetch(offset)
                if got.data:
                    yield got.data
                if got.eof:
                    return
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending


def _pieces(data: bytes, size: int = w.MAX_TRANSFER_CHUNK) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
