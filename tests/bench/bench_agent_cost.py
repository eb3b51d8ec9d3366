"""What an idle agent costs its server: CPU and resident memory at the default interval.

    python tests/bench/bench_agent_cost.py [--gpus 8xA100-80GB] [--seconds 60]

Starts a real master and a real agent (simulated GPUs, the default 2 s heartbeat), lets it
settle, then measures the agent process's CPU time over the window (psutil) and its
resident set size. Prints the figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
from benchlab import BenchLab

SETTLE_S = 10.0


def _py_spy(out: str, pid: int, seconds: float) -> subprocess.Popen[bytes] | None:
    """Profile ``pid`` over the window, when asked (``pip install py-spy`` to use it)."""
    if not out:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    argv = [spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-f", "raw", "-o", out]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", default="8xA100-80GB")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--py-spy", default="", help="profile the window into FILE (raw stacks)")
    args = ap.parse_args()
    with BenchLab("mlsm-bench-agent-") as lab:
        lab.start_master()
        agent = lab.start_agent("cost", "--simulate-gpus", args.gpus)
        lab.wait_online()
        time.sleep(SETTLE_S)  # let start-up work (imports, first samples) pass before measuring
        p = psutil.Process(agent.pid)
        spy = _py_spy(args.py_spy, agent.pid, args.seconds)
        t0 = p.cpu_times()
        w0 = time.monotonic()
        time.sleep(args.seconds)  # the measurement window itself
        t1 = p.cpu_times()
        if spy is not None:
            spy.wait()
        wall = time.monotonic() - w0
        cpu = (t1.user - t0.user + t1.system - t0.system) / wall * 100
        rss = p.memory_info().rss / 2**20
        n = httpx.get(f"{lab.url}/api/v1/nodes", headers=lab.headers).json()[0]
        print(f"agent with {args.gpus} (simulated), heartbeat 2 s, window {wall:.0f} s")
        print(
            f"  CPU: {cpu:.2f}% of one core   RSS: {rss:.1f} MiB   GPUs reported: {len(n['gpus'])}"
        )


if __name__ == "__main__":
    main()
