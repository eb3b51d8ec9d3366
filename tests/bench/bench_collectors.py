"""CPU cost of one telemetry sample: ``python tests/bench/bench_collectors.py``.

The agent samples the host and its GPUs on every heartbeat, so this cost is paid forever
on every server. Prints CPU milliseconds per sample (``time.process_time``) and what that
means as a share of one core at the heartbeat interval. Figures only; nothing is asserted.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a plain checkout

from agent.collectors import HostCollector, SimulatedProbe, make_probe

ITERATIONS = 500
WARMUP = 20
HEARTBEAT_INTERVAL_S = 2.0
MS_PER_S = 1000.0


def bench(label: str, fn: Callable[[], object]) -> None:
    for _ in range(WARMUP):
        fn()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(ITERATIONS):
        fn()
    cpu_ms = (time.process_time() - cpu0) / ITERATIONS * MS_PER_S
    wall_ms = (time.perf_counter() - wall0) / ITERATIONS * MS_PER_S
    core_pct = cpu_ms / (HEARTBEAT_INTERVAL_S * MS_PER_S) * 100
    print(
        f"{label:<38} {cpu_ms:8.3f} ms CPU/sample  {wall_ms:8.3f} ms wall/sample  "
        f"{core_pct:7.4f} % of one core at {HEARTBEAT_INTERVAL_S:g} s"
    )


def main() -> None:
    print(f"{ITERATIONS} samples each (after {WARMUP} warm-up)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "datasets"
        root.mkdir()
        host = HostCollector(Path(tmp), [root])
        bench("HostCollector.sample()", host.sample)
    bench('SimulatedProbe("8xA100-80GB").sample()', SimulatedProbe("8xA100-80GB").sample)
    probe, reason = make_probe("")
    if reason is None:
        bench(f"NvmlProbe.sample() ({len(probe.sample())} GPUs)", probe.sample)
        probe.close()
    else:
        print(f"NvmlProbe: not measured ({reason})")


if __name__ == "__main__":
    main()
