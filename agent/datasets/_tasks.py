"""Progress reports and cancellation shared by import and receive."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from mlsm.wire.agent import AgentTransferState, TransferProgress

from .errors import DatasetCancelled

log = logging.getLogger(__name__)
T = TypeVar("T")

PROGRESS_INTERVAL = 0.25  # seconds between progress callbacks (at most ~4/s)


# ------------------------------------------------------------------ progress
class Progress:
    """Throttled TransferProgress reports (at most one per PROGRESS_INTERVAL)."""

    def __init__(self, command_id: int, callback: Callable[[TransferProgress], None]) -> None:
        self.command_id = command_id
        self.callback = callback
        self.start = time.monotonic()
        self.last = 0.0
        self.done = 0
        self.total: int | None = None

    def _emit(self, state: AgentTransferState, message: str) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        msg = TransferProgress(
            command_id=self.command_id,
            done_bytes=self.done,
            total_bytes=self.total,
            rate_bps=self.done / elapsed,
            state=state,
            message=message[:4096],
        )
        try:
            self.callback(msg)
        except Exception:  # a broken reporter must not break the transfer
            log.exception("progress callback failed")

    def update(self, done: int, message: str = "", force: bool = False) -> None:
        self.done = done
        now = time.monotonic()
        if force or now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            self._emit("running", message)

    def final(self, state: AgentTransferState, message: str = "") -> None:
        self._emit(state, message)


# ------------------------------------------------------------------ cancellation helpers
async def run_cancellable(
    coro: Awaitable[T], cancel: asyncio.Event, on_cancel: Callable[[], None] | None = None
) -> T:
    """Await ``coro`` unless ``cancel`` is set first; then stop it and raise DatasetCancelled.

    ``on_cancel`` runs before the task is cancelled (e.g. to set a worker thread's stop
    flag); the task is always awaited to its end, so no thread outlives this call.
    """
    task = asyncio.ensure_future(coro)
    waiter = asyncio.ensure_future(cancel.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            if on_cancel is not None:
                on_cancel()
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if task.cancelled():
        raise DatasetCancelled("cancelled")
    return task.result()


async def run_thread_cancellable(fn: Callable[[threading.Event], T], cancel: asyncio.Event) -> T:
    """Run ``fn(stop)`` in a thread; on ``cancel`` set ``stop`` and wait for it to end."""
    stop = threading.Event()
    task = asyncio.ensure_future(asyncio.to_thread(fn, stop))
    waiter = asyncio.ensure_future(cancel.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            stop.set()
    except BaseException:
        stop.set()
        raise
    finally:
        waiter.cancel()
        # shield: the thread cannot be interrupted, only asked to stop; wait for it.
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
    if stop.is_set():
        with contextlib.suppress(BaseException):
            task.result()
        raise DatasetCancelled("cancelled")
    return task.result()
