"""The login limiter's arithmetic on a controlled clock: refusals per address and per
(user, address), a per-user delay that never refuses, and bounded memory."""

from __future__ import annotations

import pytest

from mlsm.errors import RateLimited
from mlsm.master.services import loginlimits as ll


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fail(lim: ll.LoginLimiter, user: str, addr: str, exists: bool = True) -> ll.Attempt:
    a = lim.begin(user, addr)
    lim.failed(a, user_exists=exists)
    return a


def test_per_address_failures_refuse_that_address_for_a_minute() -> None:
    clock = Clock()
    lim = ll.LoginLimiter(3, clock)
    for i in range(3):
        fail(lim, f"u{i}", "192.0.2.1")
    with pytest.raises(RateLimited) as exc:
        lim.begin("anyone", "192.0.2.1")
    assert exc.value.details["retry_after"] == 60
    lim.begin("anyone", "192.0.2.2")  # another address is not touched
    clock.now += ll.ADDRESS_WINDOW_S
    lim.begin("anyone", "192.0.2.1")


def test_a_right_password_costs_its_address_nothing() -> None:
    lim = ll.LoginLimiter(2, Clock())
    for _ in range(5):
        lim.succeeded(lim.begin("u", "192.0.2.1"))
    fail(lim, "u", "192.0.2.1")
    lim.begin("u", "192.0.2.1")


def test_parallel_attempts_count_before_they_fail() -> None:
    lim = ll.LoginLimiter(3, Clock())
    for i in range(3):
        lim.begin(f"u{i}", "192.0.2.1")  # in flight, none has failed yet
    with pytest.raises(RateLimited):
        lim.begin("u9", "192.0.2.1")


def test_a_pair_backs_off_exponentially_and_a_success_clears_it() -> None:
    clock = Clock()
    lim = ll.LoginLimiter(1000, clock)
    for _ in range(ll.PAIR_FREE_FAILURES - 1):
        fail(lim, "alice", "192.0.2.1")
    waits = []
    for _ in range(4):
        fail(lim, "alice", "192.0.2.1")
        with pytest.raises(RateLimited) as exc:
            lim.begin("alice", "192.0.2.1")
        waits.append(exc.value.details["retry_after"])
        lim.begin("alice", "192.0.2.2")  # the same user elsewhere is not held up
        lim._pairs.pop(("alice", "192.0.2.2"))
        clock.now += exc.value.details["retry_after"]
    base = ll.PAIR_BACKOFF_BASE_S
    assert waits == [base, 2 * base, 4 * base, 8 * base]
    lim.succeeded(lim.begin("alice", "192.0.2.1"))
    for _ in range(ll.PAIR_FREE_FAILURES - 1):
        fail(lim, "alice", "192.0.2.1")  # free again after the success


def test_the_backoff_is_capped() -> None:
    assert ll._backoff(1000) == ll.PAIR_BACKOFF_MAX_S


def test_a_user_under_attack_is_slowed_never_refused() -> None:
    clock = Clock()
    lim = ll.LoginLimiter(10, clock)
    for i in range(int(ll.USER_FREE_SCORE) * 3):
        fail(lim, "root", f"198.51.100.{i}")
    attempt = lim.begin("root", "192.0.2.200")  # a fresh address: admitted, with a delay
    assert 0 < attempt.delay <= ll.USER_MAX_DELAY_S
    lim.succeeded(attempt)
    clock.now += ll.USER_HALF_LIFE_S * 20  # the score decays away
    assert lim.begin("root", "192.0.2.201").delay == 0.0
    assert lim.sizes()[2] == 0


def test_unknown_users_take_no_per_user_memory() -> None:
    lim = ll.LoginLimiter(10, Clock())
    for i in range(100):
        fail(lim, f"sprayed{i}", f"198.51.100.{i % 250}", exists=False)
    assert lim.sizes()[2] == 0


def test_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ll, "MAX_TRACKED", 50)
    lim = ll.LoginLimiter(10, Clock())
    for i in range(500):
        fail(lim, f"user{i % 70}", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert all(n <= 50 for n in lim.sizes()), lim.sizes()
