"""Receiving a tree on the target agent: pull the source's manifest and the files this node
lacks (directly from the source when it can be reached, else relayed by the master),
verify each, publish the tree whole.

:func:`receive_tree` runs one :class:`mlsm.bulk.Sink` over a work dir whose name is fixed by
the transfer (``<root>/.mlsm-bulk-<name>-<transfer id>``, 0700, root's), so the journal in
it survives a cut: a network fault, or the master or the source being away, is retried
here (until :data:`RETRY_WINDOW_S` pass without progress, each try resuming from what the
journal verified), and a new run for the same transfer (the agent restarted, the command
came again) resumes from it too: it asks the source for the manifest its journal is for
(:attr:`~mlsm.wire.bulk.BulkManifest.resume`). The manifest always comes through the master, with the
hashes the source has not got yet to come (each sent after its file's bytes, verified by
the sink before it journals the file: :mod:`mlsm.bulk.frames`), so the source starts
sending without reading the whole tree first; the first direct offer is asked for beside
it. The frames of each want come over a direct connection (:mod:`agent.bulk.direct`: a fresh
ticket from the master each time) until that fails once — the source is not reachable,
or the master offers no direct path — and from then on through the relay, the progress
saying why ("via master relay: source not reachable (...)"). A direct answer is read and
fed to the sink in a thread of its own (:func:`agent.bulk.direct.receive`: a blocking TLS
socket, the sink in a second thread). Each relayed pull is ``POST /agent/v1/bulk/pull``
answered with pipe records (:mod:`mlsm.wire.bulk`); its frames are fed to the sink in a worker
thread in batches of about :data:`FEED_BYTES`, read ahead while the sink works. Either
way the event loop never decrypts, writes or hashes; it reports the sink's progress every
:data:`PROGRESS_EVERY_S`. Nothing is visible under the dataset's name until the verified
tree is renamed there (``RENAME_NOREPLACE``).

Over 400 lines, as one piece: the target's side of a transfer (the pulls, the direct
connection's offers and their fallback to the relay, the retries, the sink they feed)
share one puller's state, and each rule above is about that state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import msgspec

from agent.bulk import direct
from agent.link import MasterLink
from mlsm import errors
from mlsm.bulk import Manifest, Progress, Sink, Want, decode_manifest
from mlsm.bulk.journal import journal_digest
from mlsm.bulk.want import no_progress
from mlsm.wire import bulk as wb

log = logging.getLogger("mlsm.agent.bulk")
T = TypeVar("T")

FEED_BYTES = 1 << 20  # bytes handed to the sink's thread at once
READ_AHEAD = 8  # batches of FEED_BYTES read while the sink writes (memory: 8 MiB a receive)
MANIFEST_MAX_BYTES = 512 << 20  # a manifest of millions of files still fits
RETRY_WINDOW_S = 900.0  # how long pulls may fail in a row (master or source away, restarting)
RETRY_BASE_S = 0.5
RETRY_MAX_S = 5.0
PROGRESS_EVERY_S = 0.5  # how often a receive's progress is reported while bytes come
WORK_PREFIX = ".mlsm-bulk-"
RELAY_PATH = "via master relay"
DIRECT_PATH = "direct"


@dataclass(frozen=True)
class Received:
    """What :func:`receive_tree` did: the sink's counters, the bytes that were already held
    when it started (a resumed receive), and the path the bytes took."""

    progress: Progress
    bytes_done_at_start: int
    path: str


Report = Callable[[Progress, str], None]


def work_dir(root: Path, name: str, transfer_id: int) -> Path:
    return root / f"{WORK_PREFIX}{name}-{transfer_id}"


async def _decoded(body: AsyncIterator[bytes], what: str) -> AsyncIterator[bytes]:
    """The data of an answer's pipe records, in batches of about :data:`FEED_BYTES`; an
    ERROR record raises its error, an answer cut short :class:`~mlsm.errors.Unreachable`
    (the next want asks again for what is missing)."""
    reader = wb.PipeReader()
    batch: list[memoryview] = []  # views of the chunks (immutable bytes): one copy, the join
    size = 0
    async for chunk in body:
        for kind, data in reader.feed(chunk):
            if kind is wb.PipeKind.DATA:
                batch.append(data)
                size += len(data)
            elif kind is wb.PipeKind.ERROR:
                raise wb.decode_error(data)
        if size >= FEED_BYTES:
            yield b"".join(batch)
            batch, size = [], 0
    if batch:
        yield b"".join(batch)
    if not reader.ended:
        raise errors.Unreachable(f"the {what} answer broke off")


_DONE = object()


async def _read_ahead(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``body``'s chunks, read by a task of its own up to :data:`READ_AHEAD` chunks ahead,
    so the network (TLS, the relay) and the sink (writing, hashing in a thread) work at the
    same time instead of in turns; its error comes out where it happened."""
    queue: asyncio.Queue[object] = asyncio.Queue(READ_AHEAD)

    async def pull() -> None:
        try:
            async for chunk in body:
                await queue.put(chunk)
            await queue.put(_DONE)
        except Exception as exc:  # handed to the consumer, in order
            await queue.put(exc)

    task = asyncio.create_task(pull())
    try:
        while (item := await queue.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


class _Puller:
    """Pulls of one transfer: through the master (each answer's records decoded), or, with
    an ``identity`` and while the source can be reached, directly from the source
    (:mod:`agent.bulk.direct`). ``path`` says which, and why the relay when it is."""

    def __init__(
        self, link: MasterLink, transfer_id: int, identity: direct.Identity | None = None
    ) -> None:
        self.link = link
        self.transfer_id = transfer_id
        self.digest = ""
        self.identity = identity
        self.path = RELAY_PATH if identity is None else DIRECT_PATH
        self.connected = False  # a direct connection worked once in this transfer
        self._early: asyncio.Task[tuple[wb.DirectOffer, float, float]] | None = None

    def offer_early(self) -> None:
        """Ask for the first direct offer now, beside the manifest (the source opens its
        listener while it walks the tree): one round trip less before the first byte."""
        if self.identity is not None:

            async def timed() -> tuple[wb.DirectOffer, float, float]:
                offer = await self._offer(fresh=False)
                return offer, time.monotonic(), time.time()

            self._early = asyncio.create_task(timed())

    def close(self) -> None:
        if self._early is not None:
            self._early.cancel()
            self._early = None

    async def _first_offer(self) -> wb.DirectOffer:
        """The offer asked for early, while its ticket has more than half its life left
        (else, or when it failed, a new one)."""
        early, self._early = self._early, None
        if early is not None:
            with contextlib.suppress(errors.MlsmError):
                offer, got, wall = await early
                if time.monotonic() - got < (offer.ticket.expires_at - wall) / 2:
                    return offer
        return await self._offer(fresh=False)

    async def _records(self, req: wb.BulkPull) -> AsyncIterator[bytes]:
        async with self.link.stream("bulk/pull", req) as body:
            async for chunk in _decoded(body, "relayed"):
                yield chunk

    async def manifest(self, resume: str = "") -> Manifest:
        """The source's manifest, with hashes to come; ``resume``: the digest of the
        manifest the work dir's journal is for (the source answers with it again while
        its tree still matches it, so the journal's files are kept)."""
        data = bytearray()
        req = wb.BulkPull(
            transfer_id=self.transfer_id,
            what="manifest",
            hashes_later=True,
            manifest_digest=resume,
        )
        async for chunk in self._records(req):
            data += chunk
            if len(data) > MANIFEST_MAX_BYTES:
                raise errors.PayloadTooLarge(f"the manifest is over {MANIFEST_MAX_BYTES} bytes")
        manifest = decode_manifest(bytes(data), hashes_later=True)
        self.digest = manifest.digest()
        return manifest

    async def fetch(self, want: Want, sink: _TimedSink) -> None:
        """One answer to ``want``, fed to ``sink``: direct while that works, else relayed."""
        if self.identity is not None:
            try:
                await self._direct(want, self.identity, sink)
                return
            except direct.SourceUnreachable as exc:
                self._fall_back(exc.message)  # "source not reachable (...)"
            except errors.Conflict as exc:  # the master offers no direct path
                self._fall_back(f"no direct path ({exc.message})")
        req = wb.BulkPull(transfer_id=self.transfer_id, want=want, manifest_digest=self.digest)
        async for chunk in _read_ahead(self._records(req)):
            if await asyncio.to_thread(sink.feed, chunk):
                break

    def _fall_back(self, why: str) -> None:
        log.info("transfer %s: falling back to the relay: %s", self.transfer_id, why)
        self.identity = None
        self.path = f"{RELAY_PATH}: {why}"

    async def _offer(self, *, fresh: bool) -> wb.DirectOffer:
        data = bytearray()
        req = wb.BulkPull(transfer_id=self.transfer_id, what="direct", fresh=fresh)
        async for chunk in self._records(req):
            data += chunk
        try:
            return wb.decode_offer(bytes(data))
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise errors.TransferFailed("the master's direct offer is unreadable") from None

    async def _direct(self, want: Want, identity: direct.Identity, sink: _TimedSink) -> None:
        """One direct connection for ``want``: a fresh offer (ticket) from the master, a
        pinned connection to the source, the hello; the answer fed to ``sink`` in a
        thread. A source that refuses the connection (a ticket it took for expired or
        used: clocks apart, a slow start) sends the rest through the relay."""
        try:
            offer = await self._first_offer()
            tls = await asyncio.to_thread(direct.connect, offer, identity)
        except direct.SourceUnreachable:
            if not self.connected:
                raise
            # It answered before: the source restarted, its listener is gone. Once more
            # with a new listener, then the relay.
            offer = await self._offer(fresh=True)
            tls = await asyncio.to_thread(direct.connect, offer, identity)
        self.connected = True
        hello = wb.DirectHello(ticket=offer.ticket, want=want, manifest_digest=self.digest)
        try:
            await in_thread(
                lambda stop: direct.receive(tls, hello, sink.feed, stop),
                f"mlsm-receive-{self.transfer_id}",
            )
        except errors.PermissionDenied as exc:
            self._fall_back(f"the source refused the direct connection ({exc.message})")
            raise errors.Unreachable(exc.message) from None


async def in_thread(work: Callable[[threading.Event], T], name: str) -> T:
    """``work(stop)`` in a thread of its own (not the loop's executor: it may run for
    hours); cancelling the caller sets ``stop`` and waits for ``work`` to return, so
    nothing it uses is closed under it."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()
    stop = threading.Event()

    def settle(outcome: Callable[[], None]) -> None:
        if not done.cancelled():
            outcome()

    def run() -> None:
        try:
            result = work(stop)
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, lambda e=exc: done.set_exception(e))
        else:
            loop.call_soon_threadsafe(settle, lambda: done.set_result(result))

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        stop.set()
        with contextlib.suppress(BaseException):
            await done
        raise


class _TimedSink:
    """A sink's ``feed``, timed (the receive's log line says how long the sink took)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.seconds = 0.0

    def feed(self, chunk: bytes | memoryview) -> bool:
        t0 = time.monotonic()
        try:
            return self.sink.feed(chunk)
        finally:
            self.seconds += time.monotonic() - t0


def _transient(exc: BaseException) -> bool:
    """Worth another pull: no answer, a busy master, an answer cut short."""
    return isinstance(exc, errors.UnavailableError)


async def receive_tree(
    link: MasterLink,
    transfer_id: int,
    work: Path,
    dest: Path,
    report: Report,
    *,
    max_bytes: int,
    identity: direct.Identity | None = None,
) -> Received:
    """Bring the transfer's tree to ``dest`` (see the module docstring); its counters.
    A tree of more than ``max_bytes`` is refused before any file is asked for. With
    ``identity`` the files come directly from the source while it can be reached."""
    puller = _Puller(link, transfer_id, identity)
    puller.offer_early()
    try:
        return await _receive(puller, work, dest, report, max_bytes)
    finally:
        puller.close()


async def _receive(
    puller: _Puller, work: Path, dest: Path, report: Report, max_bytes: int
) -> Received:
    transfer_id = puller.transfer_id
    resume = await asyncio.to_thread(journal_digest, work)  # "" for a fresh transfer
    manifest = await _retrying(lambda: puller.manifest(resume), lambda m: report(Progress(), m))
    total = manifest.total_bytes()
    if total > max_bytes:
        raise errors.PayloadTooLarge(
            f"the dataset holds {total} bytes, over the limit of {max_bytes} bytes "
            "(lab setting import_max_bytes)"
        )
    sink = await asyncio.to_thread(Sink, manifest, work)
    try:
        started = time.monotonic()
        held = sink.progress().bytes_done
        timed = _TimedSink(sink)  # seconds in the sink (writing, hashing): the rest is waiting

        report(
            sink.progress(),
            f"{puller.path}: resuming from {held} bytes held"
            if held
            else f"{puller.path}: starting",
        )

        async def pump() -> None:
            while (want := sink.next_want()) is not None:
                before = sink.progress_mark()
                await puller.fetch(want, timed)
                if sink.progress_mark() == before:
                    raise no_progress(want)

        async def reporting() -> None:
            while True:
                await asyncio.sleep(PROGRESS_EVERY_S)
                p = sink.progress()
                report(p, f"{puller.path}: {p.files_done}/{p.files_total} files")

        reporter = asyncio.create_task(reporting())
        try:
            await _retrying(
                pump,
                lambda m: report(sink.progress(), f"{puller.path}: {m}"),
                lambda: sink.progress().bytes_done,
            )
        finally:
            reporter.cancel()
        final = sink.progress()
        pumped = time.monotonic()
        await asyncio.to_thread(sink.finish, dest)
        log.info(
            "transfer %s: %d files, %d bytes received %s in %.2f s (%.2f s of it in the sink, "
            "finished in %.2f s; %d re-sent)",
            transfer_id,
            final.files_done,
            final.bytes_received,
            puller.path,
            pumped - started,
            timed.seconds,
            time.monotonic() - pumped,
            final.bytes_redundant,
        )
        return Received(final, held, puller.path)
    except BaseException:
        sink.close()
        raise


async def _retrying(
    step: Callable[[], Awaitable[T]],
    say: Callable[[str], None],
    progressed: Callable[[], int] = lambda: 0,
) -> T:
    """``step()``, again after a transient failure (each try resumes from the journal),
    for up to :data:`RETRY_WINDOW_S` of failures without progress (``progressed()``
    unchanged): the master or the source restarting is waited for, not a reason to give
    up. ``say`` tells the progress why it waits."""
    delay = RETRY_BASE_S
    failing_since: float | None = None
    mark = progressed()
    while True:
        try:
            return await step()
        except errors.MlsmError as exc:
            now = time.monotonic()
            if failing_since is None or progressed() != mark:
                failing_since, mark, delay = now, progressed(), RETRY_BASE_S
            if not _transient(exc) or now - failing_since > RETRY_WINDOW_S:
                raise
            log.warning("pull failed (%s); retrying in %.1f s", exc.message, delay)
            say(f"waiting to resume ({exc.message})")
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_S)


def abort_work(work: Path) -> None:
    """Remove a transfer's work dir (it failed for good, or was cancelled)."""
    from mlsm.bulk.fstree import remove_tree

    with contextlib.suppress(FileNotFoundError):
        if os.path.lexists(work):
            remove_tree(work)
