"""GPU reservations (``mlsm reserve``): GPUs of one node set aside for one user, or for
maintenance, from a start time for a while; they end by themselves.

Rules:

* A member reserves for themselves, within the lab's caps: at most
  ``reservation_max_gpus`` GPUs reserved at once over any overlapping time (0: members may
  not reserve), and at most ``reservation_max_hours`` long (:class:`~mlsm.errors.LimitExceeded`
  names the setting). Admins reserve any GPUs for anyone, and for maintenance (for nobody).
* The GPUs are chosen when the reservation is made, on the named node or on the node where
  the most suitable GPUs are free now, never GPUs another reservation holds at an
  overlapping time; the answer names them.
* While it is on, its GPUs run only its user's jobs (maintenance: nobody's); before it
  starts, other jobs use them only if they end by their time limits before it starts (the
  scheduler's holds, :class:`~mlsm.master.scheduler.Hold`). When it ends, or is cancelled
  (by its user or an admin), its GPUs are everyone's again at the next pass.
* A GPU of a reservation that is on but used by someone else (another user's job, or a
  process mlsm did not start) is flagged "used without reservation" in the reservation's
  view and the node's (:meth:`Reservations.unreserved_use`), and recorded as a
  ``node.unreserved_use`` event when it starts (:meth:`Reservations.unreserved_now`, read
  by the events' node watch).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from sqlalchemy import or_, select

from mlsm.errors import LimitExceeded, NotFound, PermissionDenied, ValidationError
from mlsm.master import scheduler as sched
from mlsm.master.db import Database
from mlsm.master.db.models import Reservation as Row
from mlsm.master.gpustate import gpu_state
from mlsm.master.security import Principal
from mlsm.master.services.jobs.table import JobTable
from mlsm.master.services.nodes import NodeRegistry
from mlsm.master.services.settings import SettingsService
from mlsm.wire import usage as wu

#: A start this far in the past is taken as "now" (clocks of client and master differ).
PAST_START_SLACK_S = 300.0
#: Ended reservations listed with ``all`` (newest first).
MAX_LISTED_ENDED = 500


def _state(r: Row, now: float) -> wu.ReservationState:
    if r.cancelled_at is not None:
        return "cancelled"
    if r.end <= now:
        return "ended"
    return "active" if r.start <= now else "future"


def _overlaps(r: Row, start: float, end: float) -> bool:
    return r.cancelled_at is None and r.start < end and start < r.end


class Reservations:
    def __init__(
        self,
        db: Database,
        nodes: NodeRegistry,
        table: JobTable,
        lab_settings: SettingsService,
        kick: Callable[[], None],
    ) -> None:
        self.db = db
        self.nodes = nodes
        self.table = table
        self.lab_settings = lab_settings
        self.kick = kick
        self.current: dict[int, Row] = {}  # not ended, not cancelled

    async def load(self) -> None:
        now = time.time()
        async with self.db.session() as s:
            rows = (
                await s.execute(select(Row).where(Row.end > now, Row.cancelled_at.is_(None)))
            ).scalars()
            self.current = {r.id: r for r in rows}

    def _live(self, now: float) -> list[Row]:
        """Reservations not over yet (those that ended leave the cache here)."""
        for rid in [rid for rid, r in self.current.items() if r.end <= now]:
            del self.current[rid]
        return list(self.current.values())

    # ---------------------------------------------------------------- the scheduler's view
    def holds(self, now: float) -> list[sched.Hold]:
        return [
            sched.Hold(
                node=r.node,
                gpus=tuple(r.gpu_indices),
                start=r.start,
                end=r.end,
                user=r.user or None,
                what=f"{r.user}'s reservation {r.id}"
                if r.user
                else f"maintenance (reservation {r.id})",
            )
            for r in self._live(now)
        ]

    def on_node(self, node: str, now: float) -> dict[int, Row]:
        """GPU index -> the reservation that is on there now."""
        out: dict[int, Row] = {}
        for r in self._live(now):
            if r.node == node and r.start <= now:
                for i in r.gpu_indices:
                    out[i] = r
        return out

    def unreserved_now(self, now: float) -> list[tuple[Row, list[int], list[int]]]:
        """(reservation, GPUs, jobs) of every reservation that is on and is used by
        someone else now."""
        out = []
        for r in self._live(now):
            if r.start <= now:
                gpus, jobs = self.unreserved_use(r)
                if gpus:
                    out.append((r, gpus, jobs))
        return out

    def unreserved_use(self, r: Row) -> tuple[list[int], list[int]]:
        """(GPUs, jobs): who uses the GPUs of ``r`` without holding it, while it is on."""
        n = self.nodes.by_name.get(r.node)
        if n is None:
            return [], []
        holders = self.table.gpu_holders().get(n.id, {})
        pids = {j.pid for j in n.jobs.values() if j.pid}
        samples = {g.index: g for g in n.gpus}
        gpus: list[int] = []
        jobs: list[int] = []
        for i in r.gpu_indices:
            others = [
                j
                for j in holders.get(i, [])
                if (a := self.table.active.get(j)) is not None and a.user != r.user
            ]
            g = samples.get(i)
            foreign = g is not None and gpu_state(g, holders.get(i, ()), pids).foreign
            if others or foreign:
                gpus.append(i)
                jobs.extend(j for j in others if j not in jobs)
        return gpus, jobs

    def view(self, r: Row, now: float) -> wu.Reservation:
        state = _state(r, now)
        gpus, jobs = self.unreserved_use(r) if state == "active" else ([], [])
        return wu.Reservation(
            id=r.id,
            user=r.user,
            node=r.node,
            gpu_indices=list(r.gpu_indices),
            start=r.start,
            end=r.end,
            state=state,
            created_by=r.created_by,
            created_at=r.created_at,
            note=r.note,
            maintenance=not r.user,
            cancelled_at=r.cancelled_at,
            unreserved_gpus=gpus,
            unreserved_jobs=jobs,
        )

    # ---------------------------------------------------------------- requests
    async def listing(self, *, all: bool = False) -> list[wu.Reservation]:
        now = time.time()
        rows = sorted(self._live(now), key=lambda r: (r.start, r.id))
        if all:
            async with self.db.session() as s:
                ended = (
                    await s.execute(
                        select(Row)
                        .where(or_(Row.end <= now, Row.cancelled_at.is_not(None)))
                        .order_by(Row.end.desc())
                        .limit(MAX_LISTED_ENDED)
                    )
                ).scalars()
                rows = [*reversed(ended.all()), *rows]
        return [self.view(r, now) for r in rows]

    async def create(self, p: Principal, body: wu.ReservationCreate) -> wu.Reservation:
        now = time.time()
        user = p.name if body.user is None else body.user
        if body.maintenance or user != p.name:
            if not p.is_admin:
                raise PermissionDenied(
                    "only admins reserve GPUs for someone else or for maintenance"
                )
        if body.maintenance:
            user = ""
        start = now if body.start is None else body.start
        if start < now - PAST_START_SLACK_S:
            raise ValidationError("a reservation cannot start in the past", path="start")
        start = max(start, now)
        end = start + body.duration_s
        live = self._live(now)
        if not p.is_admin:
            self._check_caps(p.name, body, start, end, live)
        node, gpus = self._choose(body, start, end, live)
        async with self.db.transaction() as s:
            row = Row(
                user=user,
                node=node,
                gpu_indices=gpus,
                start=start,
                end=end,
                note=body.note,
                created_by=p.name,
                created_at=now,
            )
            s.add(row)
            await s.flush()
        self.current[row.id] = row
        self.kick()
        return self.view(row, now)

    def _check_caps(
        self, user: str, body: wu.ReservationCreate, start: float, end: float, live: list[Row]
    ) -> None:
        lab = self.lab_settings.current
        cap = lab.reservation_max_gpus
        held = sum(len(r.gpu_indices) for r in live if r.user == user and _overlaps(r, start, end))
        if held + body.gpus > cap:
            why = (
                "members may not reserve GPUs in this lab"
                if cap == 0
                else f"a member may hold at most {cap} reserved GPU{'s' if cap != 1 else ''} "
                f"at once, and {user} holds {held} then"
            )
            raise LimitExceeded(
                f"{why} (reservation_max_gpus)",
                details={
                    "limit": "reservation_max_gpus",
                    "allowed": cap,
                    "asked": held + body.gpus,
                    "path": "gpus",
                },
            )
        longest = lab.reservation_max_hours * 3600.0
        if body.duration_s > longest:
            raise LimitExceeded(
                f"a member's reservation lasts at most {lab.reservation_max_hours:g} h, not "
                f"{body.duration_s / 3600:.3g} h (reservation_max_hours)",
                details={
                    "limit": "reservation_max_hours",
                    "allowed": lab.reservation_max_hours,
                    "asked": body.duration_s / 3600,
                    "path": "duration_s",
                },
            )

    def _choose(
        self, body: wu.ReservationCreate, start: float, end: float, live: list[Row]
    ) -> tuple[str, list[int]]:
        """The node and GPU indices: free of other reservations at that time, GPUs free
        now first, then the lowest indices; without --node, the node where the most of
        them are free now, then the fewest GPUs (whole servers stay whole)."""
        if body.node is not None:
            n = self.nodes.by_name.get(body.node)
            if n is None:
                raise NotFound(f"no node named {body.node}")
            candidates = [n]
        else:
            candidates = list(self.nodes.nodes.values())
        holders = self.table.gpu_holders()
        best: tuple[tuple[int, int, str], str, list[int]] | None = None
        most = 0
        for n in candidates:
            taken = {
                i
                for r in live
                if r.node == n.name and _overlaps(r, start, end)
                for i in r.gpu_indices
            }
            pids = {j.pid for j in n.jobs.values() if j.pid}
            held: Mapping[int, list[int]] = holders.get(n.id, {})
            open_ = [g for g in sorted(n.gpus, key=lambda g: g.index) if g.index not in taken]
            most = max(most, len(open_))
            if len(open_) < body.gpus:
                continue
            open_.sort(key=lambda g: (gpu_state(g, held.get(g.index, ()), pids).busy, g.index))
            chosen = sorted(g.index for g in open_[: body.gpus])
            idle = sum(not gpu_state(g, held.get(g.index, ()), pids).busy for g in open_)
            key = (-min(idle, body.gpus), len(n.gpus), n.name)
            if best is None or key < best[0]:
                best = (key, n.name, chosen)
        if best is None:
            where = f"node {body.node}" if body.node is not None else "no node"
            raise ValidationError(
                f"{where} has {body.gpus} GPUs that no other reservation holds at that time"
                + (f" (at most {most})" if body.node is not None else ""),
                path="gpus",
            )
        return best[1], best[2]

    async def cancel(self, p: Principal, rid: int) -> wu.Reservation:
        now = time.time()
        async with self.db.transaction() as s:
            row = await s.get(Row, rid)
            if row is None:
                raise NotFound(f"no reservation {rid}")
            if row.user != p.name and row.created_by != p.name and not p.is_admin:
                raise PermissionDenied(f"reservation {rid} is not yours")
            state = _state(row, now)
            if state in ("ended", "cancelled"):
                raise ValidationError(f"reservation {rid} has {state} already", path="id")
            row.cancelled_at = now
        self.current.pop(rid, None)
        self.kick()
        return self.view(row, now)
