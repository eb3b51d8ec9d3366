"""Fair share: decayed GPU-hours, charged to running jobs only, and the scheduler's
effective usage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from mlsm.master.db import Database
from mlsm.master.scheduler import CPU_JOB_CHARGE, PASS_CHARGE_GPU_HOURS
from mlsm.master.services.jobs.fairshare import FairShare

HOUR = 3600.0
T0 = 1_000_000.0


@dataclass
class Held:
    user: str
    gpu_count: int
    state: str = "running"


def test_running_jobs_are_charged_their_gpus_for_the_time_they_ran() -> None:
    fs = FairShare(half_life_s=1e12, now=T0)  # no decay to speak of
    fs.charge(T0 + HOUR, [Held("alice", 2), Held("bob", 1), Held("bob", 0)])
    assert fs.usage["alice"] == pytest.approx(2.0)
    assert fs.usage["bob"] == pytest.approx(1.0)


def test_assigned_jobs_are_not_charged_until_they_run() -> None:
    fs = FairShare(half_life_s=1e12, now=T0)
    fs.charge(T0 + HOUR, [Held("alice", 4, state="assigned")])
    assert fs.usage.get("alice", 0.0) == 0.0


def test_usage_halves_every_half_life() -> None:
    fs = FairShare(half_life_s=HOUR, now=T0)
    fs.usage["alice"] = 8.0
    fs.charge(T0 + 2 * HOUR, [])
    assert fs.usage["alice"] == pytest.approx(2.0)


def test_a_charge_that_does_not_move_forward_changes_nothing() -> None:
    fs = FairShare(half_life_s=HOUR, now=T0)
    fs.usage["alice"] = 1.0
    fs.charge(T0, [Held("alice", 8)])
    fs.charge(T0 - 10, [Held("alice", 8)])
    assert fs.usage == {"alice": 1.0}
    assert fs.updated_at == T0


def test_effective_usage_adds_the_placement_charge_of_what_users_hold() -> None:
    fs = FairShare(half_life_s=HOUR, now=T0)
    fs.usage["alice"] = 0.5
    eff = fs.effective([Held("alice", 2), Held("bob", 0, state="assigned")])
    assert eff["alice"] == pytest.approx(0.5 + 2 * PASS_CHARGE_GPU_HOURS)
    assert eff["bob"] == pytest.approx(CPU_JOB_CHARGE)
    assert fs.usage == {"alice": 0.5}  # the figures themselves are not changed


def test_stored_figures_are_decayed_to_now_when_restored() -> None:
    fs = FairShare(half_life_s=HOUR, now=T0)
    fs.restore([("alice", 4.0, T0 - HOUR), ("bob", 1.0, T0)], T0)
    assert fs.usage["alice"] == pytest.approx(2.0)
    assert fs.usage["bob"] == pytest.approx(1.0)


async def test_figures_written_at_shutdown_are_read_back_at_start(tmp_path: Path) -> None:
    """flush (shutdown) and load (start) through a real, migrated SQLite database; a second
    flush updates the users' rows rather than adding more."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'mlsm.db'}")
    await db.migrate(backup=False)
    try:
        fs = FairShare(half_life_s=HOUR)
        fs.usage.update(alice=4.0, bob=1.0)
        await fs.flush(db, [])
        fs.usage["alice"] = 6.0
        await fs.flush(db, [])
        back = FairShare(half_life_s=HOUR)
        await back.load(db)
        assert back.usage == pytest.approx({"alice": 6.0, "bob": 1.0}, rel=1e-3)
    finally:
        await db.close()
