"""Check NvmlProbe against a real NVIDIA driver: ``python tests/gpu/check_nvml.py``.

Meant for a GPU machine (the unit tests there skip the no-GPU path and run the ``gpu``
ones). Prints the driver facts and three samples as JSON, checks that the fields are
plausible, samples once more through AsyncGpuSampler, and ends with "NVML CHECK OK"
(exit 0) or the first failed check (exit 1). Needs only this repo plus psutil, msgspec
and nvidia-ml-py.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a plain checkout

import msgspec

from agent.collectors import AsyncGpuSampler, make_probe
from mlsm.wire.agent import GpuSample

SAMPLES = 3
SAMPLE_GAP_S = 0.5  # let utilisation counters move between samples


def _show(label: str, value: object) -> None:
    print(f"--- {label}")
    print(msgspec.json.format(msgspec.json.encode(value)).decode())


def _check(gpu: GpuSample) -> list[str]:
    """What is implausible about one sample (empty when all is well)."""
    problems = []
    if gpu.mem_total <= 0:
        problems.append("mem_total <= 0")
    if not 0 <= gpu.mem_used <= gpu.mem_total:
        problems.append(f"mem_used {gpu.mem_used} outside 0..{gpu.mem_total}")
    if not gpu.name:
        problems.append("empty name")
    if not gpu.uuid.startswith("GPU-"):
        problems.append(f"uuid {gpu.uuid!r} does not start with GPU-")
    if gpu.temperature <= 0:
        problems.append(f"temperature {gpu.temperature}")
    if gpu.power_limit_w <= 0:
        problems.append(f"power_limit_w {gpu.power_limit_w}")
    if gpu.simulated:
        problems.append("marked simulated")
    return problems


def main() -> int:
    probe, reason = make_probe("")
    if reason is not None:
        print(f"NVML CHECK FAILED: no NVML probe: {reason}")
        return 1
    print(f"probe kind: {probe.kind}")
    _show("describe()", probe.describe())
    problems: list[str] = []
    for round_ in range(SAMPLES):
        started = time.perf_counter()
        samples = probe.sample()
        took_ms = (time.perf_counter() - started) * 1000
        _show(f"sample {round_ + 1} ({took_ms:.1f} ms)", samples)
        if not samples:
            problems.append("sample() returned no GPUs")
        for gpu in samples:
            problems += [f"GPU {gpu.index}: {p}" for p in _check(gpu)]
            if gpu.error:
                print(f"WARNING: GPU {gpu.index} reported error: {gpu.error}")
        time.sleep(SAMPLE_GAP_S)

    samples, error = asyncio.run(AsyncGpuSampler(probe).sample())
    _show("AsyncGpuSampler.sample()", {"gpus": len(samples), "error": error})
    if error is not None or not samples:
        problems.append(f"AsyncGpuSampler: {error or 'no GPUs'}")
    probe.close()

    if problems:
        print("NVML CHECK FAILED:")
        print("\n".join(f"  {p}" for p in problems))
        return 1
    print("NVML CHECK OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
