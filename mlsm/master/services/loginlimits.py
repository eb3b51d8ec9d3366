"""Login limits that slow password guessing without letting anyone lock a user out.

Three limits, each answering a different attacker:

- **per address** (``login_attempts_per_minute``, 10 by default): failed logins from one
  client address (an IPv6 /64 counts as one) in a sliding minute; over it, every login from
  that address is refused (429) until the minute has passed. A guesser on one address gets
  a few tries a minute, whichever users it tries.
- **per (user, address)**: after :data:`PAIR_FREE_FAILURES` failures for one user from one
  address, that pair waits :data:`PAIR_BACKOFF_BASE_S` from its last failure, then twice as
  long after each further failure, up to :data:`PAIR_BACKOFF_MAX_S`; a success from that
  address clears it. This is what stops a slow guesser on one address.
- **per user**: failures for a user from *all* addresses add to a score that decays with
  :data:`USER_HALF_LIFE_S`; above :data:`USER_FREE_SCORE` every login attempt for that user
  waits up to :data:`USER_MAX_DELAY_S` before its password is checked. It slows guessing
  spread over many addresses and never refuses, so the right password from an address
  that has not been guessing still logs in, however many wrong ones others send.

An attempt counts as a failure from the moment it starts (and is taken back when it
succeeds), so a burst of parallel attempts cannot slip past a limit before the first of
them has failed. Memory is bounded: each table keeps at most :data:`MAX_TRACKED` entries,
the least recently used forgotten first, and entries age out.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from mlsm.errors import RateLimited
from mlsm.master.clientaddr import limit_key

K = TypeVar("K")
V = TypeVar("V")

ADDRESS_WINDOW_S = 60.0
PAIR_FREE_FAILURES = 5
PAIR_BACKOFF_BASE_S = 2.0
PAIR_BACKOFF_MAX_S = 900.0
PAIR_FORGET_S = 24 * 3600.0  # a pair's failures are forgotten after a quiet day
USER_FREE_SCORE = 10.0
USER_HALF_LIFE_S = 60.0
USER_MAX_DELAY_S = 2.0
USER_FORGET_SCORE = 0.5  # a decayed score below this is dropped
MAX_TRACKED = 65_536


@dataclass(slots=True)
class _Pair:
    failures: int = 0
    not_before: float = 0.0
    last: float = 0.0


@dataclass(slots=True)
class _UserScore:
    score: float = 0.0
    at: float = 0.0

    def decayed(self, now: float) -> float:
        return self.score * math.exp2(-(now - self.at) / USER_HALF_LIFE_S)


@dataclass(slots=True)
class Attempt:
    """One login attempt in flight: what it counted against, and how long it must wait."""

    user: str
    address: str
    started: float
    delay: float = 0.0


class LoginLimiter:
    def __init__(
        self, per_address_per_minute: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_address = per_address_per_minute
        self.clock = clock
        self._addresses: OrderedDict[str, deque[float]] = OrderedDict()
        self._pairs: OrderedDict[tuple[str, str], _Pair] = OrderedDict()
        self._users: OrderedDict[str, _UserScore] = OrderedDict()

    # ---------------------------------------------------------------- the three calls
    def begin(self, user: str, address: str) -> Attempt:
        """Admit an attempt (counted as failed until :meth:`succeeded`), or raise 429."""
        now = self.clock()
        key = limit_key(address)
        window = self._address_window(key, now)
        if len(window) >= self.per_address:
            wait = window[0] + ADDRESS_WINDOW_S - now
            raise _limited(f"too many failed logins from {address}", wait)
        pair = self._pairs.get((user, key))
        if pair is not None and now - pair.last > PAIR_FORGET_S:
            pair = None
        if pair is not None and now < pair.not_before:
            raise _limited(
                f"too many failed logins for {user} from {address}", pair.not_before - now
            )
        attempt = Attempt(user=user, address=key, started=now)
        if pair is None:
            pair = _Pair()
            _put(self._pairs, (user, key), pair)
        else:
            self._pairs.move_to_end((user, key))
        pair.failures += 1
        pair.last = now
        attempt.delay = self.user_delay(user, now)
        # Parallel attempts of a backed-off pair wait for this one; failed() re-arms it.
        pair.not_before = now + attempt.delay + _backoff(pair.failures)
        window.append(now)
        return attempt

    def failed(self, attempt: Attempt, *, user_exists: bool) -> None:
        """The attempt failed: it already counts per address and pair; the pair's backoff
        runs from now, and the failure adds to the user's score (only for users that
        exist, so sprayed names take no memory)."""
        now = self.clock()
        pair = self._pairs.get((attempt.user, attempt.address))
        if pair is not None:
            pair.not_before = now + _backoff(pair.failures)
        if not user_exists:
            return
        entry = self._users.get(attempt.user)
        if entry is None:
            entry = _UserScore()
            _put(self._users, attempt.user, entry)
        else:
            self._users.move_to_end(attempt.user)
        entry.score = entry.decayed(now) + 1.0
        entry.at = now

    def succeeded(self, attempt: Attempt) -> None:
        """Take the attempt back: a right password costs its address and pair nothing."""
        window = self._addresses.get(attempt.address)
        if window is not None:
            try:
                window.remove(attempt.started)
            except ValueError:
                pass  # already slid out of the window
        self._pairs.pop((attempt.user, attempt.address), None)

    def user_delay(self, user: str, now: float | None = None) -> float:
        """Seconds an attempt for ``user`` waits before its password is checked."""
        entry = self._users.get(user)
        if entry is None:
            return 0.0
        now = self.clock() if now is None else now
        score = entry.decayed(now)
        if score < USER_FORGET_SCORE:
            self._users.pop(user, None)
            return 0.0
        if score <= USER_FREE_SCORE:
            return 0.0
        return USER_MAX_DELAY_S * min(1.0, (score - USER_FREE_SCORE) / USER_FREE_SCORE)

    # ---------------------------------------------------------------- bookkeeping
    def _address_window(self, key: str, now: float) -> deque[float]:
        window = self._addresses.get(key)
        if window is None:
            window = deque()
            _put(self._addresses, key, window)
        else:
            self._addresses.move_to_end(key)
        while window and window[0] <= now - ADDRESS_WINDOW_S:
            window.popleft()
        return window

    def sizes(self) -> tuple[int, int, int]:
        """(addresses, pairs, users) tracked now: for tests and /metrics."""
        return len(self._addresses), len(self._pairs), len(self._users)


def _put(table: OrderedDict[K, V], key: K, value: V) -> None:
    table[key] = value
    while len(table) > MAX_TRACKED:
        table.popitem(last=False)


def _backoff(failures: int) -> float:
    """How long a pair waits after its ``failures``-th failure."""
    if failures < PAIR_FREE_FAILURES:
        return 0.0
    return min(PAIR_BACKOFF_MAX_S, PAIR_BACKOFF_BASE_S * 2.0 ** (failures - PAIR_FREE_FAILURES))


def _limited(what: str, wait: float) -> RateLimited:
    seconds = max(1, math.ceil(wait))
    return RateLimited(f"{what}; try again in {seconds} s", details={"retry_after": seconds})
