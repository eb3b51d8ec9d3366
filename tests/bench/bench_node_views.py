"""``GET /api/v1/nodes`` alone on a lab of simulated nodes (8 GPUs each), some running jobs.

    python tests/bench/bench_node_views.py [--nodes 1000] [--running 500] [--polls 20]

A real master; the nodes are registered and heartbeat once through the agent protocol
(``simnodes.py``), the jobs are placed and reported running (``bench_mixed.place_running``).
Then ``--polls`` GETs one after the other, twice: with nothing in between (what a
dashboard's poll costs while the nodes are quiet), and with a heartbeat from every node
before each poll (every node's report is new for each poll). Prints the median and p90
wall time of a poll and the master's CPU time per poll (the mean: /proc counts in 10 ms
ticks), with the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path

import httpx
from bench_mixed import place_running, register_all
from benchlab import BenchLab
from simnodes import SimNode, heartbeat_body


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def heartbeat_all(
    url: str, nodes: list[SimNode], bodies: dict[str, bytes], default: bytes
) -> None:
    sem = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:

        async def one(n: SimNode) -> None:
            async with sem:
                r = await c.post(
                    "/agent/v1/heartbeat", content=bodies.get(n.name, default), headers=n.headers
                )
            r.raise_for_status()

        await asyncio.gather(*(one(n) for n in nodes))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--running", type=int, default=500)
    ap.add_argument("--polls", type=int, default=20)
    args = ap.parse_args()
    with BenchLab("mlsm-bench-nodeviews-") as lab:
        lab.start_master()
        assert lab.master is not None
        pid = lab.master.pid
        nodes = asyncio.run(register_all(lab.url, lab.join_token(uses=args.nodes), args.nodes))
        running = asyncio.run(place_running(lab.url, lab.headers, nodes, args.running, lab.dir))
        default = heartbeat_body(lab.dir)
        bodies = {name: heartbeat_body(lab.dir, reps) for name, reps in running.items()}
        asyncio.run(heartbeat_all(lab.url, nodes, bodies, default))
        print(
            f"{args.nodes} nodes x 8 GPUs, {sum(len(v) for v in running.values())} jobs "
            f"running; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
        )
        with httpx.Client(base_url=lab.url, headers=lab.headers, timeout=120) as c:
            for label, beat in (("quiet nodes", False), ("a heartbeat per node between", True)):
                walls: list[float] = []
                cpus: list[float] = []
                size = 0
                for _ in range(args.polls):
                    if beat:
                        asyncio.run(heartbeat_all(lab.url, nodes, bodies, default))
                    c0 = cpu_s(pid)
                    t0 = time.perf_counter()
                    r = c.get("/api/v1/nodes")
                    walls.append((time.perf_counter() - t0) * 1000)
                    cpus.append((cpu_s(pid) - c0) * 1000)
                    r.raise_for_status()
                    size = len(r.content)
                walls.sort()
                print(
                    f"GET /api/v1/nodes, {label}: median {statistics.median(walls):.0f} ms, "
                    f"p90 {walls[int(0.9 * (len(walls) - 1))]:.0f} ms, master CPU "
                    f"{sum(cpus) / len(cpus):.1f} ms per poll, {size / 1e6:.1f} MB; "
                    f"load {os.getloadavg()[0]:.1f}"
                )


if __name__ == "__main__":
    main()
