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
the source's manifest and files through the master's relay pipes into a journaled work
dir, and renames the verified tree into place.
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

from agent.bulk.receive import abort_work, receive_tree, work_dir
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
    ) -> None:
        """``transfers`` is where progress reports go (command id -> latest); the agent
        sends them with each heartbeat."""
        self.roots = list(roots)
        self.link = link
        self.catalog = catalog
        self.transfers = transfers
        self.cancels: dict[int, asyncio.Event] = {}  # command id -> its cancel flag
        self.tasks: set[asyncio.Task[None]] = set()
        self.seen: set[int] = set()
        self.secrets: dict[int, tuple[str, ...]] = {}  # command id -> its URL's secret parts

    def install(self, handlers: dict[type, Callable[[Any], Awaitable[None]]]) -> None:
        """Sweep what an earlier run left half-made, then register the handlers."""
        for path in purge_leftovers(self.roots):
            log.info("removed leftover %s of an interrupted dataset operation", path)
        handlers[w.ImportDataset] = self._once(self._import)
        handlers[w.DeleteDataset] = self._once(self._delete)
        handlers[w.DigestDataset] = self._once(self._digest)
        handlers[wb.BulkReceive] = self._once(self._bulk_receive)
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
    async def _bulk_receive(self, cmd: wb.BulkReceive, cancel: asyncio.Event) -> None:
        root = pick_root(self.roots, cmd.root)
        name = validate_dataset_name(cmd.name)
        dest = confine(root, name)
        work = work_dir(root, name, cmd.transfer_id)
        if await asyncio.to_thread(os.path.lexists, dest):
            raise DatasetExistsError(f"a dataset named {name!r} already exists in {root}")
        cb, finals = self._held()
        started = time.monotonic()

        def report(p: Progress, message: str) -> None:
            elapsed = max(time.monotonic() - started, 1e-6)
            cb(
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
                ),
                cancel,
            )
        except BaseException:
            await asyncio.to_thread(abort_work, work)
            raise
        finally:
            await self._finish(finals)
        await self.rescan()
        self._report(
            w.TransferProgress(
                command_id=cmd.id,
                done_bytes=got.bytes_total,
                total_bytes=got.bytes_total,
                rate_bps=got.bytes_received / max(time.monotonic() - started, 1e-6),
                state="succeeded",
                message=(
                    f"received {got.files_total} files, {got.bytes_total} bytes via master "
                    f"relay ({got.bytes_received} sent, {got.bytes_redundant} re-sent)"
                ),
            )
        )
