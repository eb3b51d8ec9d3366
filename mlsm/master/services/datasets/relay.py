"""A dataset copy's bytes: directly between the agents when the target can reach the source,
else through the master: the target pulls, the source pushes, through a relay pipe
(:mod:`mlsm.master.services.bulk`), with bounded memory and nothing on disk.

**Direct offers** (``what="direct"``): the master opens a listener on the source for the
transfer (``BulkListen`` through a pipe, with a fresh random session key, the target's node
id and certificate, and an expiry :data:`DIRECT_SESSION_S` ahead) and answers the target
with a :class:`~mlsm.wire.bulk.DirectOffer`: the source's addresses and certificate (from
its node info: the target pins it), the port, and one ticket
(:class:`mlsm.bulk.tickets.TicketIssuer`: single-use serial, expiry, bound to the
transfer, the source spec and the target node). Every connection needs a new offer, so
every ticket passes the same checks as a relayed pull (a copy in progress to that node).
A listener is reused for further tickets until one ticket's life (``bulk_ticket_ttl``)
before it closes. A
source or target without a certificate in its node info gets a 409 in words: the target
then uses the relay.

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

import time
from dataclasses import dataclass

import msgspec

from mlsm.bulk.tickets import TICKET_TTL_S, TicketIssuer, new_key
from mlsm.errors import Conflict, PermissionDenied, UnavailableError, ValidationError
from mlsm.master.services.bulk import Pipe, Pipes
from mlsm.master.services.datasets.transfers import Transfers
from mlsm.master.services.livenode import LiveNode
from mlsm.master.services.nodes import NodeRegistry
from mlsm.wire import bulk as wb

RELAY_PATH = "via master relay"
DIRECT_SESSION_S = 3600.0  # a source's listener for one transfer lives this long at most
LISTEN_REPLY_MAX = 4096
_encode = msgspec.msgpack.Encoder().encode


@dataclass
class _Session:
    """A source's listener for one transfer, and the tickets for it."""

    issuer: TicketIssuer
    port: int
    src_id: int
    expires_at: float


class CopyRelay:
    def __init__(
        self,
        nodes: NodeRegistry,
        transfers: Transfers,
        pipes: Pipes,
        ticket_ttl: float = TICKET_TTL_S,
    ) -> None:
        """``ticket_ttl``: how long a direct connection's ticket is good for (a setting)."""
        self.ticket_ttl = ticket_ttl
        self.nodes = nodes
        self.transfers = transfers
        self.pipes = pipes
        self._sessions: dict[int, _Session] = {}  # transfer id -> its direct session

    async def pull(self, node: LiveNode, req: wb.BulkPull) -> Pipe | bytes:
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
        spec = live.spec()
        if req.what == "direct":
            if req.fresh:  # the source restarted (its listener is gone): a new one
                self._sessions.pop(live.id, None)
            return _encode(await self._offer(live.id, src, node, spec))
        if req.what == "manifest":
            return await self.pipes.open(
                src,
                wb.BulkManifest,
                source=spec,
                hashes_later=req.hashes_later,
                resume=req.manifest_digest,
            )
        if req.want is None:
            raise ValidationError("a pull of frames needs a want", path="want")
        return await self.pipes.open(
            src, wb.BulkServe, source=spec, want=req.want, manifest_digest=req.manifest_digest
        )

    async def _offer(
        self, transfer_id: int, src: LiveNode, node: LiveNode, spec: wb.SourceSpec
    ) -> wb.DirectOffer:
        """One connection's offer (see the module docstring)."""
        if not src.info.bulk_cert or not src.info.bulk_addresses:
            raise Conflict(f"source node {src.name} offers no direct path (no certificate)")
        if not node.info.bulk_cert:
            raise Conflict(f"node {node.name} has no certificate for the direct path")
        for tid in [t for t in self._sessions if self.transfers.live(t) is None]:
            del self._sessions[tid]  # its transfer ended
        now = time.time()
        sess = self._sessions.get(transfer_id)
        if sess is None or sess.src_id != src.id or sess.expires_at - now < self.ticket_ttl:
            key = new_key()
            expires_at = now + DIRECT_SESSION_S
            pipe = await self.pipes.open(
                src,
                wb.BulkListen,
                transfer_id=transfer_id,
                source=spec,
                target_node=node.id,
                target_cert=node.info.bulk_cert,
                key=key.hex(),
                expires_at=expires_at,
            )
            try:
                answer = await pipe.read_all(LISTEN_REPLY_MAX)
            finally:
                pipe.close()
            try:
                port = wb.decode_listen_reply(answer).port
            except (msgspec.DecodeError, msgspec.ValidationError):
                raise Conflict(f"source node {src.name} gave no port to listen on") from None
            issuer = TicketIssuer(key, transfer_id, str(spec), ttl_s=self.ticket_ttl)
            sess = _Session(issuer, port, src.id, expires_at)
            self._sessions[transfer_id] = sess
        t = sess.issuer.issue(node.id)
        return wb.DirectOffer(
            addresses=list(src.info.bulk_addresses),
            port=sess.port,
            cert=src.info.bulk_cert,
            ticket=wb.WireTicket(
                transfer_id=t.transfer_id,
                target_node=t.target_node,
                source=t.source,
                serial=t.serial,
                expires_at=t.expires_at,
                mac=t.mac,
            ),
        )
