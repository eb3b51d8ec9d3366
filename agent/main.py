"""The agent: one process per server. Joins once, then heartbeats, long-polls for commands,
runs jobs, ships their logs and reports their ends, and scans its dataset roots.

Every loop survives the master being away: calls are retried with capped exponential
backoff and jitter while sampling goes on, and the node is online again within one
interval of the master's return. SIGTERM stops the agent cleanly and leaves jobs running;
a restarted agent re-adopts them from its state file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.collectors import AsyncGpuSampler, HostCollector, make_probe
from agent.link import MasterLink, is_auth_failure
from agent.logship import LogShipper
from agent.runtimes.accounts import (
    data_dir_mode,
    default_account_ok,
    own_account,
    regular_accounts,
    switches_accounts,
)
from agent.runtimes.base import (
    LOG_NAME,
    AdoptRecord,
    JobHandle,
    Runtime,
    RuntimeContext,
    RuntimeStartError,
    RuntimeUnavailable,
    job_dir_for,
)
from agent.state import AgentState
from mlsm import PROTOCOL_VERSION, __version__, errors
from mlsm.wire import agent as w

log = logging.getLogger("mlsm.agent")

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
POLL_WAIT_S = 25.0
JOB_CHECK_S = 0.2
LOG_PUMP_S = 0.5
SCAN_INTERVAL_S = 30.0
STATE_SAVE_S = 10.0


# How often the agent re-checks its Docker engine (seconds; tests shorten it).
def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        logging.getLogger("mlsm.agent").warning(
            "%s=%r is not a number of seconds; using %s", name, raw, default
        )
        return default
    return value if value > 0 else default


DOCKER_CHECK_S = _env_seconds("MLSM_DOCKER_CHECK_INTERVAL", 15.0)  # re-check the Docker engine
ACCOUNTS_CHECK_S = _env_seconds("MLSM_ACCOUNTS_CHECK_INTERVAL", 60.0)  # re-read Unix accounts
REFUSED_RETRY_INTERVALS = 4  # a refused heartbeat is retried within this many intervals
LOG_FLUSH_S = 5.0  # how long a job's end waits for its log to reach the master, per try
FINAL_WAIT_MAX_S = 120.0  # after this, a job's end is reported even if its log is refused


def backoff(attempt: int) -> float:
    """Capped exponential backoff with full jitter."""
    cap = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * (2 ** min(attempt, 10)))
    return random.uniform(cap / 2, cap)


@dataclass
class AgentConfig:
    master: str
    data_dir: Path
    name: str = ""
    join_token: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    dataset_roots: list[Path] = field(default_factory=list)
    simulate_gpus: str = ""
    verify: Any = True
    heartbeat_interval: float = 2.0
    default_unix_user: str = ""  # jobs of users with no account here run as this (agent as root)
    single_user: bool = False  # every job runs as the agent's own account, even as root


@dataclass
class _Running:
    handle: JobHandle
    spec: w.JobSpec
    report: w.JobReport


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        cfg.data_dir.mkdir(
            parents=True, exist_ok=True, mode=data_dir_mode(os.geteuid() == 0, cfg.single_user)
        )
        self.name = cfg.name or socket.gethostname().split(".")[0]
        self.link = MasterLink(cfg.master, cfg.data_dir, verify=cfg.verify)
        self.state = AgentState(cfg.data_dir / "state.json").load()
        self.host = HostCollector(cfg.data_dir, cfg.dataset_roots)
        probe, self.gpu_error = make_probe(
            cfg.simulate_gpus, cfg.data_dir / "simulated-gpus.json", identity=self.name
        )
        self.probe = probe
        self.sampler = AsyncGpuSampler(probe)
        self.interval = cfg.heartbeat_interval
        ctx = RuntimeContext(
            node_name=self.name,
            agent_data=cfg.data_dir,
            runs_as_root=os.geteuid() == 0,
            simulated_gpus=probe.kind == "simulated",
            default_unix_user=cfg.default_unix_user,
            single_user=cfg.single_user,
        )
        self.ctx = ctx
        self._accounts_checked = time.monotonic()
        self.runtimes: dict[str, Runtime] = {}
        from agent.runtimes.process import ProcessRuntime

        proc = ProcessRuntime(ctx)
        for kind in ("process", "venv", "conda"):
            self.runtimes[kind] = proc
        self.docker_error = ""
        self.docker: Any = None  # kept even while the engine is down, to notice it coming back
        try:
            from agent.runtimes.docker import ANY_NETWORK, DockerRuntime

            # The network mode comes with each job: the node's admin sets it on the master
            # (`mlsm node set NAME --docker-network ...`), which this agent already trusts.
            self.docker = DockerRuntime(ctx, allowed_networks=(ANY_NETWORK,))
            ok, why = self.docker.available()
            if ok:
                self.runtimes["docker"] = self.docker
            else:
                self.docker_error = why
        except Exception as exc:  # docker SDK missing or broken: no container jobs here
            self.docker_error = f"Docker unavailable: {exc}"
        self._docker_checked = time.monotonic()
        self.jobs: dict[int, _Running] = {}
        self.done_cmds: set[int] = set()
        self.to_ack: list[int] = []
        self.shipper = LogShipper(self._send_log, state=self.state)
        self.info = self._info()
        self._info_sent = False
        self.seq = 0
        self.stopping = asyncio.Event()
        self.registered = asyncio.Event()
        self.scanner: Any = None
        if cfg.dataset_roots:
            from agent.datasets.scan import DatasetScanner

            self.scanner = DatasetScanner(cfg.dataset_roots)
        self.last_error = ""
        # Commands other than StartJob/CancelJob, by type: filled by feature modules
        # (e.g. agent.datasets.service for imports, copies, deletes and digests).
        self.command_handlers: dict[type, Callable[[Any], Awaitable[None]]] = {}
        # Progress of running transfers (command id -> latest), sent with each heartbeat.
        self.transfers: dict[int, w.TransferProgress] = {}
        self._finished: list[tuple[AdoptRecord, w.JobReport]] = []
        self._finish_tries: dict[int, float] = {}  # job id -> when its end was first sent
        self._want_full = True
        if cfg.dataset_roots:
            from agent.datasets.service import DatasetCommands

            DatasetCommands(self).install()

    # ---------------------------------------------------------------- facts
    def _info(self) -> w.NodeInfo:
        info = self.host.info()
        info.agent_version = __version__
        info.gpu_probe = self.probe.kind
        d = self.probe.describe()
        info.driver_version = d.get("driver_version", "")
        info.cuda_version = d.get("cuda_version", "")
        info.runtimes = sorted(self.runtimes)
        info.docker_available = "docker" in self.runtimes
        info.docker_error = self.docker_error
        if switches_accounts(self.ctx):
            info.unix_users = regular_accounts()
            if default_account_ok(self.ctx.default_unix_user):
                info.default_unix_user = self.ctx.default_unix_user
        else:
            info.job_account = own_account().name
        return info

    # ---------------------------------------------------------------- run
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        self._adopt()
        await self._register()
        tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._command_loop(), name="commands"),
            asyncio.create_task(self._job_loop(), name="jobs"),
            asyncio.create_task(self._log_loop(), name="logs"),
        ]
        if self.scanner is not None:
            tasks.append(asyncio.create_task(self._scan_loop(), name="datasets"))
        await self.stopping.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.state.save()
        await self.link.aclose()
        self.probe.close()
        log.info("agent stopped; %d job(s) keep running and will be re-adopted", len(self.jobs))

    def stop(self) -> None:
        self.stopping.set()

    async def _register(self) -> None:
        if self.link.secret:
            self.registered.set()
            return
        if not self.cfg.join_token:
            raise SystemExit(
                "this agent has not joined yet: give --join-token (from `mlsm join-token create`)"
            )
        req = w.RegisterRequest(
            protocol=PROTOCOL_VERSION,
            join_token=self.cfg.join_token,
            name=self.name,
            labels=self.cfg.labels,
            info=self.info,
        )
        attempt = 0
        while not self.stopping.is_set():
            try:
                reply = await self.link.register(req)
            except errors.Unreachable as exc:
                wait = backoff(attempt)
                attempt += 1
                log.warning(
                    "cannot reach the master at %s (%s); retrying in %.1f s",
                    self.cfg.master,
                    exc.message,
                    wait,
                )
                await self._sleep(wait)
                continue
            except errors.MlsmError as exc:
                raise SystemExit(
                    f"the master refused to register this node: {exc.message}"
                ) from None
            self.link.store_secret(reply.node_secret)
            self.state.set_node(reply.node_id, reply.name)
            self.name = reply.name
            self.interval = reply.heartbeat_interval
            log.info("joined the master as node %s (id %s)", reply.name, reply.node_id)
            self.registered.set()
            self._info_sent = True
            return

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    def _fatal_auth(self, exc: errors.MlsmError) -> None:
        log.error(
            "the master no longer accepts this node (%s); join it again with a new join token",
            exc.message,
        )
        self.last_error = exc.message

    # ---------------------------------------------------------------- heartbeat
    async def _heartbeat_loop(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            if self.docker is not None and started - self._docker_checked >= DOCKER_CHECK_S:
                self._docker_checked = started
                await self._check_docker()
            if started - self._accounts_checked >= ACCOUNTS_CHECK_S:
                self._accounts_checked = started
                await self._check_accounts()
            gpus, gpu_err = await self.sampler.sample()
            self._attribute_gpu_processes(gpus)
            host = await asyncio.to_thread(self.host.sample)
            self.seq += 1
            hb = w.Heartbeat(
                protocol=PROTOCOL_VERSION,
                seq=self.seq,
                sent_at=time.time(),
                info=None if self._info_sent else self.info,
                host=host,
                gpus=gpus,
                gpu_error=gpu_err or self.gpu_error,
                jobs=self._job_reports(),
                datasets_digest=self.scanner.catalog_digest if self.scanner is not None else "",
                transfers=list(self.transfers.values()),
            )
            try:
                reply = await self.link.heartbeat(hb)
                self._info_sent = True
                if failures:
                    log.info("the master is back after %d failed heartbeat(s)", failures)
                failures = 0
                for t in hb.transfers:  # ended transfers are reported once, then dropped
                    if t.state != "running" and self.transfers.get(t.command_id) is t:
                        del self.transfers[t.command_id]
                self.interval = reply.heartbeat_interval
                if reply.want_full_catalog and self.scanner is not None:
                    self._want_full = True
                wait = max(0.0, self.interval - (time.monotonic() - started))
            except errors.Unreachable as exc:
                failures += 1
                self._info_sent = False
                # Never slower than the heartbeat itself: a master that comes back must see
                # this node within an interval, long before the lease ends its jobs.
                wait = min(backoff(failures), self.interval)
                log.warning("master unreachable (%s); retrying in %.1f s", exc.message, wait)
            except errors.MlsmError as exc:
                failures += 1
                wait = backoff(failures)
                if isinstance(exc, errors.ProtocolMismatch):
                    log.error("%s", exc.message)
                elif is_auth_failure(exc):
                    self._fatal_auth(exc)
                else:  # a busy or failing master: retry well within the lease
                    log.warning("heartbeat refused: %s", exc.message)
                    wait = min(wait, self.interval * REFUSED_RETRY_INTERVALS)
            await self._sleep(wait)

    def _job_reports(self) -> list[w.JobReport]:
        """Every job this node has, for a heartbeat (the master's full view of the node).

        A job that ended but whose final report (sent after its log) has not reached the
        master yet is still listed as running: left out, the master would take it for a job
        the agent lost and interrupt it.
        """
        out = [r.report for r in self.jobs.values()]
        for rec, _ in self._finished:
            if rec.job_id not in self.jobs:
                out.append(
                    w.JobReport(
                        job_id=rec.job_id,
                        attempt=rec.attempt,
                        state="running",
                        pid=rec.pid,
                        container_id=rec.container_id,
                        started_at=rec.started_at,
                    )
                )
        return out

    async def _check_accounts(self) -> None:
        """Tell the master when this node's Unix accounts change (a user added, removed)."""
        if not switches_accounts(self.ctx):
            return
        now = await asyncio.to_thread(regular_accounts)
        if now != self.info.unix_users:
            self.info.unix_users = now
            self._info_sent = False
            log.info("Unix accounts changed (%d regular accounts now)", len(now))

    async def _check_docker(self) -> None:
        """Notice the engine going away or coming back, and tell the master (node info)."""
        ok, why = await asyncio.to_thread(self.docker.available)
        if ok == ("docker" in self.runtimes):
            return
        if ok:
            self.runtimes["docker"] = self.docker
            self.docker_error = ""
            log.info("the Docker engine is available again: container jobs are accepted")
        else:
            self.runtimes.pop("docker", None)
            self.docker_error = why
            log.warning("%s: no new container jobs until it is back", why)
        self.info = self._info()
        self._info_sent = False

    def _attribute_gpu_processes(self, gpus: list[w.GpuSample]) -> None:
        sessions: dict[int, int] = {}
        for jid, r in self.jobs.items():
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
    async def _command_loop(self) -> None:
        failures = 0
        await self.registered.wait()
        while not self.stopping.is_set():
            ack, self.to_ack = self.to_ack, []
            try:
                batch = await self.link.poll_commands(POLL_WAIT_S, ack)
                failures = 0
            except errors.MlsmError as exc:
                self.to_ack = ack + self.to_ack
                failures += 1
                wait = backoff(failures)
                if is_auth_failure(exc):
                    self._fatal_auth(exc)
                else:  # commands must flow again as soon as the master is back
                    wait = min(wait, self.interval)
                await self._sleep(wait)
                continue
            for cmd in batch.commands:
                if cmd.id in self.done_cmds:
                    self.to_ack.append(cmd.id)
                    continue
                try:
                    await self._handle(cmd)
                except Exception:
                    log.exception("command %s failed", cmd.id)
                self.done_cmds.add(cmd.id)
                self.to_ack.append(cmd.id)

    async def _handle(self, cmd: w.Command) -> None:
        if isinstance(cmd, w.StartJob):
            await self._start_job(cmd.job)
        elif isinstance(cmd, w.CancelJob):
            r = self.jobs.get(cmd.job_id)
            if r is not None and r.spec.attempt == cmd.attempt:
                await asyncio.to_thread(r.handle.stop, cmd.reason, cmd.end_kind, cmd.grace_s)
        elif type(cmd) in self.command_handlers:
            await self.command_handlers[type(cmd)](cmd)
        else:
            log.warning("command %s is not handled by this agent", type(cmd).__name__)

    async def _start_job(self, spec: w.JobSpec) -> None:
        cur = self.jobs.get(spec.job_id)
        if cur is not None and cur.spec.attempt >= spec.attempt:
            return  # idempotent: this attempt already runs here
        runtime = self.runtimes.get(spec.env_kind)
        job_dir = job_dir_for(self.cfg.data_dir, spec.job_id)
        try:
            if runtime is None and spec.env_kind == "docker":
                raise RuntimeUnavailable(self.docker_error or "Docker unavailable on this node")
            if runtime is None:
                raise RuntimeStartError(f"no {spec.env_kind} runtime on this node")
            handle = await asyncio.to_thread(runtime.start, spec, job_dir)
        except RuntimeUnavailable as exc:
            # Not the job's fault: the master interrupts the attempt (requeued while retries
            # remain). An engine that went away since the last check is dropped at once, and
            # the master hears so (next heartbeat) before the attempt's end, so it does not
            # hand the requeued attempt straight back to this node.
            if spec.env_kind == "docker" and self.runtimes.pop("docker", None) is not None:
                self.docker_error = str(exc)
                self._docker_checked = time.monotonic()
                self.info = self._info()
                self._info_sent = False
                log.warning("%s: no new container jobs until it is back", exc)
                told_by = time.monotonic() + 2 * self.interval
                while not self._info_sent and time.monotonic() < told_by:
                    if self.stopping.is_set():
                        break
                    await self._sleep(JOB_CHECK_S)
            await self._report_unstarted(spec, "lost", str(exc))
            return
        except RuntimeStartError as exc:
            await self._report_unstarted(spec, "failed_to_start", str(exc))
            return
        rec = handle.record
        self.state.add(rec)
        report = w.JobReport(
            job_id=spec.job_id,
            attempt=spec.attempt,
            state="running",
            pid=rec.pid,
            container_id=rec.container_id,
            started_at=rec.started_at,
        )
        self.jobs[spec.job_id] = _Running(handle, spec, report)
        self._mark_gpus(spec.gpus, True, rec.pid)
        self.shipper.watch(spec.job_id, spec.attempt, job_dir / LOG_NAME, owner=rec.uid)
        await self._send_events([report])

    async def _report_unstarted(self, spec: w.JobSpec, state: str, reason: str) -> None:
        """Tell the master at once that an attempt never started: ``lost`` (not the job's
        fault: the master requeues it) or ``failed_to_start`` (the job's own error)."""
        await self._send_events(
            [
                w.JobReport(
                    job_id=spec.job_id,
                    attempt=spec.attempt,
                    state=state,  # type: ignore[arg-type]
                    reason=reason,
                    end_kind="lost" if state == "lost" else "error",
                    ended_at=time.time(),
                )
            ]
        )

    def _mark_gpus(self, gpus: list[int], busy: bool, pid: int | None = None) -> None:
        set_busy = getattr(self.probe, "set_busy", None)
        if set_busy is None:
            return
        for g in gpus:
            with contextlib.suppress(Exception):
                set_busy(g, busy, pid=pid) if busy else set_busy(g, False)

    async def _send_events(self, reports: list[w.JobReport]) -> bool:
        try:
            await self.link.send_events(reports)
            return True
        except errors.MlsmError as exc:
            log.warning(
                "could not report job events now (%s); the next heartbeat carries them", exc
            )
            return False

    # ---------------------------------------------------------------- jobs
    def _adopt(self) -> None:
        for rec in self.state.records():
            runtime = self.runtimes.get(rec.runtime) or self.runtimes.get("process")
            if rec.runtime == "docker" and "docker" not in self.runtimes:
                log.warning(
                    "job %s ran in Docker, which is unavailable now; reporting it lost", rec.job_id
                )
                self._ended(
                    rec,
                    w.JobReport(
                        job_id=rec.job_id,
                        attempt=rec.attempt,
                        state="lost",
                        end_kind="lost",
                        reason="Docker became unavailable while the agent was down",
                    ),
                )
                continue
            assert runtime is not None
            try:
                got = runtime.adopt(rec)
            except Exception as exc:
                got = w.JobReport(
                    job_id=rec.job_id,
                    attempt=rec.attempt,
                    state="lost",
                    end_kind="lost",
                    reason=f"could not re-adopt: {exc}",
                )
            spec = w.JobSpec(job_id=rec.job_id, attempt=rec.attempt, argv=["?"])
            self.shipper.watch(rec.job_id, rec.attempt, Path(rec.job_dir) / LOG_NAME, owner=rec.uid)
            if isinstance(got, w.JobReport):
                self._ended(rec, got)
            else:
                report = w.JobReport(
                    job_id=rec.job_id,
                    attempt=rec.attempt,
                    state="running",
                    pid=rec.pid,
                    container_id=rec.container_id,
                    started_at=rec.started_at,
                )
                self.jobs[rec.job_id] = _Running(got, spec, report)
                log.info("re-adopted job %s (attempt %s)", rec.job_id, rec.attempt)

    def _ended(self, rec: AdoptRecord, final: w.JobReport) -> None:
        """Keep a finished job's report until the master has it and its log."""
        self._finished.append((rec, final))

    async def _job_loop(self) -> None:
        while not self.stopping.is_set():
            for jid, r in list(self.jobs.items()):
                final = await asyncio.to_thread(r.handle.poll)
                if final is not None:
                    del self.jobs[jid]
                    self._mark_gpus(r.spec.gpus, False)
                    self._finished.append((r.handle.record, final))
            if self._finished:
                await self._report_finished()
            await self._sleep(JOB_CHECK_S)

    async def _report_finished(self) -> None:
        # Entries leave the list only once delivered, so a heartbeat sent meanwhile still
        # lists the job (see _job_reports).
        for item in list(self._finished):
            rec, final = item
            first_try = self._finish_tries.setdefault(rec.job_id, time.monotonic())
            flushed = await self.shipper.flush(rec.job_id, timeout_s=LOG_FLUSH_S)
            if not flushed and time.monotonic() - first_try < FINAL_WAIT_MAX_S:
                continue  # the end goes after the whole log, so a follower misses nothing
            final.log_size = self.shipper.offset(rec.job_id) or 0
            if await self._send_events([final]):
                self._finished.remove(item)
                self._finish_tries.pop(rec.job_id, None)
                self.shipper.forget(rec.job_id)
                self.state.remove(rec.job_id)
        if self._finished:
            await self._sleep(backoff(1))

    async def _log_loop(self) -> None:
        last_save = time.monotonic()
        while not self.stopping.is_set():
            with contextlib.suppress(Exception):
                await self.shipper.pump_once()
            if time.monotonic() - last_save > STATE_SAVE_S:
                last_save = time.monotonic()
                self.state.save()
            await self._sleep(LOG_PUMP_S)

    async def _send_log(self, job_id: int, attempt: int, offset: int, data: bytes) -> int:
        try:
            ack = await self.link.send_log(
                w.LogChunk(job_id=job_id, attempt=attempt, offset=offset, data=data)
            )
        except errors.PermissionDenied as exc:
            # The master no longer takes this job's log from this node (the attempt was
            # moved elsewhere): it stays in output.log here; stop resending it forever.
            log.warning(
                "job %s: the master refuses its log (%s); kept on this node only",
                job_id,
                exc.message,
            )
            return offset + len(data)
        return int(ack.next_offset)

    # ---------------------------------------------------------------- datasets
    async def _scan_loop(self) -> None:
        await self.registered.wait()
        while not self.stopping.is_set():
            full = self._want_full
            try:
                report = await asyncio.to_thread(self.scanner.scan, full)
                if report.full or report.upsert or report.removed:
                    await self.link.send_datasets(report)
                self._want_full = False
            except errors.MlsmError as exc:
                log.warning("could not report datasets (%s); rescanning fully later", exc)
                self._want_full = True
            except Exception:
                log.exception("dataset scan failed")
            await self._sleep(SCAN_INTERVAL_S)
