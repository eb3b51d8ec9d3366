"""The master's job log store: appends by offset stay exact while what it keeps per job
stays bounded (sizes are a cache; a job's wake-up event lives while someone follows)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mlsm.master.services import joblogs
from mlsm.master.services.joblogs import LogStore


def test_sizes_kept_are_bounded_and_an_evicted_attempt_is_measured_again(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(joblogs, "MAX_SIZES_CACHED", 8)
    store = LogStore(tmp_path)
    for job in range(1, 41):
        assert store.append(job, 0, 0, b"hello\n") == 6
    assert len(store._sizes) == 8
    # job 1 left the cache long ago: a resend of what it holds is still skipped, not repeated
    assert store.append(1, 0, 0, b"hello\nworld\n") == 12
    assert store.path(1, 0).read_bytes() == b"hello\nworld\n"
    assert store.append(1, 0, 20, b"gap") == 12  # past the end: refused with the size


def test_a_jobs_wake_up_event_lives_only_while_someone_follows(tmp_path: Path) -> None:
    store = LogStore(tmp_path)

    async def go() -> None:
        first = asyncio.create_task(store.wait(7, timeout=5.0))
        second = asyncio.create_task(store.wait(7, timeout=5.0))
        await asyncio.sleep(0)  # both are waiting now
        assert store._waiters[7].count == 2
        store.append(7, 0, 0, b"line\n")  # wakes both
        await asyncio.wait_for(asyncio.gather(first, second), 5.0)
        await store.wait(8, timeout=0.01)  # nobody appends: it times out

    asyncio.run(go())
    assert store._waiters == {}
