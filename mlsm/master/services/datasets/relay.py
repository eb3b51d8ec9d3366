"""The copy relay: a source node uploads a dataset to the master's spool, the target fetches it.

The source uploads the manifest and then the packed dataset in chunks, idempotent by offset
(a chunk that starts past what the spool holds is answered with the current size; bytes the
spool already has are skipped). Once both parts are whole the target gets
:class:`~mlsm.wire.agent.ReceiveDataset` and reads them back by offset. The data part is
bounded by the lab's ``import_max_bytes``, the manifest by :data:`MANIFEST_MAX_BYTES`.
"""

from __future__ import annotations

import time

from mlsm.errors import Conflict, NotFound, PayloadTooLarge, PermissionDenied
from mlsm.master.db import Database
from mlsm.master.db.models import Transfer as TransferRow
from mlsm.master.services.datasets.spool import RelaySpool
from mlsm.master.services.datasets.transfers import LiveTransfer, Transfers
from mlsm.master.services.livenode import LiveNode
from mlsm.master.services.settings import SettingsService
from mlsm.wire import agent as w

MANIFEST_MAX_BYTES = 256 << 20  # a million files' manifest is ~100 MiB of MessagePack


class CopyRelay:
    def __init__(
        self,
        db: Database,
        transfers: Transfers,
        spool: RelaySpool,
        lab_settings: SettingsService,
    ) -> None:
        self.db = db
        self.transfers = transfers
        self.spool = spool
        self.lab_settings = lab_settings

    async def upload(self, node: LiveNode, chunk: w.TransferChunk) -> w.TransferAck:
        """A source node's chunk of a copy (manifest or packed data), idempotent by offset."""
        if self.transfers.live(chunk.transfer_id) is None:  # ended: tell its sender why
            async with self.db.session() as s:
                row = await s.get(TransferRow, chunk.transfer_id)
            if row is None or row.kind not in ("copy", "move") or row.src_node != node.name:
                raise NotFound(f"no copy or move {chunk.transfer_id} from node {node.name}")
            state = row.state  # a row without a live transfer that is not final has failed
            return w.TransferAck(
                transfer_id=row.id,
                next_offset=0,
                state="failed" if state == "pending" or state == "running" else state,
                message=row.message,
            )
        live = self.transfers.copy(chunk.transfer_id)
        if live.src_id != node.id:
            raise PermissionDenied(f"transfer {live.id} does not read from node {node.name}")
        async with live.lock:
            part = chunk.part
            size = live.sizes.get(part, 0)
            if not live.running or part in live.closed or chunk.offset > size:
                return _ack(live, size)
            skip = size - chunk.offset
            data = chunk.data[skip:] if skip < len(chunk.data) else b""
            limit = self._part_limit(part)
            if limit and size + len(data) > limit:
                await self.transfers.end(
                    live,
                    "failed",
                    f"{live.src_node} -> {live.node}: {live.dataset} is over the limit of "
                    f"{limit} bytes (lab setting import_max_bytes)",
                )
                raise PayloadTooLarge(live.message)
            if data:
                await self.spool.write(live.id, part, size, data)
                size += len(data)
                live.sizes[part] = size
                if not live.running:  # cancelled while writing: no spool may remain
                    self.spool.drop(live.id)
                    return _ack(live, size)
            if part == "data":
                live.done = size
                elapsed = max(time.monotonic() - live.phase_started, 1e-6)
                live.rate = size / elapsed
                live.message = f"{live.src_node} -> {live.node}: uploading from {live.src_node}"
            if chunk.eof:
                if chunk.offset + len(chunk.data) != size:
                    await self.transfers.end(
                        live, "failed", f"the {part} upload ended at a wrong offset"
                    )
                    return _ack(live, size)
                live.closed.add(part)
                if part == "manifest":
                    live.digest = chunk.digest
                else:
                    await self._start_receive(live)
            return _ack(live, size)

    def _part_limit(self, part: str) -> int:
        return (
            MANIFEST_MAX_BYTES if part == "manifest" else self.lab_settings.current.import_max_bytes
        )

    async def _start_receive(self, live: LiveTransfer) -> None:
        if "manifest" not in live.closed:
            await self.transfers.end(
                live, "failed", "the source sent the dataset before its manifest"
            )
            return
        live.phase = "receive"
        live.phase_started = time.monotonic()
        live.total = live.sizes.get("data", 0)
        live.done, live.rate = 0, 0.0
        live.message = f"{live.src_node} -> {live.node}: queued on {live.node}"
        await self.transfers.command(
            live,
            "receive",
            live.node_id,
            w.ReceiveDataset,
            transfer_id=live.id,
            name=live.dataset,
            manifest_digest=live.digest,
            total_bytes=live.total,
        )
        await self.transfers.save(live)

    async def fetch(self, node: LiveNode, req: w.TransferFetch) -> w.TransferData:
        """A target node reads a spooled copy from an offset."""
        if self.transfers.live(req.transfer_id) is None:
            raise Conflict(f"transfer {req.transfer_id} is not in progress (ended or cancelled)")
        live = self.transfers.copy(req.transfer_id)
        if live.node_id != node.id:
            raise PermissionDenied(f"transfer {live.id} does not go to node {node.name}")
        if live.cancel_by:
            raise Conflict(f"transfer {live.id} was cancelled by {live.cancel_by}")
        if req.part not in live.closed or live.phase != "receive":
            raise Conflict(f"the {req.part} of transfer {live.id} is not uploaded yet")
        size = live.sizes.get(req.part, 0)
        data = await self.spool.read(
            live.id, req.part, req.offset, min(req.max_bytes, max(size - req.offset, 0))
        )
        return w.TransferData(
            transfer_id=live.id,
            offset=req.offset,
            data=data,
            eof=req.offset + len(data) >= size,
            size=size,
        )


def _ack(live: LiveTransfer, size: int) -> w.TransferAck:
    return w.TransferAck(
        transfer_id=live.id,
        next_offset=size,
        state=live.state if live.state != "pending" else "running",
        message=live.message if not live.running else "",
    )
