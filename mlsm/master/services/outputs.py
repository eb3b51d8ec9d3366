"""A job's outputs for people: listed and fetched from its node through relay pipes.

The outputs stay on the node; the master only relays (:mod:`mlsm.master.services.bulk`):
a listing, a manifest or the frames of one want each open a pipe to the job's node, whose
agent reads the job's directory by descriptor and pushes its answer
(:mod:`agent.outputs.serve`). Nothing is staged on the master's disk.

Who: the job's owner and admins (another member: 403, as for its log). Which: a job that
was placed on a node (not yet: 409), whose directory is still there (removed by retention
or a purge: 404 saying when and why). Where: a node that is offline gives one line,
"outputs of job 12 live on gpu-b, which is offline since 10:42" (503 ``node_offline``).
Paths are checked here and again on the node (:func:`mlsm.wire.outputs.check_output_path`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from mlsm.errors import Conflict, NotFound, PermissionDenied
from mlsm.master.db import Database
from mlsm.master.db.models import Job as JobRow
from mlsm.master.security import Principal
from mlsm.master.services.bulk import Pipes, answer_stream
from mlsm.master.services.diskhygiene import offline_line
from mlsm.master.services.jobs.views import may_see_private
from mlsm.master.services.livenode import LiveNode
from mlsm.master.services.nodes import NodeRegistry
from mlsm.wire import outputs as wo
from mlsm.wire.outputs import check_output_path

MAX_LISTING_BYTES = 16 << 20  # a listing's MessagePack (MAX_LISTING_ENTRIES of them)
MAX_MANIFEST_BYTES = 256 << 20  # a manifest of a very large output tree


class OutputsService:
    def __init__(self, db: Database, nodes: NodeRegistry, pipes: Pipes) -> None:
        self.db = db
        self.nodes = nodes
        self.pipes = pipes

    async def _where(self, p: Principal, job_id: int) -> tuple[JobRow, LiveNode]:
        """The job (the caller may read its outputs) and the online node that holds them."""
        async with self.db.session() as s:
            r = await s.get(JobRow, job_id)
        if r is None:
            raise NotFound(f"no job {job_id}")
        if not may_see_private(p, r):
            raise PermissionDenied(
                f"job {job_id} belongs to {r.user}: only its owner and admins read its outputs"
            )
        if not r.node:
            raise Conflict(f"job {job_id} is {r.state} and has not run on a node yet: no outputs")
        if r.outputs_removed_at is not None:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.outputs_removed_at))
            raise NotFound(
                f"the outputs of job {job_id} were removed from {r.node} on {when} "
                f"({r.outputs_removed_why})",
                details={"node": r.node, "removed_at": r.outputs_removed_at},
            )
        node = self.nodes.by_name.get(r.node)
        if node is None:
            raise Conflict(f"node {r.node}, where job {job_id} ran, was removed from the lab")
        if self.nodes.state_of(node) in ("offline", "stale"):
            raise offline_line(f"outputs of job {job_id}", node)
        return r, node

    async def listing(self, p: Principal, job_id: int, path: str) -> wo.OutputListing:
        path = check_output_path(path)
        _, node = await self._where(p, job_id)
        pipe = await self.pipes.open(node, wo.ListOutputs, job_id=job_id, path=path)
        try:
            listing = wo.decode_listing(await pipe.read_all(MAX_LISTING_BYTES))
        finally:
            pipe.close()
        listing.node = node.name
        return listing

    async def manifest(
        self, p: Principal, job_id: int, paths: list[str], *, include_code: bool = False
    ) -> bytes:
        """The MessagePack manifest of ``paths`` (all outputs when empty)."""
        paths = [check_output_path(x) for x in paths]
        r, node = await self._where(p, job_id)
        pipe = await self.pipes.open(
            node,
            wo.OutputsManifest,
            job_id=job_id,
            paths=paths,
            skip_code=_skip_code(r, paths, include_code),
        )
        try:
            return await pipe.read_all(MAX_MANIFEST_BYTES)
        finally:
            pipe.close()

    async def frames(self, p: Principal, job_id: int, req: wo.OutputsFetch) -> AsyncIterator[bytes]:
        """The frame stream answering ``req.want``; the first chunk is awaited before this
        returns, so a refusal is an error answer and not a broken stream."""
        if req.want is None or not req.manifest_digest:
            raise Conflict("a frames request names the manifest's digest and a want")
        paths = [check_output_path(x) for x in req.paths]
        r, node = await self._where(p, job_id)
        pipe = await self.pipes.open(
            node,
            wo.ServeOutputs,
            job_id=job_id,
            paths=paths,
            manifest_digest=req.manifest_digest,
            want=req.want,
            skip_code=_skip_code(r, paths, req.include_code),
        )
        return await answer_stream(pipe)


def _skip_code(r: JobRow, paths: list[str], include_code: bool) -> str:
    """The snapshot whose unchanged files a fetch of all outputs leaves out: the code the
    person shipped is theirs already (paths asked for by name are always sent)."""
    if include_code or paths or r.spec is None:
        return ""
    return r.spec.code or ""
