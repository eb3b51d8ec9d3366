"""The agent: one process per server. Joins once, then heartbeats, long-polls for commands,
runs jobs (through its :class:`~agent.supervisor.JobSupervisor`), ships their logs and
reports their ends, and scans its dataset roots.

:class:`Agent` wires the parts together and runs the loops that talk to the master. Every
loop survives the master being away: calls are retried with capped exponential backoff and
jitter while sampling goes on, and the node is online again within one interval of the
master's return. SIGTERM stops the agent cleanly and leaves jobs running; a restarted agent
re-adopts them from its state file.

Over 400 lines, as one piece: the loops that talk to the master (join, heartbeat, command
poll) share the registration, backoff and node-info state kept here; each feature's own
work lives in its package (agent.supervisor, agent.outputs, agent.bulk, agent.datasets,
agent.codecache), and only its wiring is here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.bulk.direct import Identity, local_addresses
from agent.bulk.service import BulkCommands
from agent.bulk.sources import path_resolver
from agent.channels import ChannelCommands
from agent.codecache import CodeCache
from agent.collectors import AsyncGpuSampler, HostCollector, make_probe
from agent.fence import LeaseFence
from agent.link import MasterLink, is_auth_failure
from agent.logship import LogShipper, send_through
from agent.outputs.hygiene import NodeOutputs
from agent.pacing import backoff, env_seconds, nap
from agent.projects import ProjectCommands, project_resolver
from agent.runtimes.accounts import (
    data_dir_mode,
    default_account_ok,
    own_account,
    regular_accounts,
    switches_accounts,
)
from agent.runtimes.base import RuntimeContext
from agent.runtimes.registry import Runtimes
from agent.state import AgentState
from agent.supervisor import JobSupervisor
from mlsm import PROTOCOL_VERSION, __version__, errors
from mlsm.wire import agent as w
from mlsm.wire import code as wc
from mlsm.wire.outputs import NodeDisk

if TYPE_CHECKING:  # the dataset code loads only on a node with dataset roots
    from agent.datasets.catalog import CatalogReporter
    from agent.datasets.service import DatasetCommands

log = logging.getLogger("mlsm.agent")

POLL_WAIT_S = 25.0
STOP_STARTS_WAIT_S = 5.0  # how long a stopping agent lets the starts under way finish
SCAN_INTERVAL_S = 30.0
ACCOUNTS_CHECK_S = env_seconds("MLSM_ACCOUNTS_CHECK_INTERVAL", 60.0)  # re-read Unix accounts
REFUSED_RETRY_INTERVALS = 4  # a refused heartbeat is retried within this many intervals
INFO_TOLD_INTERVALS = 2  # a runtime change waits this many intervals for the master to hear
INFO_TOLD_POLL_S = 0.2


@dataclass
class AgentConfig:
    master: str
    data_dir: Path
    name: str = ""
    join_token: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    dataset_roots: list[Path] = field(default_factory=list)
    import_roots: list[Path] = field(default_factory=list)  # see agent.bulk.sources.path_resolver
    simulate_gpus: str = ""
    verify: Any = True
    heartbeat_interval: float = 2.0
    default_unix_user: str = ""  # jobs of users with no account here run as this (agent as root)
    single_user: bool = False  # every job runs as the agent's own account, even as root
    code_cache_bytes: int = 10 << 30  # the node cache of shipped code files
    bulk_direct: bool = True  # serve and use the direct path (agent.bulk.direct)


class Agent:
    """One agent process: builds its parts from ``cfg`` and runs the loops that talk to the
    master; jobs are its :class:`JobSupervisor`'s."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        cfg.data_dir.mkdir(
            parents=True, exist_ok=True, mode=data_dir_mode(os.geteuid() == 0, cfg.single_user)
        )
        self.name = cfg.name or socket.gethostname().split(".")[0]
        self.link = MasterLink(cfg.master, cfg.data_dir, verify=cfg.verify)
        self.fence = LeaseFence(cfg.data_dir)
        self.link.on_contact = self.fence.contact
        # The direct path's certificate (agent.bulk.direct): peers pin it through the master.
        self.bulk_identity = Identity.load(cfg.data_dir, self.name) if cfg.bulk_direct else None
        self.state = AgentState(cfg.data_dir / "state.json").load()
        self.host = HostCollector(cfg.data_dir, cfg.dataset_roots, cfg.import_roots)
        probe, self.gpu_error = make_probe(
            cfg.simulate_gpus, cfg.data_dir / "simulated-gpus.json", identity=self.name
        )
        self.probe = probe
        self.sampler = AsyncGpuSampler(probe)
        self.interval = cfg.heartbeat_interval
        self.ctx = RuntimeContext(
            node_name=self.name,
            agent_data=cfg.data_dir,
            runs_as_root=os.geteuid() == 0,
            simulated_gpus=probe.kind == "simulated",
            default_unix_user=cfg.default_unix_user,
            single_user=cfg.single_user,
        )
        self.code = CodeCache(self.link, cfg.data_dir, cfg.code_cache_bytes)
        self.ctx.code = self.code
        self._accounts_checked = time.monotonic()
        self.runtimes = Runtimes(self.ctx)
        self.stopping = asyncio.Event()
        self.registered = asyncio.Event()
        self.shipper = LogShipper(send_through(self.link), state=self.state)
        self.jobs = JobSupervisor(
            link=self.link,
            state=self.state,
            shipper=self.shipper,
            runtimes=self.runtimes,
            probe=probe,
            data_dir=cfg.data_dir,
            stopping=self.stopping,
            runtimes_changed=self._runtimes_changed,
            code=self.code,
        )
        self.done_cmds: set[int] = set()
        self.to_ack: list[int] = []
        # Results out: the disk report, finished jobs' dirs removed, outputs served.
        self.outputs = NodeOutputs(
            cfg.data_dir,
            self.link,
            in_use=self.jobs.in_use,
            on_disk=self._disk_measured,
            stopping=self.stopping,
            snapshots=self.code.snapshot_manifest,
        )
        self.info = self._info()
        self._info_sent = False
        self.seq = 0
        self.last_error = ""
        # What each command type does: jobs here; feature modules add theirs (e.g.
        # agent.datasets.service for imports, copies, deletes and digests).
        self.command_handlers: dict[type, Callable[[Any], Awaitable[None]]] = {
            w.StartJob: self.jobs.take,  # started in a task: the next command is read at once
            w.CancelJob: self.jobs.cancel,
            w.JobNotice: self.jobs.notice,
        }
        # Relay pipes: manifests and frames of the trees this node serves (and later
        # features' listings), pushed to the master on request.
        self.bulk = BulkCommands(self.link, self.bulk_identity, cfg.data_dir)
        self.outputs.install(self.command_handlers, self.bulk)
        self.bulk.install(self.command_handlers)
        projects = ProjectCommands(self.ctx, self.code, self.link)
        self.command_handlers[wc.SyncProject] = projects.sync
        self.command_handlers[wc.RemoveProject] = projects.remove
        self.command_handlers[wc.CopyProject] = projects.copy
        self.bulk.sources.register("project", project_resolver(self.code.agent_data))
        # An admin's import of a directory under this node's import roots to another node.
        self.bulk.sources.register("path", path_resolver(cfg.import_roots))
        # Shells and forwards into running jobs, dialled back to the master on request.
        self.channels = ChannelCommands(self.link, self.jobs.record_of, self.runtimes.docker_client)
        self.channels.install(self.command_handlers)
        # Progress of running transfers (command id -> latest), sent with each heartbeat.
        self.transfers: dict[int, w.TransferProgress] = {}
        self.beat_now = asyncio.Event()  # a transfer ended: heartbeat now, not at the interval
        self.catalog: CatalogReporter | None = None
        self.dataset_commands: DatasetCommands | None = None
        if cfg.dataset_roots:
            self._install_datasets()

    def _install_datasets(self) -> None:
        """Scan and report the dataset roots; take the dataset commands."""
        from agent.bulk.sources import dataset_resolver
        from agent.datasets.catalog import CatalogReporter
        from agent.datasets.scan import DatasetScanner
        from agent.datasets.service import DatasetCommands

        self.catalog = CatalogReporter(DatasetScanner(self.cfg.dataset_roots), self.link)
        commands = DatasetCommands(
            self.cfg.dataset_roots,
            link=self.link,
            catalog=self.catalog,
            transfers=self.transfers,
            data_dir=self.cfg.data_dir,
            identity=self.bulk_identity,
            on_final=self.beat_now.set,
        )
        commands.install(self.command_handlers)
        self.dataset_commands = commands
        self.bulk.sources.register("dataset", dataset_resolver(self.cfg.dataset_roots))

    # ---------------------------------------------------------------- facts
    def _info(self) -> w.NodeInfo:
        info = self.host.info()
        info.agent_version = __version__
        if self.bulk_identity is not None:
            info.bulk_cert = self.bulk_identity.cert_pem
            info.bulk_addresses = local_addresses()
        info.gpu_probe = self.probe.kind
        d = self.probe.describe()
        info.driver_version = d.get("driver_version", "")
        info.cuda_version = d.get("cuda_version", "")
        info.disk = self.outputs.disk
        info.runtimes = self.runtimes.kinds
        info.docker_available = self.runtimes.docker_available
        info.docker_error = self.runtimes.docker_error
        if switches_accounts(self.ctx):
            info.unix_users = regular_accounts()
            if default_account_ok(self.ctx.default_unix_user):
                info.default_unix_user = self.ctx.default_unix_user
        else:
            info.job_account = own_account().name
        return info

    def _refresh_info(self) -> None:
        """The node's facts changed: the next heartbeat carries them."""
        self.info = self._info()
        self._info_sent = False

    def _disk_measured(self, disk: NodeDisk) -> None:
        """A fresh disk report: the next heartbeat carries it in the node info."""
        self.info.disk = disk
        self._info_sent = False

    async def _runtimes_changed(self) -> None:
        """Tell the master the node's runtimes changed; return once a heartbeat carried the
        news (or a few intervals passed), so it hears before anything that depends on it."""
        self._refresh_info()
        told_by = time.monotonic() + INFO_TOLD_INTERVALS * self.interval
        while not self._info_sent and time.monotonic() < told_by:
            if self.stopping.is_set():
                break
            await self._sleep(INFO_TOLD_POLL_S)

    # ---------------------------------------------------------------- run
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        self.jobs.adopt()
        await self._register()
        if self.dataset_commands is not None:
            self.dataset_commands.resume()  # receives an earlier run left unfinished
        tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._command_loop(), name="commands"),
            asyncio.create_task(self.jobs.watch(), name="jobs"),
            asyncio.create_task(self.fence.run(self.stopping, self.jobs.stop_lost), name="fence"),
            asyncio.create_task(self.jobs.ship_logs(), name="logs"),
            *self.outputs.tasks(),
        ]
        if self.catalog is not None:
            tasks.append(asyncio.create_task(self._scan_loop(self.catalog), name="datasets"))
        await self.stopping.wait()
        if self.bulk.direct is not None:  # stop serving direct connections
            self.bulk.direct.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.channels.close_all()  # shells end with the agent; their jobs do not
        # Starts under way finish, so a job whose process is up has its record saved.
        await self.jobs.started(timeout=STOP_STARTS_WAIT_S)
        self.state.save()
        await self.link.aclose()
        self.probe.close()
        log.info("agent stopped; %d job(s) keep running and will be re-adopted", self.jobs.running)

    def stop(self) -> None:
        self.stopping.set()

    async def _sleep(self, seconds: float) -> None:
        await nap(self.stopping, seconds)

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
            self.fence.lease = reply.lease
            log.info("joined the master as node %s (id %s)", reply.name, reply.node_id)
            self.registered.set()
            self._info_sent = True
            return

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
            await self._recheck_node()
            hb = await self._heartbeat()
            try:
                reply = await self.link.heartbeat(hb)
            except errors.MlsmError as exc:
                failures += 1
                await self._sleep(self._after_refused_heartbeat(exc, failures))
                continue
            if failures:
                log.info("the master is back after %d failed heartbeat(s)", failures)
            failures = 0
            self._heartbeat_accepted(hb, reply)
            await self._until_next_beat(max(0.0, self.interval - (time.monotonic() - started)))

    async def _until_next_beat(self, seconds: float) -> None:
        """Sleep until the next heartbeat is due, or a transfer ended (:attr:`beat_now`):
        its final report goes at once, so a copy's ``--wait`` ends when the copy does."""
        if not self.beat_now.is_set():
            waiters = {
                asyncio.ensure_future(self.beat_now.wait()),
                asyncio.ensure_future(self.stopping.wait()),
            }
            try:
                await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        self.beat_now.clear()

    async def _heartbeat(self) -> w.Heartbeat:
        """A fresh sample of the node and its jobs; node info only when it changed."""
        gpus, gpu_err = await self.sampler.sample()
        self.jobs.attribute_gpu_processes(gpus)
        host = await asyncio.to_thread(self.host.sample)
        self.seq += 1
        return w.Heartbeat(
            protocol=PROTOCOL_VERSION,
            seq=self.seq,
            sent_at=time.time(),
            info=None if self._info_sent else self.info,
            host=host,
            gpus=gpus,
            gpu_error=gpu_err or self.gpu_error,
            jobs=self.jobs.reports(),
            datasets_digest=self.catalog.digest if self.catalog is not None else "",
            transfers=list(self.transfers.values()),
        )

    def _heartbeat_accepted(self, hb: w.Heartbeat, reply: w.HeartbeatReply) -> None:
        self._info_sent = True
        for t in hb.transfers:  # ended transfers are reported once, then dropped
            if t.state != "running" and self.transfers.get(t.command_id) is t:
                del self.transfers[t.command_id]
        self.interval = reply.heartbeat_interval
        self.fence.lease = reply.lease
        if reply.want_full_catalog and self.catalog is not None:
            self.catalog.want_full()

    def _after_refused_heartbeat(self, exc: errors.MlsmError, failures: int) -> float:
        """Log why a heartbeat failed; returns how long to wait before the next one."""
        if isinstance(exc, errors.Unreachable):
            self._info_sent = False
            # Never slower than the heartbeat itself: a master that comes back must see
            # this node within an interval, long before the lease ends its jobs.
            wait = min(backoff(failures), self.interval)
            log.warning("master unreachable (%s); retrying in %.1f s", exc.message, wait)
            return wait
        wait = backoff(failures)
        if isinstance(exc, errors.ProtocolMismatch):
            log.error("%s", exc.message)
        elif is_auth_failure(exc):
            self._fatal_auth(exc)
        else:  # a busy or failing master: retry well within the lease
            log.warning("heartbeat refused: %s", exc.message)
            wait = min(wait, self.interval * REFUSED_RETRY_INTERVALS)
        return wait

    async def _recheck_node(self) -> None:
        """Notice, now and then, the Docker engine or the Unix accounts changing."""
        if self.runtimes.docker_check_due() and await self.runtimes.check_docker():
            self._refresh_info()
        now = time.monotonic()
        if now - self._accounts_checked >= ACCOUNTS_CHECK_S:
            self._accounts_checked = now
            await self._check_accounts()

    async def _check_accounts(self) -> None:
        """Tell the master when this node's Unix accounts change (a user added, removed)."""
        if not switches_accounts(self.ctx):
            return
        now = await asyncio.to_thread(regular_accounts)
        if now != self.info.unix_users:
            self.info.unix_users = now
            self._info_sent = False
            log.info("Unix accounts changed (%d regular accounts now)", len(now))

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
                if cmd.id not in self.done_cmds:
                    await self._handle(cmd)
                    self.done_cmds.add(cmd.id)
                self.to_ack.append(cmd.id)

    async def _handle(self, cmd: w.Command) -> None:
        handler = self.command_handlers.get(type(cmd))
        if handler is None:
            log.warning("command %s is not handled by this agent", type(cmd).__name__)
            return
        try:
            await handler(cmd)
        except Exception:
            log.exception("command %s failed", cmd.id)

    # ---------------------------------------------------------------- datasets
    async def _scan_loop(self, catalog: CatalogReporter) -> None:
        await self.registered.wait()
        while not self.stopping.is_set():
            try:
                await catalog.report()
            except errors.MlsmError as exc:
                log.warning("could not report datasets (%s); rescanning fully later", exc)
            except Exception:
                log.exception("dataset scan failed")
            await self._sleep(SCAN_INTERVAL_S)
