"""The job supervisor: runs this node's job attempts from their start to a delivered end.

It starts an attempt on the runtime of its env kind (a repeated StartJob for an attempt
that already runs here does nothing), re-adopts at start-up what an earlier agent process
left running, polls every attempt, stops one when told, and marks its GPUs busy on a
simulated probe. An attempt that cannot start is reported at once: ``lost`` when the
runtime itself is away (not the job's fault: the master requeues it), ``failed_to_start``
otherwise.

It also ties log shipping to each attempt's end. An ended attempt's final report goes to
the master only after its whole log did (or after :data:`FINAL_WAIT_MAX_S` of trying), so
whoever follows the log misses nothing; until the master has the report, heartbeats still
list the job as running, or the master would take it for a job the agent lost. A report
the master did not get is kept and sent again. Once it is delivered, the job's log tail and
state record are dropped, unless its next attempt already runs here.

Throughput: a StartJob is *taken* (:meth:`JobSupervisor.take`) and started in a task of
its own, up to :data:`START_CONCURRENCY` at once, so the agent reads its next commands
while a start is under way; a later command about the same job (a cancel) waits for that
start. The moment a process job's shim exits, the watch loop wakes (a pidfd of the
shim, readable on its exit, registered with the event loop), so a job's end is seen at
once, not at the next poll, and costs nothing while the job runs. One poll pass asks every
attempt in one thread hop; the ends it finds go to the master in one report, after their
logs (flushed side by side), and leave the state file in one write. State writes (which
wait for the disk) run on a thread, never on the event loop.

Everything it works with comes in through its constructor: the link to the master, the
agent's state file, the log shipper, the node's runtimes, the GPU probe, and how to tell
the master the node's runtimes changed.

Over 400 lines, as one piece: an attempt's life here (taken, started, recorded, watched,
its end reported after its log, its record dropped) is one ordering that the heartbeat's
view depends on; split, its rules would be read in several places.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.codecache import CodeCache
from agent.collectors import GpuProbe
from agent.link import MasterLink
from agent.logship import LogShipper
from agent.pacing import backoff, idle_until, nap
from agent.runtimes.base import (
    LOG_NAME,
    AdoptRecord,
    JobHandle,
    Runtime,
    RuntimeStartError,
    RuntimeUnavailable,
    job_dir_for,
)
from agent.runtimes.jobfs import append_line
from agent.runtimes.registry import Runtimes
from agent.state import AgentState
from mlsm import errors
from mlsm.wire import agent as w

log = logging.getLogger("mlsm.agent")

JOB_CHECK_S = 0.2  # how often running attempts are polled (an exit also wakes the poll;
# with no attempt here, and no end to report, nothing is polled)
LOG_PUMP_S = 0.5  # how often new log bytes are shipped
STATE_SAVE_S = 10.0  # how often the state file is saved for its log offsets
LOG_FLUSH_S = 5.0  # how long a job's end waits for its log to reach the master, per try
FINAL_WAIT_MAX_S = 120.0  # after this, a job's end is reported even if its log is refused
#: Attempts being started at once (StartJob commands taken while earlier ones still start):
#: one start's process spawn overlaps another's state write and report.
START_CONCURRENCY = 4


@dataclass
class _Running:
    handle: JobHandle
    spec: w.JobSpec
    report: w.JobReport
    stopped_lost: bool = False  # asked to stop after a lease without the master


def _running_report(rec: AdoptRecord) -> w.JobReport:
    return w.JobReport(
        job_id=rec.job_id,
        attempt=rec.attempt,
        state="running",
        pid=rec.pid,
        container_id=rec.container_id,
        started_at=rec.started_at,
    )


def _poll_all(handles: list[JobHandle]) -> list[w.JobReport | None]:
    """Each attempt's final report, or None while it runs (one thread hop for them all)."""
    return [h.poll() for h in handles]


def _lost_report(rec: AdoptRecord, reason: str) -> w.JobReport:
    return w.JobReport(
        job_id=rec.job_id, attempt=rec.attempt, state="lost", end_kind="lost", reason=reason
    )


class JobSupervisor:
    """The attempts this node runs. Owned by the agent's event loop; runtime calls that
    may block go to threads."""

    def __init__(
        self,
        *,
        link: MasterLink,
        state: AgentState,
        shipper: LogShipper,
        runtimes: Runtimes,
        probe: GpuProbe,
        data_dir: Path,
        stopping: asyncio.Event,
        runtimes_changed: Callable[[], Awaitable[None]],
        code: CodeCache | None = None,
    ) -> None:
        """``runtimes_changed`` is awaited after a runtime went away under a start: it
        tells the master (node info) and returns once it has heard, or soon after."""
        self._link = link
        self._state = state
        self._shipper = shipper
        self._runtimes = runtimes
        self._probe = probe
        self._data_dir = data_dir
        self._stopping = stopping
        self._runtimes_changed = runtimes_changed
        self._code = code
        self._jobs: dict[int, _Running] = {}
        self._finished: list[tuple[AdoptRecord, w.JobReport]] = []
        self._finish_tries: dict[int, float] = {}  # job id -> when its end was first sent
        self._starting: set[int] = set()  # attempts between StartJob and their record
        self._wake = asyncio.Event()  # set when a watched shim exits
        self._start_tasks: dict[int, asyncio.Task[None]] = {}  # job id -> its start under way
        self._start_slots = asyncio.Semaphore(START_CONCURRENCY)
        self._exit_fds: dict[int, int] = {}  # job id -> pidfd of its shim, while watched

    @property
    def running(self) -> int:
        """How many attempts run here now."""
        return len(self._jobs)

    # ---------------------------------------------------------------- for the heartbeat
    def reports(self) -> list[w.JobReport]:
        """Every job this node has, for a heartbeat (the master's full view of the node).

        A job that ended but whose final report (sent after its log) has not reached the
        master yet is still listed as running: left out, the master would take it for a job
        the agent lost and interrupt it.
        """
        out = [r.report for r in self._jobs.values()]
        for rec, _ in self._finished:
            if rec.job_id not in self._jobs:
                out.append(_running_report(rec))
        return out

    def in_use(self, job_id: int) -> str | None:
        """Why the job's directory must stay (an attempt runs here, or its end is not
        delivered yet), or None."""
        if job_id in self._jobs or job_id in self._starting or job_id in self._start_tasks:
            return "the job runs on this node"
        if any(rec.job_id == job_id for rec, _ in self._finished):
            return "the job's end is still being reported"
        return None

    def record_of(self, job_id: int) -> AdoptRecord | None:
        """The running attempt of ``job_id`` here (for a shell or a forward into it)."""
        r = self._jobs.get(job_id)
        return r.handle.record if r is not None else None

    def attribute_gpu_processes(self, gpus: list[w.GpuSample]) -> None:
        """Name the job of each GPU process that runs in one of this node's job sessions."""
        sessions: dict[int, int] = {}
        for jid, r in self._jobs.items():
            sid = getattr(r.handle, "session_id", None)
            if sid:
                sessions[sid] = jid
        if not sessions:
            return
        for g in gpus:
            for p in g.processes:
                if p.job_id is None:
                    with contextlib.suppress(OSError):
                        p.job_id = sessions.get(os.getsid(p.pid))

    # ---------------------------------------------------------------- commands
    async def take(self, cmd: w.StartJob) -> None:
        """Take a StartJob: it starts in a task of its own (see the module docstring) and
        the command counts as handled now. Starts of one job keep their order."""
        job_id = cmd.job.job_id
        before = self._start_tasks.get(job_id)
        task = asyncio.create_task(self._start_in_turn(before, cmd), name=f"start-job-{job_id}")
        self._start_tasks[job_id] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._start_tasks.get(job_id) is t:
                del self._start_tasks[job_id]

        task.add_done_callback(done)

    async def _start_in_turn(self, before: asyncio.Task[None] | None, cmd: w.StartJob) -> None:
        if before is not None:
            await asyncio.wait([before])
        async with self._start_slots:
            try:
                await self.start(cmd)
            except Exception:
                log.exception("starting job %s failed", cmd.job.job_id)

    async def started(self, job_id: int | None = None, timeout: float | None = None) -> None:
        """Wait until the start under way of ``job_id`` (of every job: None) is over, at
        most ``timeout`` seconds."""
        tasks = list(self._start_tasks.values()) if job_id is None else []
        if job_id is not None and job_id in self._start_tasks:
            tasks = [self._start_tasks[job_id]]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def start(self, cmd: w.StartJob) -> None:
        spec = cmd.job
        cur = self._jobs.get(spec.job_id)
        if cur is not None and cur.spec.attempt >= spec.attempt:
            return  # idempotent: this attempt already runs here
        runtime = self._runtimes.get(spec.env_kind)
        job_dir = job_dir_for(self._data_dir, spec.job_id)
        self._starting.add(spec.job_id)
        try:
            await self._start(spec, runtime, job_dir)
        finally:
            self._starting.discard(spec.job_id)

    async def _start(self, spec: w.JobSpec, runtime: Runtime | None, job_dir: Path) -> None:
        try:
            if runtime is None and spec.env_kind == "docker":
                why = self._runtimes.docker_error or "Docker unavailable on this node"
                raise RuntimeUnavailable(why)
            if runtime is None:
                raise RuntimeStartError(f"no {spec.env_kind} runtime on this node")
            if spec.code:
                await self._fill_code(spec)
            try:
                handle = await asyncio.to_thread(runtime.start, spec, job_dir)
            except OSError as exc:  # the node's disk (full, read-only), not the job
                raise RuntimeUnavailable(f"could not start on this node: {exc}") from exc
            finally:
                if spec.code and self._code is not None:
                    await asyncio.to_thread(self._code.release, f"job:{spec.job_id}")
        except RuntimeUnavailable as exc:
            # Not the job's fault: the master interrupts the attempt (requeued while retries
            # remain). An engine that went away since the last check is dropped at once, and
            # the master hears so (next heartbeat) before the attempt's end, so it does not
            # hand the requeued attempt straight back to this node.
            if spec.env_kind == "docker" and self._runtimes.drop_docker(str(exc)):
                await self._runtimes_changed()
            await self._report_unstarted(spec, "lost", str(exc))
            return
        except RuntimeStartError as exc:
            await self._report_unstarted(spec, "failed_to_start", str(exc))
            return
        rec = handle.record
        rec.stop_when_lost = spec.stop_when_lost
        self._state.add(rec, save=False)  # in memory now, on disk before the report:
        await self._save_state()
        report = _running_report(rec)
        self._jobs[spec.job_id] = _Running(handle, spec, report)
        self._wake.set()  # the watch loop polls again (it waits without a timer when idle)
        self._watch_exit(spec.job_id, rec.pid)
        self._mark_gpus(spec.gpus, True, rec.pid)
        self._shipper.watch(spec.job_id, spec.attempt, job_dir / LOG_NAME, owner=rec.uid)
        await self._send_events([report])

    async def _fill_code(self, spec: w.JobSpec) -> None:
        """The job's code snapshot into the node cache: a master that cannot be reached is
        not the job's fault (RuntimeUnavailable: requeued), anything else fails it."""
        if self._code is None:
            raise RuntimeStartError("this agent cannot run jobs in shipped code")
        try:
            await self._code.fill(spec.code, job_id=spec.job_id, owner=f"job:{spec.job_id}")
        except errors.UnavailableError as exc:
            raise RuntimeUnavailable(f"could not fetch the job's code: {exc}") from exc
        except (errors.MlsmError, OSError) as exc:
            raise RuntimeStartError(f"could not fetch the job's code: {exc}") from exc

    async def cancel(self, cmd: w.CancelJob) -> None:
        await self.started(cmd.job_id)  # a start under way first becomes an attempt to stop
        r = self._jobs.get(cmd.job_id)
        if r is not None and r.spec.attempt == cmd.attempt:
            await asyncio.to_thread(r.handle.stop, cmd.reason, cmd.end_kind, cmd.grace_s)

    async def stop_lost(self, reason: str) -> list[int]:
        """Stop every attempt the master would run again elsewhere (``stop_when_lost``) and
        not yet asked to stop for that: the node has been out of the master's reach for
        the lease. Their ends are reported as ``lost``. The job ids stopped now."""
        stopped = []
        for job_id, r in list(self._jobs.items()):
            if not r.spec.stop_when_lost or r.stopped_lost:
                continue
            r.stopped_lost = True
            stopped.append(job_id)
            await asyncio.to_thread(r.handle.stop, reason, "lost", r.spec.kill_grace_s)
        return stopped

    async def notice(self, cmd: w.JobNotice) -> None:
        """A line from the master for a running attempt's log (shipped like the job's own)."""
        r = self._jobs.get(cmd.job_id)
        if r is None or r.spec.attempt != cmd.attempt:
            return
        rec = r.handle.record
        line = "[mlsm] " + " ".join(cmd.text.split())
        await asyncio.to_thread(append_line, Path(rec.job_dir) / LOG_NAME, line, rec.uid)

    async def _save_state(self) -> None:
        """Write the state file; a write the disk refuses (full, read-only) is logged and
        left for the next save (the state stays whole in memory): it must neither end the
        loop that saves nor lose the attempt that already runs."""
        try:
            await asyncio.to_thread(self._state.save)
        except OSError as exc:
            log.warning("could not save the agent's state (will retry): %s", exc)

    async def _report_unstarted(
        self, spec: w.JobSpec, state: Literal["lost", "failed_to_start"], reason: str
    ) -> None:
        """Tell the master at once that an attempt never started: ``lost`` (not the job's
        fault: the master requeues it) or ``failed_to_start`` (the job's own error)."""
        await self._send_events(
            [
                w.JobReport(
                    job_id=spec.job_id,
                    attempt=spec.attempt,
                    state=state,
                    reason=reason,
                    end_kind="lost" if state == "lost" else "error",
                    ended_at=time.time(),
                )
            ]
        )

    def _mark_gpus(self, gpus: list[int], busy: bool, pid: int | None = None) -> None:
        set_busy = getattr(self._probe, "set_busy", None)
        if set_busy is None:
            return
        for g in gpus:
            with contextlib.suppress(Exception):
                set_busy(g, busy, pid=pid) if busy else set_busy(g, False)

    async def _send_events(self, reports: list[w.JobReport]) -> bool:
        try:
            await self._link.send_events(reports)
            return True
        except errors.MlsmError as exc:
            log.warning(
                "could not report job events now (%s); the next heartbeat carries them", exc
            )
            return False

    # ---------------------------------------------------------------- start-up
    def adopt(self) -> None:
        """Take over the attempts the state file lists (an earlier agent process's)."""
        for rec in self._state.records():
            runtime = self._runtimes.for_record(rec)
            if runtime is None:
                log.warning(
                    "job %s ran in Docker, which is unavailable now; reporting it lost", rec.job_id
                )
                self._finished.append(
                    (rec, _lost_report(rec, "Docker became unavailable while the agent was down"))
                )
                continue
            try:
                got = runtime.adopt(rec)
            except Exception as exc:
                got = _lost_report(rec, f"could not re-adopt: {exc}")
            self._shipper.watch(
                rec.job_id, rec.attempt, Path(rec.job_dir) / LOG_NAME, owner=rec.uid
            )
            if isinstance(got, w.JobReport):
                self._finished.append((rec, got))
            else:
                spec = w.JobSpec(
                    job_id=rec.job_id,
                    attempt=rec.attempt,
                    argv=["?"],
                    kill_grace_s=rec.kill_grace_s,
                    stop_when_lost=rec.stop_when_lost,
                )
                self._jobs[rec.job_id] = _Running(got, spec, _running_report(rec))
                self._watch_exit(rec.job_id, rec.pid)
                log.info("re-adopted job %s (attempt %s)", rec.job_id, rec.attempt)

    # ---------------------------------------------------------------- loops
    def _watch_exit(self, job_id: int, pid: int | None) -> None:
        """Wake the watch loop when the shim ``pid`` exits (Linux pidfds; elsewhere, and for
        containers, the poll every :data:`JOB_CHECK_S` sees the end)."""
        if pid is None or not hasattr(os, "pidfd_open") or job_id in self._exit_fds:
            return
        try:
            loop = asyncio.get_running_loop()
            fd = os.pidfd_open(pid)
        except (OSError, RuntimeError):
            return  # gone already, or no running loop (adopt before the loop): polled
        loop.add_reader(fd, self._exited, job_id)
        self._exit_fds[job_id] = fd

    def _exited(self, job_id: int) -> None:
        self._unwatch_exit(job_id)
        self._wake.set()

    def _unwatch_exit(self, job_id: int) -> None:
        fd = self._exit_fds.pop(job_id, None)
        if fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    async def watch(self) -> None:
        """Poll the running attempts; deliver the ends of those that finished."""
        stop_wakes = asyncio.create_task(self._wake_on_stop())
        try:
            while not self._stopping.is_set():
                self._wake.clear()  # an exit from here on wakes the nap below
                running = list(self._jobs.items())
                if running:
                    finals = await asyncio.to_thread(_poll_all, [r.handle for _, r in running])
                    for (jid, r), final in zip(running, finals, strict=True):
                        if final is not None and self._jobs.get(jid) is r:
                            del self._jobs[jid]
                            self._unwatch_exit(jid)
                            self._mark_gpus(r.spec.gpus, False)
                            self._finished.append((r.handle.record, final))
                if self._finished:
                    await self._report_finished()
                # Nothing runs and nothing waits to be reported: no poll until a start
                # (or the agent stopping) sets the wake.
                idle = not self._jobs and not self._finished
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), None if idle else JOB_CHECK_S)
        finally:
            stop_wakes.cancel()
            for jid in list(self._exit_fds):
                self._unwatch_exit(jid)

    async def _wake_on_stop(self) -> None:
        await self._stopping.wait()
        self._wake.set()

    async def _report_finished(self) -> None:
        # Entries leave the list only once delivered, so a heartbeat sent meanwhile still
        # lists the job (see reports). Every end whose log is through goes in one report.
        items = list(self._finished)
        now = time.monotonic()
        for rec, _ in items:
            self._finish_tries.setdefault(rec.job_id, now)
        flushed = await asyncio.gather(
            *(self._shipper.flush(rec.job_id, timeout_s=LOG_FLUSH_S) for rec, _ in items)
        )
        ready = []
        for item, through in zip(items, flushed, strict=True):
            rec, final = item
            if not through and time.monotonic() - self._finish_tries[rec.job_id] < FINAL_WAIT_MAX_S:
                continue  # the end goes after the whole log, so a follower misses nothing
            final.log_size = self._shipper.offset(rec.job_id) or 0
            ready.append(item)
        if ready and await self._send_events([final for _, final in ready]):
            gone = []
            for item in ready:
                rec, _ = item
                self._finished.remove(item)
                self._finish_tries.pop(rec.job_id, None)
                # The master may have started the job's next attempt here while this end
                # was on its way (a retry of a lost attempt): that one keeps its log and
                # record.
                if rec.job_id not in self._jobs:
                    self._shipper.forget(rec.job_id)
                    gone.append(rec.job_id)
            if gone:
                self._state.remove(*gone, save=False)
                await self._save_state()
        if self._finished:
            await nap(self._stopping, backoff(1))

    async def ship_logs(self) -> None:
        """Ship new log bytes of every watched job; save the state file (its log offsets)
        now and then. With no log to ship it waits, without a timer, for the next one."""
        last_save = time.monotonic()
        while not self._stopping.is_set():
            self._shipper.watched.clear()  # a log watched from here on ends the idle wait
            if not self._shipper.jobs():
                await self._save_state()  # the last offsets (writes only what changed)
                await idle_until(self._stopping, self._shipper.watched)
                continue
            with contextlib.suppress(Exception):
                await self._shipper.pump_once()
            if time.monotonic() - last_save > STATE_SAVE_S:
                last_save = time.monotonic()
                await self._save_state()
            await nap(self._stopping, LOG_PUMP_S)
