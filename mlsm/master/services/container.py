"""The master's services, built once and wired here (the one place that knows them all).

:class:`Services` constructs every service with its collaborators and subscribes the node
registry's listeners, in the order they must hear events: the job lifecycle (job reports,
lost nodes), the scheduling loop (a node back, resumed, or with new datasets), then the
dataset transfers (their progress). The app factory builds one and hands it to every route
through Litestar's dependency injection (``services: Services``); :meth:`Services.start`
and :meth:`Services.stop` run in the app's lifespan.

Who owns which table: users and tokens (:class:`UserService`, :class:`AuthService`),
join tokens (:class:`JoinTokens`), nodes and commands (:class:`NodeRegistry`), metric points (:class:`History`),
jobs (:class:`JobService` with the job table and the scheduling loop), usage
(:class:`FairShare`), datasets and dataset copies (:class:`DatasetCatalog`), transfers
(:class:`Transfers`), settings (:class:`SettingsService`), audit (:class:`AuditLog`),
reservations (:class:`Reservations`), job runs (the job table; read by :class:`UsageService`);
the removal marks of finished jobs' directories and logs (:class:`DiskHygiene`); the
event stream (:class:`EventService`: every service records its events through
``services.events.record``), notifications (:class:`NotifyService`) and the idle-GPU
marks of jobs (:class:`IdlePolicy`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from litestar import Litestar

from mlsm.bulk import Store
from mlsm.config import Settings
from mlsm.master.clientaddr import ClientAddresses
from mlsm.master.connections import ConnectionGuard
from mlsm.master.db import Database
from mlsm.master.services.audit import AuditLog
from mlsm.master.services.auth import AuthService
from mlsm.master.services.bulk import Pipes
from mlsm.master.services.channels import Channels
from mlsm.master.services.code import CodeStore, Projects
from mlsm.master.services.datasets import (
    CopyRelay,
    DatasetCatalog,
    DatasetOperations,
    Transfers,
)
from mlsm.master.services.diskhygiene import DiskHygiene
from mlsm.master.services.events.idle import IdlePolicy
from mlsm.master.services.events.notify import NotifyService
from mlsm.master.services.events.stream import EventService
from mlsm.master.services.events.watch import NodeWatch
from mlsm.master.services.joblogs import LogStore
from mlsm.master.services.jobs import (
    Accounts,
    FairShare,
    JobCommands,
    JobLogs,
    JobService,
    JobTable,
    Launcher,
    SchedulingLoop,
)
from mlsm.master.services.jointokens import JoinTokens
from mlsm.master.services.metrics import LabMetrics
from mlsm.master.services.nodes import NodeRegistry
from mlsm.master.services.nodeviews import NodeViews
from mlsm.master.services.outputs import OutputsService
from mlsm.master.services.policy import JobPolicy
from mlsm.master.services.reservations import Reservations
from mlsm.master.services.settings import SettingsService
from mlsm.master.services.telemetry import History
from mlsm.master.services.usage import UsageService
from mlsm.master.services.users import UserService

log = logging.getLogger("mlsm.master")

HOURS = 3600.0


class Services:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        connection_guard: ConnectionGuard | None = None,
        tls_fingerprint: str = "",
    ) -> None:
        self.settings = settings
        self.db = db
        self.client_addresses = ClientAddresses(settings.trusted_proxies)
        self.audit = AuditLog(db, settings.data_path)
        self.events = EventService(db, settings.event_retention_days)
        self.history = History(db, settings.heartbeat_interval, settings.history_retention_days)
        self.nodes = NodeRegistry(db, settings, self.history)
        self.join_tokens = JoinTokens(db, tls_fingerprint)
        self.auth = AuthService(db, settings, self.nodes)
        self.lab_settings = SettingsService(db)
        self.pipes = Pipes(self.nodes, settings.bulk_idle_timeout)
        # datasets
        self.catalog = DatasetCatalog(db, self.nodes)
        self.transfers = Transfers(
            db, self.nodes, self.catalog, lambda: self.lab_settings.current.import_max_bytes
        )
        self.dataset_ops = DatasetOperations(
            self.nodes, self.catalog, self.transfers, self.lab_settings
        )
        self.relay = CopyRelay(
            self.nodes, self.transfers, self.pipes, ticket_ttl=settings.bulk_ticket_ttl
        )
        # jobs
        log_store = LogStore(settings.data_path / "logs")
        self.fair_share = FairShare(settings.fairshare_half_life_hours * HOURS)
        self.table = JobTable(self.fair_share, log_store)
        self.accounts = Accounts(db)
        launcher = Launcher(self.accounts, self.catalog, self.lab_settings)
        self.scheduling = SchedulingLoop(
            db, settings, self.nodes, self.table, self.accounts, self.catalog, launcher
        )
        # code in: the code store and projects
        self.code = CodeStore(
            db,
            Store(settings.data_path / "code", settings.code_store_bytes),
            self.lab_settings,
            self.table,
        )
        self.table.on_final = self.code.release
        self.projects = Projects(
            db, self.nodes, self.code, self.accounts, self.scheduling.kick, self.pipes
        )
        self.scheduling.project_holders = self.projects.holders
        self.jobs = JobService(
            db,
            settings,
            self.nodes,
            self.table,
            JobPolicy(self.lab_settings),
            launcher,
            self.scheduling,
            self.code,
            self.projects,
            self.lab_settings,
        )
        self.job_commands = JobCommands(self.jobs)
        self.scheduling.lab_settings = self.lab_settings
        self.table.node_facts = self._node_facts
        self.job_logs = JobLogs(db, self.table, log_store)
        self.disk = DiskHygiene(db, self.nodes, log_store, self.lab_settings, self.audit)
        self.outputs = OutputsService(db, self.nodes, self.pipes)
        # reservations and usage reports
        self.reservations = Reservations(
            db, self.nodes, self.table, self.lab_settings, self.scheduling.kick
        )
        self.scheduling.holds = self.reservations.holds
        self.usage = UsageService(db, self.nodes, self.table, self.history)
        # events out: node changes as events, notifications, the idle-GPU policy
        self.node_watch = NodeWatch(db, self.nodes, lambda: self.lab_settings.current)
        self.node_watch.unreserved = self.reservations.unreserved_now
        self.notify = NotifyService(db, settings, self.events, lambda: self.lab_settings.current)
        self.idle = IdlePolicy(
            db,
            self.nodes,
            self.history,
            self.table,
            self.jobs,
            self.audit,
            lambda: self.lab_settings.current,
        )
        # people and views
        self.users = UserService(db, on_change=self._user_changed)
        self.node_views = NodeViews(settings, self.nodes, self.table)
        self.node_views.reserved_on = self.reservations.on_node
        self.metrics = LabMetrics(self.nodes, self.table, connection_guard)
        # shells and forwards into running jobs
        self.channels = Channels(
            db,
            self.nodes,
            self.table,
            open_timeout=settings.channel_open_timeout,
            audit=self._audit_channel,
            end_session=self._end_session,
        )
        # Node events, in the order their listeners must hear them.
        self.nodes.subscribe(self.jobs)
        self.nodes.subscribe(self.scheduling)
        self.nodes.subscribe(self.transfers)
        self.nodes.subscribe(self.channels)
        self._background: set[asyncio.Task[None]] = set()

    def _node_facts(self, node_id: int, gpus: tuple[int, ...]) -> tuple[str, str, dict[str, str]]:
        """A node's name, the model of the given GPUs and its labels (for usage rows)."""
        n = self.nodes.nodes.get(node_id)
        if n is None:
            return "", "", {}
        names = {g.index: g.name for g in n.gpus}
        model = next((names[i] for i in gpus if names.get(i)), "")
        return n.name, model, dict(n.labels)

    async def _audit_channel(self, **row: Any) -> None:
        """An audit row for a shell or forward (WebSockets pass no request middleware)."""
        import secrets

        await self.audit.append(request_id=secrets.token_hex(8), **row)

    async def _end_session(self, job_id: int, reason: str) -> None:
        """End a session whose last shell left (as the master, so any owner's)."""
        from mlsm.errors import MlsmError
        from mlsm.master.security import Principal

        master = Principal(kind="user", name="mlsm", role="superadmin")
        try:
            await self.jobs.cancel(master, [job_id], reason=reason)
        except MlsmError as exc:  # it ended meanwhile
            log.info("session %d not ended: %s", job_id, exc.message)

    def _user_changed(self, user_id: int) -> None:
        """A user's role, account or cap changed: cached principals go, placement relearns."""
        self.auth.forget_user(user_id)
        self._spawn(self._reload_accounts())

    async def _reload_accounts(self) -> None:
        await self.accounts.load()
        self.scheduling.kick()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def start(self) -> None:
        """Load what the database holds (the schema is current), then run the background
        loops: the node registry's flusher and lease watchdog, and the scheduling loop."""
        await self.audit.load()
        await self.lab_settings.load()
        await self.nodes.load()
        await self.catalog.load()
        await self.transfers.load()
        await self.jobs.load()
        await self.code.load()
        await self.projects.load()
        await self.fair_share.load(self.db)
        await self.accounts.load()
        await self.idle.load()
        await self.reservations.load()
        self._spawn(self.nodes.run_background())
        self._spawn(self.scheduling.run())
        self._spawn(self.disk.run())
        self._spawn(self.node_watch.run())
        self._spawn(self.idle.run())
        self._spawn(self.events.run_pruner())
        await self.notify.start()

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        self.notify.stop()
        try:
            await self.nodes.flush()
            await self.fair_share.flush(self.db, self.table.active.values())
        except Exception:
            log.exception("final flush failed")
        self.audit.close()
        self.code.store.close()


#: Where the app keeps its container (``app.state``), for the code that runs outside
#: dependency injection: the raw ASGI heartbeat handler and the server's signal hook.
STATE_KEY = "services"


def services_of(app: Litestar) -> Services:
    found = app.state[STATE_KEY]
    assert isinstance(found, Services), "the app factory keeps the container in app.state"
    return found
