"""Dashboard benchmark: time to first data, idle CPU on the overview, resident memory.

Runs the real app headless (``App.run_test``) over the FAKE data source (a test double
from ``tests/tui/fakes.py``) holding a simulated lab of 100 nodes x 8 GPUs and 1,000 jobs,
so it measures the dashboard itself (rendering, table updates by key, polling every 2 s),
not the master. Run: ``.venv/bin/python tests/bench/bench_tui.py [--idle-s 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tui"))

from fakes import FakeSource, big_lab

from tui.app import MlsmApp


async def main(idle_s: float, nodes: int, jobs: int) -> None:
    proc = psutil.Process()
    source = FakeSource(lab=big_lab(nodes, jobs))
    app = MlsmApp(source, poll_s=2.0)
    start = time.monotonic()
    async with app.run_test(size=(160, 48)) as pilot:
        while app.first_data_at is None:
            await pilot.pause(0.01)
        first = app.first_data_at - start
        await pilot.pause(2.5)  # one more poll so the history is filled and caches are warm
        cpu0 = proc.cpu_times()
        t0 = time.monotonic()
        await asyncio.sleep(idle_s)
        cpu1 = proc.cpu_times()
        wall = time.monotonic() - t0
        busy = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        rss = proc.memory_info().rss
        rows = app.screen.query_one("#nodes").row_count
    print(f"lab: {nodes} nodes x 8 GPUs, {jobs} jobs (fake source, in process, headless 160x48)")
    print(f"rows on the overview: {rows}")
    print(f"time to first data: {first * 1000:.0f} ms")
    print(
        f"CPU while idle on the overview ({idle_s:.0f} s, polling every 2 s): {busy / wall * 100:.1f}% of one core"
    )
    print(f"resident memory: {rss / 2**20:.0f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.idle_s, args.nodes, args.jobs))
