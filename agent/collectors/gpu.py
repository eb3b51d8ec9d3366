"""GPU telemetry: choose the probe for this node, and everything the agent needs with it.

The pieces live in their own modules (:mod:`~agent.collectors.probe` for the interface,
:mod:`~agent.collectors.nvml`, :mod:`~agent.collectors.simulated`,
:mod:`~agent.collectors.sampler`); this module picks one and re-exports them, so the agent
imports GPU things from one place.
"""

from __future__ import annotations

from pathlib import Path

from agent.collectors.nvml import NvmlProbe
from agent.collectors.probe import GpuProbe, GpuProbeUnavailable, NoGpuProbe, ProbeKind
from agent.collectors.sampler import GPU_SAMPLE_TIMEOUT_S, TIMED_OUT, AsyncGpuSampler
from agent.collectors.simulated import MODELS, SimulatedProbe, parse_spec

__all__ = [
    "GPU_SAMPLE_TIMEOUT_S",
    "MODELS",
    "TIMED_OUT",
    "AsyncGpuSampler",
    "GpuProbe",
    "GpuProbeUnavailable",
    "NoGpuProbe",
    "NvmlProbe",
    "ProbeKind",
    "SimulatedProbe",
    "make_probe",
    "parse_spec",
]


def make_probe(
    simulate: str = "", control_file: Path | None = None, *, identity: str | None = None
) -> tuple[GpuProbe, str | None]:
    """The probe for this node, and why there is no real one (``None`` when there is).

    ``simulate`` (the ``--simulate-gpus`` spec) wins over real GPUs; a bad spec raises
    ``ValueError`` for the CLI to show. Without it NVML is tried, and a node without a
    usable driver gets a :class:`NoGpuProbe` whose reason the agent reports as
    ``gpu_error``. ``identity`` (the node name) keeps simulated UUIDs apart when several
    agents simulate on one host.
    """
    if simulate:
        return SimulatedProbe(simulate, control_file, identity=identity), None
    try:
        return NvmlProbe(), None
    except GpuProbeUnavailable as err:
        return NoGpuProbe(err.reason), err.reason
