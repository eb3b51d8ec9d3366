"""What a job attempt is started with: the accounts it may run as and the agent's StartJob.

:class:`Accounts` caches what the users table says about running jobs (GPU caps, mapped Unix
accounts, who is an admin), read at start and again whenever a user changes.
:class:`Launcher` builds the :class:`~mlsm.wire.agent.JobSpec` an agent gets for one
attempt on one node from the job's row and stored spec.
"""

from __future__ import annotations

from sqlalchemy import select

from mlsm.master.db import Database
from mlsm.master.db.models import Job as JobRow
from mlsm.master.db.models import User
from mlsm.master.services.datasets import DatasetCatalog
from mlsm.master.services.jobs.table import retries_left
from mlsm.master.services.livenode import LiveNode
from mlsm.master.services.settings import SettingsService
from mlsm.wire import agent as w

#: Seconds between SIGTERM and SIGKILL when a job is cancelled or its node removed.
KILL_GRACE_S = 10.0


class Accounts:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.caps: dict[str, int] = {}  # user -> GPU cap
        self.unix: dict[str, str] = {}  # user -> mapped Unix account
        self.admins: frozenset[str] = frozenset()  # may fall back to an agent's own account

    async def load(self) -> None:
        async with self.db.session() as s:
            users = (
                await s.execute(select(User.username, User.gpu_cap, User.unix_user, User.role))
            ).all()
        self.caps = {u: c for u, c, _, _ in users if c is not None}
        self.unix = {u: x for u, _, x, _ in users if x}
        self.admins = frozenset(u for u, _, _, r in users if r in ("admin", "superadmin"))

    @property
    def mapped(self) -> frozenset[str]:
        """Users a node without their account by name may still run jobs for."""
        return frozenset(self.unix) | self.admins


class Launcher:
    def __init__(
        self, accounts: Accounts, catalog: DatasetCatalog, lab_settings: SettingsService
    ) -> None:
        self.accounts = accounts
        self.catalog = catalog
        self.lab_settings = lab_settings

    def start_spec(self, r: JobRow, node: LiveNode, gpus: tuple[int, ...]) -> w.JobSpec:
        spec = r.spec
        datasets = {}
        for name in spec.datasets:
            path = self.catalog.path_on(node.id, name)
            if path:
                datasets[name] = path
        by_index = {g.index: g for g in node.gpus}
        uuids = [by_index[g].uuid for g in gpus if g in by_index and by_index[g].uuid]
        return w.JobSpec(
            job_id=r.id,
            attempt=r.attempt,
            name=r.name,
            user=r.user,
            unix_user=self.accounts.unix.get(r.user, ""),
            admin=r.user in self.accounts.admins,
            argv=spec.argv,
            env=spec.env,
            workdir=spec.workdir,
            env_kind=spec.env_kind,
            venv=spec.venv,
            conda=spec.conda,
            image=spec.image,
            mounts=spec.mounts,
            network=node.docker_network,
            keep_container=spec.keep_container,
            gpus=list(gpus),
            gpu_uuids=uuids,
            cpus=spec.cpus,
            mem_bytes=spec.mem_bytes,
            timeout_s=spec.timeout_s,
            kill_grace_s=KILL_GRACE_S,
            array_index=r.array_index,
            datasets=datasets,
            # Where a member's mounts must lie once the node resolves their symlinks.
            mount_roots=(
                list(self.lab_settings.current.mount_allow) if spec.member_mounts else None
            ),
            code=spec.code,
            project=f"{r.user}/{spec.project}" if spec.project else "",
            stop_when_lost=retries_left(r),
        )
