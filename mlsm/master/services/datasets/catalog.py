"""The dataset catalog: what data lives on which node.

Agents report deltas of their dataset roots (:class:`~mlsm.wire.agent.DatasetReport`); the
same name on two nodes is two copies of one dataset. Metadata people edit (description,
tags, owner) lives on the dataset, sizes and paths on each copy. The scheduler asks
:meth:`DatasetCatalog.holders` which nodes hold which names, the launcher
:meth:`~DatasetCatalog.path_on` for the path a job gets in ``MLSM_DATASET_<NAME>``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import delete, select

from mlsm.errors import NotFound, PermissionDenied
from mlsm.master.db import Database
from mlsm.master.db.models import Dataset as DatasetRow
from mlsm.master.db.models import DatasetCopy
from mlsm.master.db.models import Job as JobRow
from mlsm.master.security import Principal
from mlsm.master.services.livenode import LiveNode
from mlsm.master.services.nodes import NodeRegistry
from mlsm.wire import agent as w
from mlsm.wire import api

#: Jobs in these states hold on to the datasets they name (a delete may be refused).
HOLDING_JOB_STATES = ("queued", "held", "assigned", "running")
USED_BY_SCAN = 5000  # the latest jobs a dataset's "used by" list looks through
USED_BY_SHOWN = 50


class DatasetCatalog:
    def __init__(self, db: Database, nodes: NodeRegistry) -> None:
        self.db = db
        self.nodes = nodes
        # node id -> name -> path; the scheduler's view, rebuilt from the database at start.
        self._where: dict[int, dict[str, str]] = {}

    async def load(self) -> None:
        async with self.db.session() as s:
            for c in (await s.execute(select(DatasetCopy))).scalars():
                self._where.setdefault(c.node_id, {})[c.name] = c.path

    def holders(self) -> dict[int, set[str]]:
        return {nid: set(names) for nid, names in self._where.items()}

    def path_on(self, node_id: int, name: str) -> str | None:
        return self._where.get(node_id, {}).get(name)

    def held_elsewhere(self, name: str, node_id: int) -> bool:
        """Whether a schedulable node other than ``node_id`` holds ``name``."""
        return any(
            nid != node_id
            and name in names
            and (n := self.nodes.nodes.get(nid)) is not None
            and self.nodes.schedulable(n)
            for nid, names in self._where.items()
        )

    def withdraw(self, node_id: int, name: str) -> None:
        """No new job is placed on this copy (it is being deleted)."""
        self._where.get(node_id, {}).pop(name, None)

    def restore(self, node_id: int, name: str, path: str) -> None:
        """A failed delete: the copy is still there, so the scheduler may use it again."""
        self._where.setdefault(node_id, {})[name] = path

    async def apply_report(self, node: LiveNode, report: w.DatasetReport) -> None:
        now = time.time()
        async with self.db.transaction() as s:
            if report.full:
                await s.execute(delete(DatasetCopy).where(DatasetCopy.node_id == node.id))
                self._where[node.id] = {}
            elif report.removed:
                await s.execute(
                    delete(DatasetCopy).where(
                        DatasetCopy.node_id == node.id, DatasetCopy.path.in_(report.removed)
                    )
                )
                where = self._where.setdefault(node.id, {})
                for name in [n for n, p in where.items() if p in set(report.removed)]:
                    del where[name]
            known = set((await s.execute(select(DatasetRow.name))).scalars())
            for e in report.upsert:
                row = (
                    await s.execute(
                        select(DatasetCopy).where(
                            DatasetCopy.node_id == node.id, DatasetCopy.path == e.path
                        )
                    )
                ).scalar_one_or_none()
                if row is None:
                    row = DatasetCopy(node_id=node.id, path=e.path, name=e.name, root=e.root)
                    s.add(row)
                row.size, row.files, row.modified, row.top = (
                    e.size,
                    e.files,
                    e.modified,
                    list(e.top),
                )
                row.digest = e.digest  # None once the content changed since it was hashed
                if e.name not in known:
                    s.add(DatasetRow(name=e.name, created_at=now))
                    known.add(e.name)
                self._where.setdefault(node.id, {})[e.name] = e.path
        node.datasets_digest = report.catalog_digest or node.datasets_digest
        if report.upsert or report.removed or report.full:
            self.nodes.announce_change(shape=True)

    async def query(self, node: str | None = None) -> list[api.Dataset]:
        async with self.db.session() as s:
            metas = {d.name: d for d in (await s.execute(select(DatasetRow))).scalars()}
            copies = (
                (await s.execute(select(DatasetCopy).order_by(DatasetCopy.name))).scalars().all()
            )
        return self._assemble(metas, copies, node)

    def _assemble(
        self,
        metas: dict[str, DatasetRow],
        copies: Sequence[DatasetCopy],
        node: str | None,
        used: dict[str, list[int]] | None = None,
    ) -> list[api.Dataset]:
        out: dict[str, api.Dataset] = {}
        now = time.time()
        for c in copies:
            n = self.nodes.nodes.get(c.node_id)
            if n is None or (node and n.name != node):
                continue
            m = metas.get(c.name)
            d = out.get(c.name)
            if d is None:
                d = out[c.name] = api.Dataset(
                    name=c.name,
                    description=m.description if m else "",
                    tags=list(m.tags) if m else [],
                    owner=m.owner if m else "",
                    used_by=(used or {}).get(c.name, []),
                )
            d.copies.append(
                api.DatasetCopy(
                    node=n.name,
                    path=c.path,
                    size=c.size,
                    files=c.files,
                    modified=c.modified,
                    digest=c.digest,
                    top=list(c.top or []),
                    node_state=self.nodes.state_of(n, now),
                )
            )
        return sorted(out.values(), key=lambda d: d.name)

    async def show(self, name: str) -> api.Dataset:
        async with self.db.session() as s:
            metas = {
                d.name: d
                for d in (
                    await s.execute(select(DatasetRow).where(DatasetRow.name == name))
                ).scalars()
            }
            copies = (
                (await s.execute(select(DatasetCopy).where(DatasetCopy.name == name)))
                .scalars()
                .all()
            )
            jobs = (
                await s.execute(
                    select(JobRow.id, JobRow.spec).order_by(JobRow.id.desc()).limit(USED_BY_SCAN)
                )
            ).all()
        used = [jid for jid, spec in jobs if name in spec.datasets][:USED_BY_SHOWN]
        found = self._assemble(metas, copies, None, {name: used})
        if not found:
            raise NotFound(f"no dataset named {name!r}")
        return found[0]

    async def update(self, p: Principal, name: str, body: api.DatasetUpdate) -> api.Dataset:
        async with self.db.transaction() as s:
            row = (
                await s.execute(select(DatasetRow).where(DatasetRow.name == name))
            ).scalar_one_or_none()
            if row is None:
                raise NotFound(f"no dataset named {name!r}")
            if not p.is_admin and row.owner != p.name:
                raise PermissionDenied(
                    f"only the owner of {name} ({row.owner or 'nobody'}) and admins edit it"
                )
            if body.owner is not None and not p.is_admin:
                raise PermissionDenied("only admins change a dataset's owner")
            if body.description is not None:
                row.description = body.description
            if body.tags is not None:
                row.tags = sorted(set(body.tags))
            if body.owner is not None:
                row.owner = body.owner
        return await self.show(name)

    async def needed_by(self, name: str, node: LiveNode) -> list[int]:
        """The jobs that need the copy of ``name`` on ``node``: they run there, or they wait
        and no other schedulable node holds it."""
        async with self.db.session() as s:
            rows = (
                await s.execute(
                    select(JobRow.id, JobRow.state, JobRow.node, JobRow.spec).where(
                        JobRow.state.in_(HOLDING_JOB_STATES)
                    )
                )
            ).all()
        elsewhere = self.held_elsewhere(name, node.id)
        needing = []
        for jid, state, where, spec in rows:
            if name not in spec.datasets:
                continue
            if state in ("assigned", "running"):
                if where == node.name:
                    needing.append(jid)
            elif not elsewhere:
                needing.append(jid)
        return sorted(needing)
