"""The agent's dataset commands: import, copy (send/receive through the master), delete,
digest and cancel, wired into :class:`agent.main.Agent` by type.

Handlers return at once: the work runs as a task, so the command loop keeps taking
commands (a cancel must get through while an import runs). Every command reports its
progress under its own id in ``agent.transfers`` (sent with each heartbeat); the final
report is held back until the catalog change it causes has been sent to the master, so
when the master sees "succeeded" the new (or removed) dataset is already in its catalog.
A command id is acted on once per agent process, however often it is delivered.
Every report and log line about a command passes :func:`mlsm.redact.redact_text` (an
import's URL secrets are scrubbed as literals too), so no credential in a URL leaves.

Copies never connect two agents: the source uploads the manifest and the packed dataset
to the master in chunks (idempotent by offset, resent from the master's ``next_offset``
after a fault), and the target downloads them from the master by offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from mlsm import errors
from mlsm.redact import redact_text, url_secrets
from mlsm.wire import agent as w

from . import (
    DatasetCancelled,
    DatasetError,
    DatasetPathError,
    confine_path,
    delete_dataset,
    digest,
    import_dataset,
    pack_dataset,
    pick_root,
    purge_leftovers,
    receive_dataset,
)
from ._tasks import Progress

log = logging.getLogger("mlsm.agent.datasets")
T = TypeVar("T")

AGENT_MAX_BYTES = 1 << 40  # this agent's own import/receive limit; commands may only lower it
RETRY_TRIES = 8  # attempts of one upload/download call before the transfer fails
RETRY_BASE_S = 0.5
RETRY_MAX_S = 10.0
SEND_QUEUE = 4  # packed chunks buffered between the packing thread and the uploader
PUT_WAIT_S = 0.2  # how often a packing thread blocked on a full queue checks for stop


class _Stopped(Exception):
    """The master answered that the transfer is over (cancelled or failed there)."""

    def __init__(self, state: str, message: str) -> None:
        super().__init__(message)
        self.state = state
        self.message = message


class DatasetCommands:
    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.roots: list[Path] = list(agent.cfg.dataset_roots)
        self.cancels: dict[int, asyncio.Event] = {}  # command id -> its cancel flag
        self.tasks: set[asyncio.Task[None]] = set()
        self.seen: set[int] = set()
        self.secrets: dict[int, tuple[str, ...]] = {}  # command id -> its URL's secret parts
        self._scan_lock = asyncio.Lock()

    def install(self) -> None:
        """Sweep what an earlier run left half-made, then register the handlers."""
        for path in purge_leftovers(self.roots):
            log.info("removed leftover %s of an interrupted dataset operation", path)
        handlers = self.agent.command_handlers
        handlers[w.ImportDataset] = self._once(self._import)
        handlers[w.DeleteDataset] = self._once(self._delete)
        handlers[w.DigestDataset] = self._once(self._digest)
        handlers[w.SendDataset] = self._once(self._send)
        handlers[w.ReceiveDataset] = self._once(self._receive)
        handlers[w.CancelTransfer] = self._cancel

    # ---------------------------------------------------------------- plumbing
    def _once(self, work: Callable[[Any, asyncio.Event], Awaitable[None]]) -> Any:
        async def start(cmd: Any) -> None:
            if cmd.id in self.seen:
                return
            self.seen.add(cmd.id)
            cancel = asyncio.Event()
            self.cancels[cmd.id] = cancel
            task = asyncio.create_task(self._guard(cmd, work, cancel), name=f"dataset-{cmd.id}")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

        return start

    async def _guard(
        self, cmd: Any, work: Callable[[Any, asyncio.Event], Awaitable[None]], cancel: asyncio.Event
    ) -> None:
        try:
            await work(cmd, cancel)
        except DatasetCancelled:
            self._final(cmd.id, "cancelled", "cancelled")
        except DatasetError as exc:
            self._final(cmd.id, "failed", exc.message)
        except asyncio.CancelledError:
            self._final(cmd.id, "cancelled", "the agent is stopping")
            raise
        except Exception as exc:  # never lose a command silently
            trace = "".join(traceback.format_exception(exc))
            log.error("dataset command %s failed: %s", cmd.id, self._redact(cmd.id, trace))
            self._final(cmd.id, "failed", f"{type(exc).__name__}: {exc}")
        finally:
            self.cancels.pop(cmd.id, None)
            self.secrets.pop(cmd.id, None)

    def _redact(self, command_id: int, text: str) -> str:
        return redact_text(text, self.secrets.get(command_id, ()))

    def _report(self, p: w.TransferProgress) -> None:
        """Every report to the master passes here: no URL secret leaves in a message."""
        clean = self._redact(p.command_id, p.message)
        if clean != p.message:
            p = msgspec.structs.replace(p, message=clean)
        self.agent.transfers[p.command_id] = p

    def _final(self, command_id: int, state: str, message: str) -> None:
        cur = self.agent.transfers.get(command_id)
        self._report(
            w.TransferProgress(
                command_id=command_id,
                done_bytes=cur.done_bytes if cur else 0,
                total_bytes=cur.total_bytes if cur else None,
                rate_bps=cur.rate_bps if cur else 0.0,
                state=state,  # type: ignore[arg-type]
                message=message[:4096],
            )
        )

    def _held(self) -> tuple[Callable[[w.TransferProgress], None], list[w.TransferProgress]]:
        """A progress callback that reports running states and keeps the final one back."""
        finals: list[w.TransferProgress] = []

        def cb(p: w.TransferProgress) -> None:
            if p.state == "running":
                self._report(p)
            else:
                finals.append(p)

        return cb, finals

    async def rescan(self) -> None:
        """Scan now and send the delta, so the master's catalog has what just changed."""
        agent = self.agent
        if agent.scanner is None:
            return
        async with self._scan_lock:
            try:
                report = await asyncio.to_thread(agent.scanner.scan, agent._want_full)
                if report.full or report.upsert or report.removed:
                    await agent.link.send_datasets(report)
                agent._want_full = False
            except Exception as exc:  # the scan loop sends a full report later
                log.warning("could not report datasets after a change (%s)", exc)
                agent._want_full = True

    def _dataset_path(self, path: str) -> Path:
        """The dataset ``path`` names, confined to one of this agent's roots."""
        last: DatasetPathError | None = None
        for root in self.roots:
            try:
                return confine_path(root, path)
            except DatasetPathError as exc:
                last = exc
        raise last or DatasetPathError("this agent has no dataset root configured")

    # ---------------------------------------------------------------- commands
    async def _cancel(self, cmd: w.CancelTransfer) -> None:
        flag = self.cancels.get(cmd.command_id)
        if flag is not None:
            flag.set()

    async def _import(self, cmd: w.ImportDataset, cancel: asyncio.Event) -> None:
        self.secrets[cmd.id] = url_secrets(cmd.url)
        root = pick_root(self.roots, cmd.root)
        cb, finals = self._held()
        try:
            await import_dataset(cmd, root, progress=cb, cancel=cancel, max_bytes=AGENT_MAX_BYTES)
        finally:
            await self._finish(finals)

    async def _finish(self, finals: list[w.TransferProgress]) -> None:
        """Send the catalog change, then release the held final report."""
        if finals and finals[-1].state == "succeeded":
            await self.rescan()
        if finals:
            self._report(finals[-1])

    async def _delete(self, cmd: w.DeleteDataset, cancel: asyncio.Event) -> None:
        removed = await asyncio.to_thread(delete_dataset, self.roots, cmd.path)
        await self.rescan()
        self._final(cmd.id, "succeeded", "deleted" if removed else "already gone")

    async def _digest(self, cmd: w.DigestDataset, cancel: asyncio.Event) -> None:
        path = self._dataset_path(cmd.path)
        stop = threading.Event()
        self._running(cmd.id, "hashing")
        try:
            value, manifest = await asyncio.to_thread(digest, path, should_stop=stop)
        finally:
            stop.set()
        if self.agent.scanner is not None:
            self.agent.scanner.note_digest(cmd.path, value)
        await self.rescan()
        self._final(cmd.id, "succeeded", f"{value} over {len(manifest)} files")

    def _running(self, command_id: int, message: str, done: int = 0) -> None:
        self._report(w.TransferProgress(command_id=command_id, done_bytes=done, message=message))

    # ---------------------------------------------------------------- copy: source side
    async def _send(self, cmd: w.SendDataset, cancel: asyncio.Event) -> None:
        path = self._dataset_path(cmd.path)
        report = Progress(cmd.id, self._report)
        report.update(0, "hashing files", force=True)
        stop = threading.Event()
        watcher = asyncio.create_task(_set_on(cancel, stop))
        try:
            value, manifest = await asyncio.to_thread(digest, path, should_stop=stop)
            blob = w.encoder.encode(manifest)
            await self._upload_part(cmd.transfer_id, "manifest", _pieces(blob), cancel, value)
            report.update(0, "sending", force=True)
            sent = await self._upload_pack(cmd.transfer_id, path, cancel, stop, report)
        except _Stopped as exc:
            stop.set()
            report.final(exc.state, exc.message)
            return
        finally:
            stop.set()
            watcher.cancel()
        report.final("succeeded", f"sent {len(manifest)} files, {sent} bytes")

    async def _upload_pack(
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

    async def _upload_part(
        self,
        transfer_id: int,
        part: w.TransferPart,
        pieces: Iterator[bytes],
        cancel: asyncio.Event,
        digest_value: str = "",
    ) -> int:
        offset = 0
        for piece in pieces:
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
                raise _Stopped(ack.state, ack.message or f"the transfer is {ack.state}")
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
                result: T = await self.agent.link.call(route, body, decode)
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

    # ---------------------------------------------------------------- copy: target side
    async def _receive(self, cmd: w.ReceiveDataset, cancel: asyncio.Event) -> None:
        root = pick_root(self.roots, cmd.root)
        blob = b"".join([c async for c in self._download(cmd.transfer_id, "manifest", cancel)])
        try:
            manifest = w.decode_manifest(blob)
        except Exception as exc:
            raise DatasetError(f"the transfer's manifest is unreadable: {exc}") from None
        limit = min(AGENT_MAX_BYTES, cmd.total_bytes) if cmd.total_bytes else AGENT_MAX_BYTES
        cb, finals = self._held()
        try:
            await receive_dataset(
                self._download(cmd.transfer_id, "data", cancel),
                root,
                cmd.name,
                manifest,
                max_bytes=max(limit, 1),
                expected_digest=cmd.manifest_digest,
                cancel=cancel,
                progress=cb,
                command_id=cmd.id,
            )
        except _Stopped as exc:
            finals.clear()
            self._final(cmd.id, exc.state, exc.message)
            return
        finally:
            await self._finish(finals)

    async def _download(
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


async def _set_on(cancel: asyncio.Event, stop: threading.Event) -> None:
    await cancel.wait()
    stop.set()
