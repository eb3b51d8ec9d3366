"""Calls a GPU probe from the event loop without ever blocking it.

NVML is a synchronous C library and can hang for seconds or forever on a GPU that is
falling off the bus. The agent's heartbeat must go on regardless, so each probe call runs
in its own daemon thread (a hung one cannot keep the process from exiting) and the agent
waits at most ``timeout_s`` for it. While a call hangs no second one is started: later
samples wait on the same call, so a sick driver costs one stuck thread, not one per
heartbeat.
"""

from __future__ import annotations

import asyncio
import threading

import msgspec

from agent.collectors.probe import GpuProbe
from mlsm.wire.agent import GpuSample

#: How long one heartbeat waits for the GPU probe before reporting it as timed out.
GPU_SAMPLE_TIMEOUT_S = 5.0
TIMED_OUT = "GPU probe timed out"
PROBE_THREAD_NAME = "mlsm-gpu-probe"


class AsyncGpuSampler:
    """Samples ``probe`` in a worker thread; see the module docstring for why."""

    def __init__(self, probe: GpuProbe, timeout_s: float = GPU_SAMPLE_TIMEOUT_S) -> None:
        self._probe = probe
        self._timeout_s = timeout_s
        self._pending: asyncio.Future[list[GpuSample]] | None = None
        self._last: list[GpuSample] = []

    @property
    def in_flight(self) -> bool:
        """Whether a probe call is still running (a hung one, between samples)."""
        return self._pending is not None and not self._pending.done()

    async def sample(self) -> tuple[list[GpuSample], str | None]:
        """The GPUs now, and ``None``; or the last good samples marked stale, and why.

        Never raises for a probe failure: a timeout or an exception becomes the error
        string, which the agent sends as the heartbeat's ``gpu_error``.
        """
        if self._pending is not None and self._pending.done():
            self._harvest(self._pending)  # a hung call finished since the last sample
            self._pending = None
        if self._pending is None:
            self._pending = self._start()
        pending = self._pending
        done, _ = await asyncio.wait({pending}, timeout=self._timeout_s)
        if not done:
            return self._stale(TIMED_OUT), TIMED_OUT
        self._pending = None
        try:
            samples = pending.result()
        except Exception as err:
            message = f"GPU probe failed: {type(err).__name__}: {err}"
            return self._stale(message), message
        self._last = samples
        return samples, None

    def _start(self) -> asyncio.Future[list[GpuSample]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[GpuSample]] = loop.create_future()

        def deliver(result: list[GpuSample] | None, error: Exception | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result or [])

        def run() -> None:
            result: list[GpuSample] | None = None
            error: Exception | None = None
            try:
                result = self._probe.sample()
            except Exception as err:
                error = err
            except BaseException as err:  # never leave the future pending forever
                error = RuntimeError(f"probe raised {type(err).__name__}")
            try:
                loop.call_soon_threadsafe(deliver, result, error)
            except RuntimeError:  # the loop closed while the probe hung: nobody waits
                return

        threading.Thread(target=run, name=PROBE_THREAD_NAME, daemon=True).start()
        return future

    def _harvest(self, future: asyncio.Future[list[GpuSample]]) -> None:
        """Keep a late result as the last good one; a late error is already outdated."""
        if future.cancelled():
            return
        if future.exception() is None:
            self._last = future.result()

    def _stale(self, error: str) -> list[GpuSample]:
        return [msgspec.structs.replace(sample, error=error) for sample in self._last]
