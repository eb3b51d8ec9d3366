"""Removing finished jobs' directories: the ``sweep_job_dirs`` and ``purge_job_dir``
commands (:mod:`mlsm.wire.outputs`).

The master names finished jobs; this side decides, per directory, whether it may go now:

- never one in use: an attempt of the job runs here or its end is not delivered yet (the
  job supervisor says), or a fetch or listing pins it (:class:`~agent.outputs.pins.JobDirPins`);
- a sweep removes a directory whose job ended more than ``retention_s`` ago, then, while
  the data dir's filesystem is fuller than ``high_pct``, the oldest remaining ones;
- a purge removes its one directory unless it is in use (and says why not).

A job's directory is written by the job, so it is removed by descriptor without following a
link (:func:`agent.fsutil.remove_tree`): a link planted inside is unlinked, its target
untouched. The agent's own bookkeeping for the job (``control/<id>/``) goes with it.
Every removal is reported to the master, which audits it; a report that cannot be sent now
is kept and sent again (a lost one is caught by the next sweep, which finds the directory
gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agent.fsutil import remove_tree
from agent.link import MasterLink
from agent.outputs.disk import JOBS_DIR, DiskMeter
from agent.outputs.pins import JobDirPins
from agent.pacing import backoff, idle_until, nap
from agent.runtimes.jobfs import control_dir
from mlsm import errors
from mlsm.wire import agent as w
from mlsm.wire import outputs as wo

log = logging.getLogger("mlsm.agent")

MAX_PENDING_REPORTS = 256  # reports kept for resending while the master is away


class JobDirSweeper:
    """Handles the removal commands; ``in_use(job_id)`` says why a directory is busy
    (``None``: it is not), ``on_disk`` takes the disk report measured after removals."""

    def __init__(
        self,
        *,
        data_dir: Path,
        link: MasterLink,
        pins: JobDirPins,
        meter: DiskMeter,
        in_use: Callable[[int], str | None],
        on_disk: Callable[[wo.NodeDisk], None],
        stopping: asyncio.Event,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.link = link
        self.pins = pins
        self.meter = meter
        self.in_use = in_use
        self.on_disk = on_disk
        self.stopping = stopping
        self._pending: list[wo.JobDirsRemoved] = []
        self._queued = asyncio.Event()  # set when a report is queued: the resend loop wakes
        # One sender at a time: a sweep's report and the resend loop must not both send
        # the first pending report (the master would be told of its removals twice).
        self._sending = asyncio.Lock()
        self._lock = asyncio.Lock()  # one removal pass at a time

    def install(self, handlers: dict[type, Callable[[Any], Awaitable[None]]]) -> None:
        handlers[wo.SweepJobDirs] = self.sweep
        handlers[wo.PurgeJobDir] = self.purge

    def job_dir(self, job_id: int) -> Path:
        return self.data_dir / JOBS_DIR / str(job_id)

    # ---------------------------------------------------------------- commands
    async def sweep(self, cmd: wo.SweepJobDirs) -> None:
        async with self._lock:
            report = await asyncio.to_thread(self._sweep, cmd)
        await self._deliver(report)

    async def purge(self, cmd: wo.PurgeJobDir) -> None:
        async with self._lock:
            report = await asyncio.to_thread(self._purge, cmd)
        await self._deliver(report)

    def _busy(self, job_id: int) -> str | None:
        why = self.in_use(job_id)
        if why is None and self.pins.pinned(job_id):
            why = "its outputs are being fetched or listed"
        return why

    def _exists(self, job_id: int) -> bool:
        return os.path.lexists(self.job_dir(job_id))

    def _sweep(self, cmd: wo.SweepJobDirs) -> wo.JobDirsRemoved:
        report = wo.JobDirsRemoved(command_id=cmd.id)
        now = time.time()
        left: list[wo.FinishedJob] = []
        for job in sorted(cmd.jobs, key=lambda j: (j.ended_at, j.job_id)):
            if not self._exists(job.job_id):
                report.gone.append(job.job_id)
                continue
            if self._busy(job.job_id) is not None:
                continue
            if cmd.retention_s > 0 and job.ended_at < now - cmd.retention_s:
                self._remove(job.job_id, "retention", report)
            else:
                left.append(job)
        if cmd.high_pct > 0:
            for job in left:
                if self.meter.used_pct() <= cmd.high_pct:
                    break
                if self._busy(job.job_id) is None:
                    self._remove(job.job_id, "disk", report)
        report.disk = self.meter.measure()
        return report

    def _purge(self, cmd: wo.PurgeJobDir) -> wo.JobDirsRemoved:
        report = wo.JobDirsRemoved(command_id=cmd.id)
        jid = cmd.job_id
        why = self._busy(jid)
        if not self._exists(jid):
            report.gone.append(jid)
        elif why is not None:
            report.kept.append(wo.KeptDir(job_id=jid, why=why))
        else:
            self._remove(jid, "purge", report, by=cmd.requested_by)
        report.disk = self.meter.measure()
        return report

    def _remove(
        self, job_id: int, reason: wo.RemovalReason, report: wo.JobDirsRemoved, by: str = ""
    ) -> None:
        with self.pins.removal(job_id) as claimed:
            if not claimed:
                report.kept.append(
                    wo.KeptDir(job_id=job_id, why="its outputs are being fetched or listed")
                )
                return
            size = self.meter.job_dir_size(job_id)
            try:
                remove_tree(self.job_dir(job_id))
            except OSError as exc:
                log.warning("could not remove job %s's directory: %s", job_id, exc)
                report.kept.append(
                    wo.KeptDir(job_id=job_id, why=f"it could not be removed: {exc.strerror or exc}")
                )
                return
            with contextlib.suppress(OSError):
                remove_tree(control_dir(self.data_dir, job_id))
        log.info("removed job %s's directory (%s, %d bytes)", job_id, reason, size.bytes)
        report.removed.append(
            wo.RemovedDir(job_id=job_id, reason=reason, bytes=size.bytes, files=size.files, by=by)
        )

    # ---------------------------------------------------------------- reports
    async def _deliver(self, report: wo.JobDirsRemoved) -> None:
        if report.disk is not None:
            self.on_disk(report.disk)
        if not (report.removed or report.kept or report.gone) and report.disk is None:
            return
        self._pending.append(report)
        del self._pending[:-MAX_PENDING_REPORTS]
        self._queued.set()
        await self.flush()

    async def flush(self) -> bool:
        """Send the reports not delivered yet; False when the master is away."""
        async with self._sending:
            while self._pending:
                report = self._pending[0]
                try:
                    await self.link.call("outputs/removed", report, w.decode_ack)
                except errors.MlsmError as exc:
                    log.warning("could not report removed job directories now (%s)", exc.message)
                    return False
                # Reports may have been added (and the oldest dropped) while this one was sent.
                self._pending = [p for p in self._pending if p is not report]
            return True

    async def resend_loop(self) -> None:
        """Send again, with backoff, what could not be delivered at once; with nothing
        kept, wait (without a timer) for the next report."""
        failures = 0
        while not self.stopping.is_set():
            self._queued.clear()
            if not self._pending:
                failures = 0
                await idle_until(self.stopping, self._queued)
                continue
            if not await self.flush():
                failures += 1
                await nap(self.stopping, backoff(failures))
                continue
            failures = 0
            await nap(self.stopping, backoff(1))
