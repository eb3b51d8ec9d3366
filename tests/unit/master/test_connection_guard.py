"""The connection cap's figures and its choice of whom to drop (the protocol itself is
exercised on real masters in tests/integration/test_master_connections.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mlsm.master.connections import (
    FD_RESERVED,
    FDS_PER_CONNECTION,
    LISTEN_BACKLOG,
    MIN_BACKLOG,
    MIN_CONNECTIONS,
    ConnectionGuard,
    connection_cap,
    listen_backlog,
)


@dataclass(eq=False)
class FakeConnection:
    guard: ConnectionGuard
    dropped: list[FakeConnection] = field(default_factory=list)

    def drop(self) -> None:
        self.dropped.append(self)
        self.guard.open -= 1


def _guard(cap: int) -> ConnectionGuard:
    return ConnectionGuard(max_connections=cap, header_timeout=10.0, body_timeout=30.0)


def test_cap_leaves_room_for_files_and_the_database() -> None:
    assert connection_cap(65536) == (65536 - FD_RESERVED) // FDS_PER_CONNECTION
    assert connection_cap(65536) >= 3 * 10_000  # a 10,000-node lab at 3 connections each
    assert connection_cap(256) == 64


def test_cap_has_a_floor_and_a_setting_only_lowers_it() -> None:
    assert connection_cap(100) == MIN_CONNECTIONS
    assert connection_cap(65536, configured=500) == 500
    assert connection_cap(256, configured=10_000) == 64


def test_backlog_fits_in_the_descriptors_left_over() -> None:
    assert listen_backlog(256, 64) == 256 - FD_RESERVED - 64
    assert listen_backlog(1 << 20, connection_cap(1 << 20)) == LISTEN_BACKLOG
    assert listen_backlog(150, MIN_CONNECTIONS) == MIN_BACKLOG


def test_at_the_cap_the_longest_waiting_connection_makes_room() -> None:
    guard = _guard(2)
    dropped: list[FakeConnection] = []
    first, second = FakeConnection(guard, dropped), FakeConnection(guard, dropped)
    for conn in (first, second):
        assert guard.admit()
        guard.waiting[conn] = None  # type: ignore[index]
    assert guard.admit()  # a third: the first has waited longest
    assert dropped == [first]
    assert guard.open == 2 and guard.evicted == 1
    assert list(guard.waiting) == [second]


def test_busy_connections_are_never_dropped_and_the_new_one_is_refused() -> None:
    guard = _guard(1)
    assert guard.admit()  # busy: never put in the waiting queue
    assert not guard.admit()
    assert guard.open == 1 and guard.refused == 1 and guard.evicted == 0
