"""Fair share: each user's recent GPU-hours, decayed, and charged as their jobs run.

Usage decays with the half-life of the ``fairshare_half_life_hours`` setting. Running jobs
are charged for the GPUs they hold from the last update to now; the job table calls
:meth:`FairShare.charge` just before the set of running jobs changes (a start, an end), so
every job is charged for exactly its run, however short, not only for the ticks it
overlapped. The scheduler orders users by :meth:`FairShare.effective`. The figures are
written to the ``usage`` table at shutdown and read back at start.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Protocol

from sqlalchemy import select

from mlsm.master import scheduler as sched
from mlsm.master.db import Database
from mlsm.master.db.models import UsageRecord


class Holding(Protocol):
    """A placed job as fair share sees it (:class:`~mlsm.master.services.jobs.table.Active`)."""

    @property
    def user(self) -> str: ...

    @property
    def gpu_count(self) -> int: ...

    @property
    def state(self) -> str: ...


class FairShare:
    def __init__(self, half_life_s: float, now: float | None = None) -> None:
        self.half_life_s = half_life_s
        self.usage: dict[str, float] = {}  # user -> decayed GPU-hours up to updated_at
        self.updated_at = time.time() if now is None else now

    def charge(self, now: float, holding: Iterable[Holding]) -> None:
        """Decay everyone's usage to ``now`` and add the GPUs running jobs held meanwhile."""
        dt = now - self.updated_at
        if dt <= 0:
            return
        self.updated_at = now
        held: dict[str, int] = {}
        for a in holding:
            if a.state == "running":
                held[a.user] = held.get(a.user, 0) + a.gpu_count
        for user in set(self.usage) | set(held):
            self.usage[user] = sched.add_usage(
                sched.decay_usage(self.usage.get(user, 0.0), dt, self.half_life_s),
                held.get(user, 0),
                dt,
            )

    def effective(self, holding: Iterable[Holding]) -> dict[str, float]:
        """Recent GPU-hours plus the scheduler's placement charge for what users hold now.

        A pass charges each placement as it goes, so that users alternate; a job placed in
        an earlier pass and still holding its GPUs is charged the same, so the order does
        not depend on how the queue happened to be split into passes (without this, two
        users with equal history never alternate: ties go to the older job).
        """
        out = dict(self.usage)
        for a in holding:
            charge = (
                a.gpu_count * sched.PASS_CHARGE_GPU_HOURS if a.gpu_count else sched.CPU_JOB_CHARGE
            )
            out[a.user] = out.get(a.user, 0.0) + charge
        return out

    def restore(self, records: Iterable[tuple[str, float, float]], now: float) -> None:
        """(user, GPU-hours, when written) as stored, decayed to ``now``."""
        for user, hours, updated_at in records:
            self.usage[user] = sched.decay_usage(hours, now - updated_at, self.half_life_s)

    async def load(self, db: Database) -> None:
        async with db.session() as s:
            rows = (
                await s.execute(
                    select(UsageRecord.user, UsageRecord.gpu_hours, UsageRecord.updated_at)
                )
            ).all()
        self.restore(((u, h, t) for u, h, t in rows), time.time())

    async def flush(self, db: Database, holding: Iterable[Holding]) -> None:
        """Charge up to now and write every user's figure."""
        now = time.time()
        self.charge(now, holding)
        if not self.usage:
            return
        async with db.transaction() as s:
            for user, hours in self.usage.items():
                rec = await s.get(UsageRecord, user)
                if rec is None:
                    s.add(UsageRecord(user=user, gpu_hours=hours, updated_at=now))
                else:
                    rec.gpu_hours, rec.updated_at = hours, now
