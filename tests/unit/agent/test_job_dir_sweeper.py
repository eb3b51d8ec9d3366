"""The agent's removal of finished jobs' directories (agent.outputs): retention, the disk
threshold (oldest first), purges, pins and the job supervisor's "in use", and links that a
job planted, on real directories."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from agent.outputs import DiskMeter, JobDirPins, JobDirSweeper
from agent.outputs.disk import JOBS_DIR
from agent.outputs.pins import DirBeingRemoved
from agent.runtimes.jobfs import control_dir
from mlsm import errors
from mlsm.wire import outputs as wo

DAY = 86400.0
MIB = 1 << 20


class RecordingLink:
    """Stands in for the link to the master: keeps every report the sweeper sends."""

    def __init__(self) -> None:
        self.sent: list[wo.JobDirsRemoved] = []

    async def call(self, path: str, body: Any, decode: Any, **_: Any) -> Any:
        assert path == "outputs/removed"
        self.sent.append(body)
        return None


class CapacityMeter(DiskMeter):
    """A disk of ``capacity`` bytes that holds only the job directories (measured for real)."""

    def __init__(self, data_dir: Path, capacity: int) -> None:
        super().__init__(data_dir)
        self.capacity = capacity

    def used_pct(self) -> float:
        used = sum(self.job_dir_size(int(n)).bytes for n in os.listdir(self.data_dir / JOBS_DIR))
        return 100.0 * used / self.capacity


def make_job(data: Path, job_id: int, size: int = 4096) -> Path:
    d = data / JOBS_DIR / str(job_id)
    (d / "ckpt").mkdir(parents=True)
    (d / "output.log").write_bytes(b"log\n")
    (d / "ckpt" / "model.bin").write_bytes(os.urandom(size))
    control_dir(data, job_id).mkdir(parents=True)
    (control_dir(data, job_id) / "exit.json").write_text("{}")
    return d


def sweeper(
    data: Path,
    *,
    busy: set[int] = frozenset(),  # type: ignore[assignment]
    pins: JobDirPins | None = None,
    meter: DiskMeter | None = None,
) -> tuple[JobDirSweeper, RecordingLink]:
    link = RecordingLink()
    s = JobDirSweeper(
        data_dir=data,
        link=link,  # type: ignore[arg-type]
        pins=pins or JobDirPins(),
        meter=meter or DiskMeter(data),
        in_use=lambda jid: "the job runs on this node" if jid in busy else None,
        on_disk=lambda _d: None,
        stopping=asyncio.Event(),
    )
    return s, link


def finished(job_id: int, ago_s: float) -> wo.FinishedJob:
    return wo.FinishedJob(job_id=job_id, ended_at=time.time() - ago_s)


def test_sweep_removes_only_finished_jobs_past_retention(tmp_path: Path) -> None:
    for jid in (1, 2, 3, 4, 5):
        make_job(tmp_path, jid)
    pins = JobDirPins()
    s, link = sweeper(tmp_path, busy={3}, pins=pins)
    cmd = wo.SweepJobDirs(
        id=7,
        jobs=[finished(j, 10 * DAY) for j in (1, 3, 4, 6)] + [finished(2, 3600)],
        retention_s=7 * DAY,
    )
    with pins.hold(4):
        asyncio.run(s.sweep(cmd))
    left = sorted(os.listdir(tmp_path / JOBS_DIR))
    assert left == ["2", "3", "4", "5"]  # 2: too recent, 3: running, 4: pinned, 5: not named
    assert not control_dir(tmp_path, 1).exists()
    assert control_dir(tmp_path, 2).exists()
    (report,) = link.sent
    assert report.command_id == 7
    assert [(d.job_id, d.reason) for d in report.removed] == [(1, "retention")]
    assert report.removed[0].bytes >= 4096 and report.removed[0].files == 2
    assert report.gone == [6]
    assert report.disk is not None and report.disk.jobs_count == 4


def test_retention_zero_removes_nothing_by_age(tmp_path: Path) -> None:
    make_job(tmp_path, 1)
    s, link = sweeper(tmp_path)
    asyncio.run(s.sweep(wo.SweepJobDirs(id=1, jobs=[finished(1, 1000 * DAY)], retention_s=0)))
    assert (tmp_path / JOBS_DIR / "1").is_dir()
    assert link.sent[0].removed == []


def test_threshold_removes_the_oldest_finished_first_until_below(tmp_path: Path) -> None:
    for jid in (1, 2, 3, 4):
        make_job(tmp_path, jid, size=MIB)
    meter = CapacityMeter(tmp_path, capacity=5 * MIB)  # 4 MiB held: 80 % full
    s, link = sweeper(tmp_path, busy={1}, meter=meter)
    cmd = wo.SweepJobDirs(
        id=2,
        # ended: 3 the oldest, then 1 (running again: never), 4, 2 the newest
        jobs=[finished(2, 60), finished(4, 120), finished(1, 150), finished(3, 180)],
        retention_s=30 * DAY,
        high_pct=50.0,
    )
    asyncio.run(s.sweep(cmd))
    assert sorted(os.listdir(tmp_path / JOBS_DIR)) == ["1", "2"]
    assert [(d.job_id, d.reason) for d in link.sent[0].removed] == [(3, "disk"), (4, "disk")]
    assert meter.used_pct() <= 50.0


def test_removal_never_follows_links_the_job_planted(tmp_path: Path) -> None:
    victim_dir = tmp_path / "elsewhere"
    victim_dir.mkdir()
    victim = victim_dir / "precious.txt"
    victim.write_text("keep me")
    job = make_job(tmp_path / "data", 9)
    (job / "to-file").symlink_to(victim)
    (job / "to-dir").symlink_to(victim_dir, target_is_directory=True)
    (job / "ckpt" / "hard").hardlink_to(victim)
    (job / "ckpt" / "up").symlink_to("../../..")
    s, link = sweeper(tmp_path / "data")
    asyncio.run(s.purge(wo.PurgeJobDir(id=3, job_id=9, requested_by="alice")))
    assert not job.exists()
    assert victim.read_text() == "keep me"
    assert sorted(os.listdir(victim_dir)) == ["precious.txt"]
    (removed,) = link.sent[0].removed
    assert (removed.job_id, removed.reason, removed.by) == (9, "purge", "alice")


def test_measuring_does_not_follow_a_link_to_a_big_file(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(4 * MIB))
    job = make_job(tmp_path / "data", 5, size=1024)
    (job / "big").symlink_to(big)
    size = DiskMeter(tmp_path / "data").job_dir_size(5)
    assert size.bytes < MIB
    disk = DiskMeter(tmp_path / "data").measure()
    assert disk.jobs_count == 1 and disk.jobs_bytes < MIB
    assert disk.fs_total > 0 and disk.data_dir == str(tmp_path / "data")


@pytest.mark.parametrize("busy_kind", ["running", "pinned"])
def test_purge_of_a_directory_in_use_keeps_it_and_says_why(tmp_path: Path, busy_kind: str) -> None:
    job = make_job(tmp_path, 4)
    pins = JobDirPins()
    s, link = sweeper(tmp_path, busy={4} if busy_kind == "running" else set(), pins=pins)
    with pins.hold(4) if busy_kind == "pinned" else open(os.devnull):
        asyncio.run(s.purge(wo.PurgeJobDir(id=5, job_id=4)))
    assert job.is_dir()
    (kept,) = link.sent[0].kept
    assert kept.job_id == 4
    assert ("runs" if busy_kind == "running" else "fetched") in kept.why
    assert link.sent[0].removed == []


def test_purge_of_a_missing_directory_reports_it_gone(tmp_path: Path) -> None:
    (tmp_path / JOBS_DIR).mkdir()
    s, link = sweeper(tmp_path)
    asyncio.run(s.purge(wo.PurgeJobDir(id=6, job_id=12)))
    assert link.sent[0].gone == [12] and link.sent[0].removed == []


def test_a_pin_is_refused_while_a_removal_holds_the_directory() -> None:
    pins = JobDirPins()
    with pins.removal(3) as claimed:
        assert claimed
        with pytest.raises(DirBeingRemoved), pins.hold(3):
            pass
    with pins.hold(3), pins.removal(3) as claimed:
        assert not claimed
    with pins.hold(3):
        pass  # free again once the removal ended


class Flaky(RecordingLink):
    """A link to a master that is away until ``fail`` is cleared."""

    fail = True

    async def call(self, path: str, body: Any, decode: Any, **kw: Any) -> Any:
        if self.fail:
            raise errors.Unreachable("master away")
        return await super().call(path, body, decode, **kw)


def test_a_report_the_master_did_not_take_is_sent_again(tmp_path: Path) -> None:
    make_job(tmp_path, 1)

    s, _ = sweeper(tmp_path)
    flaky = Flaky()
    s.link = flaky  # type: ignore[assignment]
    asyncio.run(s.purge(wo.PurgeJobDir(id=8, job_id=1)))
    assert flaky.sent == [] and not (tmp_path / JOBS_DIR / "1").exists()
    flaky.fail = False
    assert asyncio.run(s.flush())
    assert [d.job_id for d in flaky.sent[0].removed] == [1]


def test_two_flushes_at_once_send_each_report_once(tmp_path: Path) -> None:
    """A sweep's own flush and the resend loop may run together: while the first is still
    sending a report, the second must not send the same report again."""

    class Gated(RecordingLink):
        def __init__(self) -> None:
            super().__init__()
            self.gate = asyncio.Event()

        async def call(self, path: str, body: Any, decode: Any, **kw: Any) -> Any:
            await self.gate.wait()
            return await super().call(path, body, decode, **kw)

    async def go() -> list[wo.JobDirsRemoved]:
        s, _ = sweeper(tmp_path)
        link = Gated()
        s.link = link  # type: ignore[assignment]
        s._pending.append(wo.JobDirsRemoved(command_id=1, gone=[5]))
        first = asyncio.create_task(s.flush())
        await asyncio.sleep(0)  # the first flush is now waiting on the gate
        second = asyncio.create_task(s.flush())
        await asyncio.sleep(0)
        link.gate.set()
        assert await asyncio.gather(first, second) == [True, True]
        return link.sent

    sent = asyncio.run(go())
    assert [r.gone for r in sent] == [[5]]


def test_the_resend_loop_at_rest_wakes_for_a_report_the_master_did_not_take(
    tmp_path: Path,
) -> None:
    """With nothing to resend the loop waits without a timer; a report that could not be
    sent wakes it, and it goes once the master takes it again."""
    from tests.support.wait import wait_until_async

    make_job(tmp_path, 1)

    async def go() -> list[wo.JobDirsRemoved]:
        s, _ = sweeper(tmp_path)
        flaky = Flaky()
        s.link = flaky  # type: ignore[assignment]
        loop = asyncio.create_task(s.resend_loop())
        await asyncio.sleep(0)  # the loop is now waiting, nothing kept
        await s.purge(wo.PurgeJobDir(id=8, job_id=1))
        assert flaky.sent == [] and s._pending
        flaky.fail = False
        await wait_until_async(lambda: flaky.sent, what="the kept report resent")
        s.stopping.set()
        await asyncio.wait_for(loop, 10)
        return flaky.sent

    sent = asyncio.run(go())
    assert [[d.job_id for d in r.removed] for r in sent] == [[1]]
