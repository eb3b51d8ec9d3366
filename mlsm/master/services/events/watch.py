"""Node liveness and full disks as events.

A node's state (online, stale, offline, draining) is derived from its last heartbeat,
held in memory (heartbeats never write the database one by one); so one watcher looks at
every node each :data:`WATCH_INTERVAL_S` and records each change it sees, in one
transaction per pass: ``node.online`` (joined, or back), ``node.stale``, ``node.offline``,
``node.drained`` (an admin drained it), ``node.resumed``. The same pass records
``node.disk_full`` when a disk the agent reports (its data dir, a dataset root) first
goes fuller than the lab's ``node_disk_high_pct``; it is said again only after the disk
went below it. ``node.unreserved_use`` is recorded when a GPU of a reservation that is on
starts being used by someone else (another user's job, or a process mlsm did not start),
once per reservation and GPU until that use stops. What a node looked like when this master started is its starting point
(a master restart records no change); a node that joins later starts as offline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from mlsm.master.db import Database
from mlsm.master.services.events.record import record
from mlsm.master.services.livenode import LiveNode
from mlsm.master.services.nodes import NodeRegistry
from mlsm.wire import api
from mlsm.wire.events import EventKind

log = logging.getLogger("mlsm.master.events")

WATCH_INTERVAL_S = 1.0
WATCHED_DISKS = ("data", "dataset_root")

#: (reservation, its GPUs used by others, their jobs) of reservations that are on now.
Unreserved = Callable[[float], list[tuple[Any, list[int], list[int]]]]


def transition(before: str, after: str) -> EventKind | None:
    """The event of a node going from state ``before`` to ``after`` (None: nothing to say)."""
    if before == after:
        return None
    if after == "draining":
        return "node.drained" if before == "online" else None
    if after == "online":
        return "node.resumed" if before == "draining" else "node.online"
    if after == "stale":
        return "node.stale"
    return "node.offline"


def full_disk(node: LiveNode, high_pct: float) -> tuple[str, float] | None:
    """The first watched disk fuller than ``high_pct`` (its path and percent used)."""
    if high_pct <= 0 or node.host is None:
        return None
    for d in node.host.disks:
        if d.role in WATCHED_DISKS and d.total > 0:
            pct = 100.0 * d.used / d.total
            if pct > high_pct:
                return d.path, pct
    return None


class NodeWatch:
    def __init__(
        self, db: Database, nodes: NodeRegistry, lab_settings: Callable[[], api.LabSettings]
    ) -> None:
        self.db = db
        self.nodes = nodes
        self.lab_settings = lab_settings
        self._states: dict[int, str] = {}
        self._full: dict[int, bool] = {}
        self.unreserved: Unreserved | None = None  # the reservations' view, when wired
        self._flagged: set[tuple[int, int]] = set()  # (reservation id, GPU) said already

    def prime(self) -> None:
        """The nodes as this master found them at start: the starting point. A node that
        joins later starts from "offline", so its first heartbeat is ``node.online``."""
        high = self.lab_settings().node_disk_high_pct
        for n in self.nodes.nodes.values():
            self._states[n.id] = self.nodes.state_of(n)
            self._full[n.id] = full_disk(n, high) is not None

    async def run(self) -> None:
        self.prime()
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("node watch pass failed; carrying on")
            await asyncio.sleep(WATCH_INTERVAL_S)

    def _unreserved_changes(self) -> list[tuple[LiveNode, EventKind, str, dict[str, Any]]]:
        if self.unreserved is None:
            return []
        out: list[tuple[LiveNode, EventKind, str, dict[str, Any]]] = []
        now_flagged: set[tuple[int, int]] = set()
        for r, gpus, jobs in self.unreserved(time.time()):
            node = self.nodes.by_name.get(r.node)
            for g in gpus:
                now_flagged.add((r.id, g))
                if node is None or (r.id, g) in self._flagged:
                    continue
                holder = r.user or "maintenance"
                by = f"job {', '.join(map(str, jobs))}" if jobs else "a process mlsm did not start"
                out.append(
                    (
                        node,
                        "node.unreserved_use",
                        f"node {r.node}: GPU {g}, reserved for {holder} (reservation {r.id}), "
                        f"is used by {by}",
                        {"reservation": r.id, "reserved_for": r.user, "gpu": g, "jobs": jobs},
                    )
                )
        self._flagged = now_flagged
        return out

    async def check(self) -> None:
        """One pass: record every change since the last."""
        changes: list[tuple[LiveNode, EventKind, str, dict[str, Any]]] = []
        high = self.lab_settings().node_disk_high_pct
        for n in list(self.nodes.nodes.values()):
            state = self.nodes.state_of(n)
            before = self._states.get(n.id, "offline")
            self._states[n.id] = state
            full = full_disk(n, high)
            was_full = self._full.get(n.id, False)
            self._full[n.id] = full is not None
            kind = transition(before, state)
            if kind is not None:
                changes.append(
                    (n, kind, f"node {n.name} is {state}", {"state": state, "was": before})
                )
            if full is not None and not was_full:
                path, pct = full
                changes.append(
                    (
                        n,
                        "node.disk_full",
                        f"node {n.name}: {path} is {pct:.0f}% full (threshold {high:g}%)",
                        {"path": path, "used_pct": round(pct, 1), "threshold_pct": high},
                    )
                )
        changes.extend(self._unreserved_changes())
        gone = set(self._states) - set(self.nodes.nodes)
        for node_id in gone:
            self._states.pop(node_id, None)
            self._full.pop(node_id, None)
        if not changes:
            return
        async with self.db.transaction() as s:
            for n, kind, message, data in changes:
                record(s.sync_session, kind, message, public=True, node=n.name, **data)
