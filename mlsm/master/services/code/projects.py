"""Projects: a user's named, persistent working tree on one node (``mlsm project push``).

A push goes through the code store like a submit's snapshot (offer, upload what is
missing: :mod:`~mlsm.master.services.code.store`), then the node is told to bring its tree
``<agent data>/projects/<user>/<name>`` up to that snapshot (:class:`~mlsm.wire.code.SyncProject`:
the agent fetches what its cache lacks and changes only the files that differ). The agent
says how it went (:class:`~mlsm.wire.code.ProjectReport`); a project whose tree is ready
is where ``mlsm submit --project NAME`` runs, and the scheduler places such jobs on a
node that holds it (:meth:`Projects.holders`), as it does for datasets.

Members see and change their own projects; admins everyone's. Each row is one (user,
name, node): the same project may live on several nodes.

**Copies between nodes** (:meth:`Projects.copy`, admins only): the target node is sent
:class:`~mlsm.wire.code.CopyProject` with a random copy id, and pulls the source node's
tree of the project (source kind ``project USER/NAME`` of the agent's bulk service) through
relay pipes (:meth:`Projects.pull`: the manifest, then the frames of each want), into the
same in-place sink a push uses. Only the copy's target node may pull with its id, only
while the copy is open (until the target reports), and only that one project of the
source node. Nothing is staged on the master: the pipe's memory is bounded.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import delete, select

from mlsm import COMMAND_SINCE
from mlsm.bulk import decode_want
from mlsm.errors import Conflict, NotFound, PermissionDenied, ValidationError
from mlsm.master.db import Database
from mlsm.master.db.models import ProjectRow, User
from mlsm.master.security import Principal
from mlsm.master.services.bulk import Pipes, answer_stream
from mlsm.master.services.nodes import NodeRegistry
from mlsm.wire import bulk as wb
from mlsm.wire import code as wc

if TYPE_CHECKING:
    from mlsm.master.services.code.store import CodeStore
    from mlsm.master.services.jobs.launch import Accounts


COPY_ID_BYTES = 18  # random bytes of a copy id (the target's pulls name it)
MAX_COPY_MANIFEST_BYTES = wc.MAX_MANIFEST_BYTES


def _push_owner(project_id: int) -> str:
    return f"project:{project_id}"


@dataclass(frozen=True)
class _Copy:
    """An open copy: the target pulls ``spec`` from ``source_id`` for ``project_id``."""

    project_id: int
    source_id: int
    target_id: int
    spec: wb.SourceSpec


class Projects:
    """See the module docstring."""

    def __init__(
        self,
        db: Database,
        nodes: NodeRegistry,
        code: CodeStore,
        accounts: Accounts,
        kick: Callable[[], None],
        pipes: Pipes | None = None,
    ) -> None:
        """``kick`` is called when placement may have changed (the scheduling loop's);
        ``pipes`` carry copies between nodes."""
        self.db = db
        self.nodes = nodes
        self.pipes = pipes
        self._copies: dict[str, _Copy] = {}  # copy id -> the open copy
        self.code = code
        self.accounts = accounts
        self._kick = kick
        self._ready: dict[int, frozenset[str]] = {}  # node id -> "user/name" ready there

    async def load(self) -> None:
        async with self.db.session() as s:
            rows = (await s.execute(select(ProjectRow))).scalars().all()
        self._rebuild(rows)

    def _rebuild(self, rows: Iterable[ProjectRow]) -> None:
        ready: dict[int, set[str]] = {}
        for r in rows:
            if r.state == "ready":
                ready.setdefault(r.node_id, set()).add(f"{r.user}/{r.name}")
        self._ready = {n: frozenset(v) for n, v in ready.items()}

    async def _refresh(self) -> None:
        await self.load()
        self._kick()

    def holders(self) -> dict[int, frozenset[str]]:
        return self._ready

    def _view(self, r: ProjectRow) -> wc.Project:
        node = self.nodes.nodes.get(r.node_id)
        return wc.Project(
            name=r.name,
            user=r.user,
            node=node.name if node else f"#{r.node_id}",
            digest=r.digest,
            files=r.files,
            bytes=r.bytes,
            state=r.state,
            message=r.message,
            updated_at=r.updated_at,
            path=r.path,
        )

    # ---------------------------------------------------------------- people
    async def list(self, p: Principal, *, everyone: bool) -> list[wc.Project]:
        """A member's own projects; an admin's, or everyone's with ``everyone``."""
        q = select(ProjectRow).order_by(ProjectRow.user, ProjectRow.name, ProjectRow.node_id)
        if not (p.is_admin and everyone):
            q = q.where(ProjectRow.user == p.name)
        async with self.db.session() as s:
            rows = (await s.execute(q)).scalars().all()
        return [self._view(r) for r in rows]

    async def push(self, p: Principal, body: wc.ProjectPush) -> wc.Project:
        node = self.nodes.by_name.get(body.node)
        if node is None:
            raise ValidationError(f"no node named {body.node!r}", path="node")
        if node.protocol < COMMAND_SINCE["sync_project"]:
            raise ValidationError(
                f"node {body.node} runs an mlsm agent too old for projects: upgrade it",
                path="node",
            )
        m = await self.code.check_access(p, body.digest)
        now = time.time()
        async with self.db.transaction() as s:
            row = (
                await s.execute(
                    select(ProjectRow).where(
                        ProjectRow.user == p.name,
                        ProjectRow.name == body.name,
                        ProjectRow.node_id == node.id,
                    )
                )
            ).scalar_one_or_none()
            if row is None:
                row = ProjectRow(user=p.name, name=body.name, node_id=node.id, updated_at=now)
                s.add(row)
            row.digest = body.digest
            row.files = m.file_count()
            row.bytes = m.total_bytes()
            row.state = "syncing"
            row.message = ""
            row.updated_at = now
            await s.flush()
            project_id = row.id
            view = self._view(row)
        await self.code.attach(body.digest, m, [], owner=_push_owner(project_id))
        self.code.pushes.add((node.id, body.digest))
        await self.nodes.enqueue(
            node.id,
            wc.SyncProject,
            project_id=project_id,
            user=p.name,
            name=body.name,
            digest=body.digest,
            unix_user=self.accounts.unix.get(p.name, ""),
            admin=p.is_admin,
        )
        await self._refresh()  # a project being synced is not ready for jobs
        return view

    async def remove(self, p: Principal, name: str, node_name: str, user: str) -> wc.Project:
        user = user or p.name
        if user != p.name and not p.is_admin:
            raise PermissionDenied("only admins remove other users' projects")
        node = self.nodes.by_name.get(node_name)
        row = await self._row(user, name, node.id if node else -1)
        if row is None or node is None:
            raise NotFound(f"no project {user}/{name} on node {node_name}")
        async with self.db.transaction() as s:
            live = await s.get(ProjectRow, row.id)
            if live is not None:
                live.state = "removing"
                live.updated_at = time.time()
                row = live
            view = self._view(row)
        await self.nodes.enqueue(node.id, wc.RemoveProject, project_id=row.id, user=user, name=name)
        await self._refresh()
        return view

    async def copy(self, p: Principal, body: wc.ProjectCopy) -> wc.Project:
        """An admin's copy of ``body.user``'s project to another node (see the module
        docstring); the target's row says ``syncing`` until the target reports."""
        if not p.is_admin:
            raise PermissionDenied("only admins copy projects between nodes")
        if self.pipes is None:
            raise Conflict("this master carries no copies between nodes")
        src = self.nodes.by_name.get(body.source)
        dst = self.nodes.by_name.get(body.target)
        if src is None:
            raise ValidationError(f"no node named {body.source!r}", path="source")
        if dst is None:
            raise ValidationError(f"no node named {body.target!r}", path="target")
        if src.id == dst.id:
            raise ValidationError("the source and the target are the same node", path="target")
        row = await self._row(body.user, body.name, src.id)
        if row is None:
            raise NotFound(f"no project {body.user}/{body.name} on node {body.source}")
        if row.state != "ready":
            raise Conflict(
                f"project {body.user}/{body.name} on {body.source} is {row.state}, not ready"
            )
        for node, what in ((src, "source"), (dst, "target")):
            if node.protocol < COMMAND_SINCE["copy_project"]:
                raise ValidationError(
                    f"node {node.name} runs an mlsm agent too old to copy projects: upgrade it",
                    path=what,
                )
            if self.nodes.state_of(node) == "offline":
                raise Conflict(f"node {node.name} is offline", details={"node": node.name})
        now = time.time()
        async with self.db.transaction() as s:
            target = (
                await s.execute(
                    select(ProjectRow).where(
                        ProjectRow.user == body.user,
                        ProjectRow.name == body.name,
                        ProjectRow.node_id == dst.id,
                    )
                )
            ).scalar_one_or_none()
            if target is None:
                target = ProjectRow(user=body.user, name=body.name, node_id=dst.id, updated_at=now)
                s.add(target)
            target.digest = row.digest
            target.files = row.files
            target.bytes = row.bytes
            target.state = "syncing"
            target.message = f"copying from {body.source}"
            target.updated_at = now
            await s.flush()
            project_id = target.id
            view = self._view(target)
        copy_id = secrets.token_urlsafe(COPY_ID_BYTES)
        self._copies = {k: c for k, c in self._copies.items() if c.project_id != project_id}
        self._copies[copy_id] = _Copy(
            project_id,
            src.id,
            dst.id,
            wb.SourceSpec(kind="project", name=f"{body.user}/{body.name}"),
        )
        await self.nodes.enqueue(
            dst.id,
            wc.CopyProject,
            project_id=project_id,
            copy_id=copy_id,
            user=body.user,
            name=body.name,
            source=src.name,
            unix_user=self.accounts.unix.get(body.user, ""),
            admin=await self._is_admin(body.user),
        )
        await self._refresh()
        return view

    async def _is_admin(self, user: str) -> bool:
        async with self.db.session() as s:
            role = (await s.execute(select(User.role).where(User.username == user))).scalar()
        return role == "admin"

    async def pull(self, node_id: int, req: wc.ProjectPull) -> bytes | AsyncIterator[bytes]:
        """A copy's target pulls from the source through a relay pipe: the manifest's
        bytes, or (``what="want"``) the frame stream answering the want, its first chunk
        awaited so a refusal is an error answer and not a broken stream."""
        c = self._copies.get(req.copy_id)
        if c is None or c.target_id != node_id:
            raise PermissionDenied("no open project copy to this node by that id")
        if self.pipes is None:
            raise Conflict("this master carries no copies between nodes")
        src = self.nodes.nodes.get(c.source_id)
        if src is None:
            raise NotFound("the copy's source node was removed from the lab")
        if req.what == "manifest":
            pipe = await self.pipes.open(src, wb.BulkManifest, source=c.spec)
            try:
                return await pipe.read_all(MAX_COPY_MANIFEST_BYTES)
            finally:
                pipe.close()
        if not req.manifest_digest or not req.want:
            raise ValidationError("a frames pull names the manifest's digest and a want")
        pipe = await self.pipes.open(
            src,
            wb.BulkServe,
            source=c.spec,
            want=decode_want(req.want),
            manifest_digest=req.manifest_digest,
        )
        return await answer_stream(pipe)

    async def _row(self, user: str, name: str, node_id: int) -> ProjectRow | None:
        async with self.db.session() as s:
            q = select(ProjectRow).where(
                ProjectRow.user == user, ProjectRow.name == name, ProjectRow.node_id == node_id
            )
            return (await s.execute(q)).scalar_one_or_none()

    async def check_use(self, p: Principal, name: str) -> None:
        """``submit --project NAME``: the submitter must have such a project somewhere."""
        async with self.db.session() as s:
            q = select(ProjectRow.id).where(ProjectRow.user == p.name, ProjectRow.name == name)
            found = (await s.execute(q)).first()
        if found is None:
            raise NotFound(
                f"you have no project named {name!r}; push one first: "
                f"mlsm project push {name} DIR --node NODE"
            )

    # ---------------------------------------------------------------- agents
    async def report(self, node_id: int, rep: wc.ProjectReport) -> None:
        async with self.db.transaction() as s:
            row = await s.get(ProjectRow, rep.project_id)
            if row is None or row.node_id != node_id:
                raise NotFound(f"no project {rep.project_id} on this node")
            self.code.pushes.discard((node_id, row.digest))
            self._copies = {k: c for k, c in self._copies.items() if c.project_id != rep.project_id}
            if rep.state == "removed":
                await s.execute(delete(ProjectRow).where(ProjectRow.id == row.id))
            else:
                row.state = rep.state
                row.message = rep.message
                row.path = rep.path
                if rep.state == "ready":
                    row.files = rep.files
                    row.bytes = rep.bytes
                    if rep.digest:
                        row.digest = rep.digest
                row.updated_at = time.time()
        await asyncio.to_thread(self.code.store.unpin, _push_owner(rep.project_id))
        await self._refresh()
