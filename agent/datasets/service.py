"""The agent's dataset commands: import, copy (send/receive through the master), delete,
digest and cancel, installed as the agent's command handlers by type.

Handlers return at once: the work runs as a task, so the command loop keeps taking
commands (a cancel must get through while an import runs). Every command reports its
progress under its own id in the agent's ``transfers`` (sent with each heartbeat); the final
report is held back until the catalog change it causes has been sent to the master, so
when the master sees "succeeded" the new (or removed) dataset is already in its catalog.
A command id is acted on once per agent process, however often it is delivered.
Every report and log line about a command passes :func:`mlsm.redact.redact_text` (an
import's URL secrets are scrubbed as literals too), so no credential in a URL leaves.

A copy is received here (``BulkReceive``, :mod:`agent.bulk.receive`): the target pulls
the source's manifest through the master and the files directly from the source (or
through the master's relay pipes when it cannot reach it) into a journaled work dir, and
renames the verified tree into place. A receive is idempotent by transfer id
and recorded in the agent's data dir, so a restarted agent resumes it
(:mod:`agent.bulk.receives`).

About 400 lines, as one piece: every dataset command shares the one table of progress
reports, cancel flags and command ids seen, and their rules (final report after the
catalog delta, one run per id) are kept in one place.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from agent.bulk.direct import Identity
from agent.bulk.receive import abort_work, receive_tree, work_dir
from agent.bulk.receives import ReceiveBook, ReceiveRecord
from agent.link import MasterLink
from mlsm import errors
from mlsm.bulk import Progress
from mlsm.redact import redact_text, url_secrets
from mlsm.wire import agent as w
from mlsm.wire import bulk as wb

from . import (
    DatasetCancelled,
    DatasetError,
    DatasetPathError,
    confine,
    confine_path,
    delete_dataset,
    digest,
    import_dataset,
    pick_root,
    purge_leftovers,
    validate_dataset_name,
)
from ._tasks import run_cancellable
from .catalog import CatalogReporter
from .errors import DatasetExistsError

log = logging.getLogger("mlsm.agent.datasets")

AGENT_MAX_BYTES = 1 << 40  # this agent's own import/receive limit; commands may only lower it


class DatasetCommands:
    def __init__(
        self,
        roots: list[Path],
        *,
        link: MasterLink,
        catalog: CatalogReporter,
        transfers: dict[int, w.TransferProgress],
        data_dir: Path | None = None,
        identity: Identity | None = None,
        on_final: Callable[[], None] = lambda: None,
    ) -> None:
        """``transfers`` is where progress reports go (command id -> latest); the agent
        sends them with each heartbeat. ``data_dir`` keeps the receives' records, so a
        restarted agent resumes them (none kept without it). With ``identity`` a receive
        tries the direct path first (:mod:`agent.bulk.direct`). ``on_final`` is called
        when a command's final report is ready (the agent then heartbeats at once)."""
        self.on_final = on_final
        self.identity = identity
        self.roots = list(roots)
        self.link = link
        self.catalog = catalog
        self.transfers = transfers
        self.cancels: dict[int, asyncio.Event] = {}  # command id -> its cancel flag
        self.tasks: set[asyncio.Task[None]] = set()
        self.seen: set[int] = set()
        self.secrets: dict[int, tuple[str, ...]] = {}  # command id -> its URL's secret parts
        self.book = ReceiveBook(data_dir) if data_dir is not None else None
        self.receiving: dict[int, list[int]] = {}  # transfer id -> command ids it reports as

    def install(self, handlers: dict[type, Callable[[Any], Awaitable[None]]]) -> None:
        """Sweep what an earlier run left half-made (but the work dirs of the receives
        :meth:`resume` carries on), then register the handlers."""
        keep = self.book.keep() if self.book is not None else set()
        for path in purge_leftovers(self.roots, keep):
            log.info("removed leftover %s of an interrupted dataset operation", path)
        handlers[w.ImportDataset] = self._once(self._import)
        handlers[w.DeleteDataset] = self._once(self._delete)
        handlers[w.DigestDataset] = self._once(self._digest)
        handlers[wb.BulkReceive] = self._receive_command
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
        except errors.MlsmError as exc:  # a copy's pull: the master's or the source's words
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
        self.transfers[p.command_id] = p
        if p.state != "running":
            self.on_final()

    def _final(self, command_id: int, state: w.AgentTransferState, message: str) -> None:
        cur = self.transfers.get(command_id)
        self._report(
            w.TransferProgress(
                command_id=command_id,
                done_bytes=cur.done_bytes if cur else 0,
                total_bytes=cur.total_bytes if cur else None,
                rate_bps=cur.rate_bps if cur else 0.0,
                state=state,
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
        try:
            await self.catalog.report()
        except Exception as exc:  # the scan loop sends a full report later
            log.warning("could not report datasets after a change (%s)", exc)

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
        self.catalog.scanner.note_digest(cmd.path, value)
        await self.rescan()
        self._final(cmd.id, "succeeded", f"{value} over {len(manifest)} files")

    def _running(self, command_id: int, message: str, done: int = 0) -> None:
        self._report(w.TransferProgress(command_id=command_id, done_bytes=done, message=message))

    # ---------------------------------------------------------------- copy: target side
    def resume(self) -> None:
        """Start again the receives an earlier run of this agent left unfinished (their
        work dirs were kept by :meth:`install`); call once the event loop runs."""
        if self.book is None:
            return
        for rec in self.book.running():
            cmd = rec.command
            log.info("resuming the receive of transfer %s (%s)", cmd.transfer_id, cmd.name)
            self.seen.add(cmd.id)
            self._start_receive(cmd)

    async def _receive_command(self, cmd: wb.BulkReceive) -> None:
        """A ``BulkReceive``: idempotent by transfer id (see :mod:`agent.bulk.receives`)."""
        if cmd.id in self.seen:
            return
        self.seen.add(cmd.id)
        running = self.receiving.get(cmd.transfer_id)
        if running is not None:  # the master re-sent it: report under the new id too
            running.append(cmd.id)
            self.cancels[cmd.id] = self.cancels[running[0]]
            return
        rec = self.book.get(cmd.transfer_id) if self.book is not None else None
        if rec is not None and rec.state != "running":
            self._report(
                w.TransferProgress(
                    command_id=cmd.id,
                    done_bytes=rec.done_bytes,
                    total_bytes=rec.total_bytes,
                    state=rec.state,
                    message=rec.message,
                )
            )
            return
        self._start_receive(cmd)

    def _start_receive(self, cmd: wb.BulkReceive) -> None:
        self.receiving[cmd.transfer_id] = [cmd.id]
        cancel = asyncio.Event()
        self.cancels[cmd.id] = cancel
        task = asyncio.create_task(self._receive_guarded(cmd, cancel), name=f"receive-{cmd.id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _receive_guarded(self, cmd: wb.BulkReceive, cancel: asyncio.Event) -> None:
        """:meth:`_guard` for a receive, which reports under every id it was sent with and
        records its outcome; an agent that stops keeps the receive for its next start."""
        ids = self.receiving[cmd.transfer_id]

        def report(p: w.TransferProgress) -> None:
            for cmd_id in ids:
                self._report(msgspec.structs.replace(p, command_id=cmd_id))

        stopping = False
        try:
            await self._guard(cmd, lambda c, ev: self._bulk_receive(c, ev, report), cancel)
        except asyncio.CancelledError:
            stopping = True
            raise
        finally:
            self.receiving.pop(cmd.transfer_id, None)
            for cmd_id in ids[1:]:
                self.cancels.pop(cmd_id, None)
            ended = self.transfers.get(cmd.id)
            if not stopping and ended is not None and ended.state != "running":
                for cmd_id in ids[1:]:
                    self._report(msgspec.structs.replace(ended, command_id=cmd_id))
                self._record_end(cmd, ended)

    def _record_end(self, cmd: wb.BulkReceive, p: w.TransferProgress) -> None:
        if self.book is None:
            return
        try:
            self.book.put(
                ReceiveRecord(
                    command=cmd,
                    state=p.state,
                    message=p.message,
                    done_bytes=p.done_bytes,
                    total_bytes=p.total_bytes,
                    ended_at=time.time(),
                )
            )
        except OSError as exc:
            log.warning("could not record the end of transfer %s (%s)", cmd.transfer_id, exc)

    async def _bulk_receive(
        self,
        cmd: wb.BulkReceive,
        cancel: asyncio.Event,
        emit: Callable[[w.TransferProgress], None],
    ) -> None:
        root = pick_root(self.roots, cmd.root)
        name = validate_dataset_name(cmd.name)
        dest = confine(root, name)
        work = work_dir(root, name, cmd.transfer_id)
        rec = self.book.get(cmd.transfer_id) if self.book is not None else None
        resumed = rec is not None
        there, working = await asyncio.to_thread(
            lambda: (os.path.lexists(dest), os.path.lexists(work))
        )
        if there and resumed and not working:
            # Killed between the rename and the report: the tree in place is this
            # transfer's (the master lets nothing else bring that name meanwhile).
            emit(
                w.TransferProgress(
                    command_id=cmd.id,
                    state="succeeded",
                    message="received and verified before the agent restarted",
                )
            )
            await self.rescan()
            return
        if there:
            raise DatasetExistsError(f"a dataset named {name!r} already exists in {root}")
        if self.book is not None and not resumed:
            await asyncio.to_thread(self.book.put, ReceiveRecord(command=cmd))
        started = time.monotonic()

        def report(p: Progress, message: str) -> None:
            elapsed = max(time.monotonic() - started, 1e-6)
            emit(
                w.TransferProgress(
                    command_id=cmd.id,
                    done_bytes=p.bytes_done,
                    total_bytes=p.bytes_total,
                    rate_bps=p.bytes_received / elapsed,
                    message=message[:4096],
                )
            )

        try:
            got = await run_cancellable(
                receive_tree(
                    self.link,
                    cmd.transfer_id,
                    work,
                    dest,
                    report,
                    max_bytes=min(cmd.max_bytes or AGENT_MAX_BYTES, AGENT_MAX_BYTES),
                    identity=self.identity,
                ),
                cancel,
            )
        except asyncio.CancelledError:
            raise  # the agent is stopping: the work dir stays for its next start
        except BaseException:
            await asyncio.to_thread(abort_work, work)
            raise
        await self.rescan()
        resumed_from = got.bytes_done_at_start
        emit(
            w.TransferProgress(
                command_id=cmd.id,
                done_bytes=got.progress.bytes_total,
                total_bytes=got.progress.bytes_total,
                rate_bps=got.progress.bytes_received / max(time.monotonic() - started, 1e-6),
                state="succeeded",
                message=(
                    f"received {got.progress.files_total} files, {got.progress.bytes_total} "
                    f"bytes ({got.progress.bytes_received} sent"
                    + (f" after resuming from {resumed_from} held" if resumed_from else "")
                    + f", {got.progress.bytes_redundant} re-sent) {got.path}"
                ),
            )
        )
