"""How the agent's loops wait: capped exponential backoff with jitter, naps that end the
moment the agent stops, idle waits that end when there is work again (an agent at rest
wakes only for its heartbeat), and intervals that tests may shorten through the
environment."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0


def backoff(attempt: int) -> float:
    """Capped exponential backoff with full jitter."""
    cap = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * (2 ** min(attempt, 10)))
    return random.uniform(cap / 2, cap)


async def nap(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less when ``stopping`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=seconds)


async def idle_until(stopping: asyncio.Event, work: asyncio.Event) -> None:
    """Wait, without a timer, until ``work`` or ``stopping`` is set. The caller clears
    ``work`` before it looks for work, so a wake-up between the look and the wait is kept."""
    if work.is_set() or stopping.is_set():
        return
    waiters = [asyncio.ensure_future(work.wait()), asyncio.ensure_future(stopping.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def env_seconds(name: str, default: float) -> float:
    """An interval from environment variable ``name`` (seconds > 0), else ``default``."""
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        logging.getLogger("mlsm.agent").warning(
            "%s=%r is not a number of seconds; using %s", name, raw, default
        )
        return default
    return value if value > 0 else default
