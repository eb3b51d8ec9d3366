"""The GPU probe interface the agent samples GPUs through, and the probe for no GPUs.

Three probes implement it: :class:`~agent.collectors.nvml.NvmlProbe` (real NVIDIA GPUs),
:class:`~agent.collectors.simulated.SimulatedProbe` (made-up GPUs for tests and demos) and
:class:`NoGpuProbe` (a node without a usable driver). The agent never needs to know which
one it holds beyond ``kind``, which it reports to the master.
"""

from __future__ import annotations

from typing import Literal, Protocol

from mlsm.wire.agent import GpuSample

ProbeKind = Literal["nvml", "simulated", "none"]


class GpuProbeUnavailable(Exception):
    """This node has no usable GPU probe; ``reason`` says why in words a user can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class GpuProbe(Protocol):
    """Reads the GPUs of one node.

    ``sample()`` is synchronous and may block (NVML can hang on a sick GPU), which is why
    the agent calls it through :class:`~agent.collectors.sampler.AsyncGpuSampler`. It raises
    nothing for one failing GPU: that GPU's ``GpuSample.error`` says what went wrong and the
    other GPUs are still read.
    """

    kind: ProbeKind

    def describe(self) -> dict[str, str]:
        """Driver facts for ``NodeInfo``: keys ``driver_version`` and ``cuda_version``."""
        ...

    def sample(self) -> list[GpuSample]:
        """One sample per GPU, in index order."""
        ...

    def close(self) -> None:
        """Release the driver; further calls are not expected."""
        ...


class NoGpuProbe:
    """The probe of a node without GPUs: the agent reports ``reason`` as ``gpu_error``."""

    kind: ProbeKind = "none"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def describe(self) -> dict[str, str]:
        return {"driver_version": "", "cuda_version": ""}

    def sample(self) -> list[GpuSample]:
        return []

    def close(self) -> None:
        return None
