"""Waiting for a condition with a deadline: the one helper every test polls with.

A test never sleeps for something to happen; it names the condition and waits for it::

    job = wait_until(lambda: (j := lab.job(7)).state == "running" and j, 20, "job 7 to run")

``cond`` returns something truthy when the wait is over, and that value is returned. It may
also *assert*: an ``AssertionError`` means "not yet", and the last one's message is part of
the failure at the deadline, so a wait can say what it saw. Any other exception ends the wait
at once (a process that exited does not get better by waiting); ``retry_on`` names more
exceptions that mean "not yet" (a benchmark's master that is still starting up).

Three faces of the same loop: :func:`wait_until` (blocking, between tries it sleeps),
:func:`wait_until_async` (between tries it awaits, so the event loop runs; ``cond`` may be
a coroutine function there), and :func:`pilot_until` (between tries the Textual app under
test takes its messages).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from textual.pilot import Pilot

T = TypeVar("T")

#: How long a wait lasts unless the caller says otherwise.
DEADLINE_S = 20.0
#: Pause between two tries.
POLL_S = 0.05
#: A wait through a pilot fails only after this many pauses *and* its deadline: a pause that
#: waits for the app to be idle can be far shorter than ``POLL_S``.
MIN_PAUSES = 200

What = str | Callable[[], str]
Retry = tuple[type[BaseException], ...]


def _failure(timeout: float, what: What, cond: object, last: BaseException | None) -> str:
    said = what() if callable(what) else what
    why = f": {last}" if last is not None else ""
    return f"timed out after {timeout:g} s waiting for {said or cond}{why}"


def wait_until(
    cond: Callable[[], T],
    timeout: float = DEADLINE_S,
    what: What = "",
    *,
    poll_s: float = POLL_S,
    retry_on: Retry = (AssertionError,),
) -> T:
    """Call ``cond`` until it returns something truthy and return that; fail (an
    ``AssertionError`` naming ``what``) when ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = cond()
        except retry_on as exc:
            last = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            raise AssertionError(_failure(timeout, what, cond, last))
        time.sleep(poll_s)


async def wait_until_async(
    cond: Callable[[], T | Awaitable[T]],
    timeout: float = DEADLINE_S,
    what: What = "",
    *,
    poll_s: float = POLL_S,
    retry_on: Retry = (AssertionError,),
    pause: Callable[[], Awaitable[Any]] | None = None,
    min_tries: int = 0,
) -> T:
    """:func:`wait_until` inside an event loop: between tries it awaits ``pause()``
    (``asyncio.sleep(poll_s)`` by default), so the code under test runs meanwhile; what
    ``cond`` returns is awaited when it is awaitable. It fails once the deadline has passed
    and ``cond`` was tried at least ``min_tries`` times."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    tries = 0
    while True:
        try:
            answer = cond()
            value = await answer if inspect.isawaitable(answer) else answer
        except retry_on as exc:
            last = exc
        else:
            if value:
                return value
        tries += 1
        if tries >= min_tries and time.monotonic() >= deadline:
            raise AssertionError(_failure(timeout, what, cond, last))
        await (pause() if pause is not None else asyncio.sleep(poll_s))


async def pilot_until(
    pilot: Pilot[Any],
    cond: Callable[[], T],
    what: What,
    timeout: float = DEADLINE_S,
    *,
    pause_s: float | None = None,
) -> T:
    """Let the app under ``pilot`` run until ``cond()`` holds.

    Between tries ``pilot.pause(pause_s)``: ``None`` (the default) waits for the app to be
    idle, which is all a test over a fake data source needs; a test against a real master
    passes a short delay, so the wait does not spin while the app waits for the network.
    """
    return await wait_until_async(
        cond, timeout, what, pause=lambda: pilot.pause(pause_s), min_tries=MIN_PAUSES
    )


__all__ = ["DEADLINE_S", "MIN_PAUSES", "POLL_S", "pilot_until", "wait_until", "wait_until_async"]
