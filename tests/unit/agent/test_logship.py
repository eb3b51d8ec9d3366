"""The log shipper against a test double of the master's idempotent, offset-keyed append."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from pathlib import Path

from agent.logship import LogShipper
from agent.state import AgentState
from mlsm.wire.agent import MAX_LOG_CHUNK


class FakeMaster:
    """Test double of the master's log endpoint.

    Appends a chunk by its offset idempotently (bytes it already holds are skipped, a gap is
    refused by answering what it holds), as the real master does; can inject failures
    (raise on every ``fail_every``-th call) and stale answers (every ``stale_every``-th
    call answers an offset lower than what it holds).
    """

    def __init__(self, *, fail_every: int = 0, stale_every: int = 0) -> None:
        self.data = bytearray()
        self.calls = 0
        self.fail_every = fail_every
        self.stale_every = stale_every

    async def send(self, job_id: int, attempt: int, offset: int, data: bytes) -> int:
        self.calls += 1
        if self.fail_every and self.calls % self.fail_every == 0:
            raise ConnectionError("injected network fault")
        if offset <= len(self.data):
            self.data += data[len(self.data) - offset :]
        if self.stale_every and self.calls % self.stale_every == 0:
            return max(0, offset - 7)
        return len(self.data)


class HashingMaster:
    """Test double that keeps only a running hash, so it holds no log in memory."""

    def __init__(self) -> None:
        self.size = 0
        self.sha = hashlib.sha256()

    async def send(self, job_id: int, attempt: int, offset: int, data: bytes) -> int:
        if offset <= self.size:
            self.sha.update(memoryview(data)[self.size - offset :])
            self.size = max(self.size, offset + len(data))
        return self.size


def write(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


async def test_ships_a_growing_log_byte_for_byte_despite_faults(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    master = FakeMaster(fail_every=3, stale_every=5)
    shipper = LogShipper(master.send, chunk_size=1000, backoff_initial_s=0, backoff_max_s=0)
    shipper.watch(1, 0, log)
    expected = bytearray()
    for i in range(40):
        piece = os.urandom(777) + f"line {i}\n".encode()
        write(log, piece)
        expected += piece
        await shipper.pump_once()
    assert await shipper.flush(1)
    assert bytes(master.data) == bytes(expected) == log.read_bytes()
    assert shipper.offset(1) == len(expected)


async def test_pump_once_returns_bytes_accepted_and_zero_at_eof(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    write(log, b"x" * 2500)
    master = FakeMaster()
    shipper = LogShipper(master.send, chunk_size=1000)
    shipper.watch(1, 0, log)
    assert [await shipper.pump_once() for _ in range(4)] == [1000, 1000, 500, 0]


async def test_chunks_never_exceed_the_wire_limit(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    write(log, b"y" * (MAX_LOG_CHUNK * 2 + 5))
    sizes: list[int] = []
    master = FakeMaster()

    async def send(job_id: int, attempt: int, offset: int, data: bytes) -> int:
        sizes.append(len(data))
        return await master.send(job_id, attempt, offset, data)

    shipper = LogShipper(send)
    shipper.watch(3, 0, log)
    assert await shipper.flush(3)
    assert sizes == [MAX_LOG_CHUNK, MAX_LOG_CHUNK, 5]


async def test_master_offset_wins_when_it_is_ahead(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    write(log, b"0123456789" * 10)
    master = FakeMaster()
    master.data += b"0123456789" * 5  # the master already holds the first 50 bytes
    seen: list[int] = []

    async def send(job_id: int, attempt: int, offset: int, data: bytes) -> int:
        seen.append(offset)
        return await master.send(job_id, attempt, offset, data)

    shipper = LogShipper(send, chunk_size=30)
    shipper.watch(1, 0, log, offset=60)  # a gap: the master answers 50 and we go back
    assert await shipper.flush(1)
    assert bytes(master.data) == log.read_bytes()
    assert seen[:2] == [60, 50]


async def test_failed_job_waits_for_its_backoff(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    write(log, b"hello\n")
    master = FakeMaster(fail_every=1)
    shipper = LogShipper(master.send, backoff_initial_s=60)
    shipper.watch(1, 0, log)
    assert await shipper.pump_once() == 0
    assert await shipper.pump_once() == 0
    assert master.calls == 1
    assert shipper.offset(1) == 0


async def test_flush_gives_up_when_the_master_stays_down(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    write(log, b"hello\n")
    master = FakeMaster(fail_every=1)
    shipper = LogShipper(master.send, backoff_initial_s=0.01, backoff_max_s=0.02)
    shipper.watch(1, 0, log)
    assert await shipper.flush(1, timeout_s=0.1) is False
    assert shipper.offset(1) == 0 and master.calls >= 2


async def test_resumes_from_the_acked_offset_in_the_state_file(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    write(log, b"a" * 100 + b"b" * 50)
    state = AgentState(tmp_path / "state.json").load()
    master = FakeMaster()
    master.data += b"a" * 100
    state.set_log_offset(4, 100)
    shipper = LogShipper(master.send, state=state)
    shipper.watch(4, 0, log)
    assert await shipper.pump_once() == 50
    assert state.log_acked == {4: 150}
    assert bytes(master.data) == log.read_bytes()


async def test_missing_log_is_just_empty(tmp_path: Path) -> None:
    shipper = LogShipper(FakeMaster().send)
    shipper.watch(1, 0, tmp_path / "not-yet.log")
    assert await shipper.pump_once() == 0
    assert await shipper.flush(1)


async def test_a_20mb_log_ships_with_bounded_memory(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    block = os.urandom(1 << 20)
    want = hashlib.sha256()
    with open(log, "wb") as f:
        for i in range(20):
            piece = block[i:] + block[:i]
            f.write(piece)
            want.update(piece)
    master = HashingMaster()
    shipper = LogShipper(master.send)
    shipper.watch(1, 0, log)
    del block, piece
    tracemalloc.start()
    try:
        assert await shipper.flush(1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert master.size == 20 << 20 and master.sha.digest() == want.digest()
    assert peak < 4 << 20, f"peak {peak / 2**20:.1f} MiB while shipping 20 MiB"
