"""A dataset copy's bytes through the master: the target pulls, the source pushes, through
a relay pipe (:mod:`mlsm.master.services.bulk`), with bounded memory and nothing on disk.

The target agent (running ``BulkReceive``) asks ``POST /agent/v1/bulk/pull`` for the
source's manifest, then for the frames of each want; :meth:`CopyRelay.pull` checks that
the transfer is a copy or move in progress *to that node* (never another node's, never a
cancelled one), opens a pipe to the transfer's source node with ``BulkManifest`` or
``BulkServe`` for ``dataset NAME``, and the route streams the pipe's records back. The
source is named by the transfer, never by the puller. A source that is offline, or goes
away mid-answer, is answered with :class:`~mlsm.errors.UnavailableError`: the target
waits and pulls again (resuming from its journal), so a source agent's restart does not
end the copy.
"""

from __future__ import annotations

from mlsm.errors import Conflict, PermissionDenied, UnavailableError, ValidationError
from mlsm.master.services.bulk import Pipe, Pipes
from mlsm.master.services.datasets.transfers import Transfers
from mlsm.master.services.livenode import LiveNode
from mlsm.master.services.nodes import NodeRegistry
from mlsm.wire import bulk as wb

RELAY_PATH = "via master relay"


class CopyRelay:
    def __init__(self, nodes: NodeRegistry, transfers: Transfers, pipes: Pipes) -> None:
        self.nodes = nodes
        self.transfers = transfers
        self.pipes = pipes

    async def pull(self, node: LiveNode, req: wb.BulkPull) -> Pipe:
        """The pipe answering a target node's pull (see the module docstring)."""
        live = self.transfers.copy(req.transfer_id)
        if live.node_id != node.id:
            raise PermissionDenied(f"transfer {live.id} does not go to node {node.name}")
        if live.cancel_by:
            raise Conflict(f"transfer {live.id} was cancelled by {live.cancel_by}")
        src = self.nodes.nodes.get(live.src_id) if live.src_id is not None else None
        if src is None:
            raise Conflict(f"the source node of transfer {live.id} was removed")
        if self.nodes.state_of(src) == "offline":  # the target waits and pulls again
            raise UnavailableError(
                f"source node {src.name} is offline; the copy resumes when it is back",
                details={"node": src.name},
            )
        spec = wb.SourceSpec(kind="dataset", name=live.dataset)
        if req.what == "manifest":
            return await self.pipes.open(src, wb.BulkManifest, source=spec)
        if req.want is None:
            raise ValidationError("a pull of frames needs a want", path="want")
        return await self.pipes.open(
            src, wb.BulkServe, source=spec, want=req.want, manifest_digest=req.manifest_digest
        )
