"""The agent's telemetry collectors.

Public: :class:`HostCollector` (host facts and samples) and, for GPUs, :func:`make_probe`
(picks NVML, the simulated probe or none), the :class:`GpuProbe` interface with its three
probes, and :class:`AsyncGpuSampler`, through which the agent calls a probe without
blocking its event loop. Everything else in this package is private.
"""

from agent.collectors.gpu import (
    GPU_SAMPLE_TIMEOUT_S,
    AsyncGpuSampler,
    GpuProbe,
    GpuProbeUnavailable,
    NoGpuProbe,
    NvmlProbe,
    ProbeKind,
    SimulatedProbe,
    make_probe,
)
from agent.collectors.host import HostCollector

__all__ = [
    "GPU_SAMPLE_TIMEOUT_S",
    "AsyncGpuSampler",
    "GpuProbe",
    "GpuProbeUnavailable",
    "HostCollector",
    "NoGpuProbe",
    "NvmlProbe",
    "ProbeKind",
    "SimulatedProbe",
    "make_probe",
]
