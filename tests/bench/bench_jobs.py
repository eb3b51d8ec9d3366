"""Job figures on a real master and agent: API submit rate and idle submit-to-start.

    python tests/bench/bench_jobs.py [--jobs 2000] [--concurrency 16] [--latency-runs 20]
                                     [--db sqlite|postgres] [--prefill N] [--no-agent]

1. Submit rate: ``--jobs`` submissions through the JSON API from ``--concurrency``
   keep-alive connections. The jobs ask for a label no node has, so they stay queued and
   every submission also triggers the scheduler (each gets a waiting reason).
2. Idle submit-to-start: on an idle node, the time from the submit call to the job's
   first instruction (the job writes ``time.time()`` to a file in its output dir), over
   ``--latency-runs`` sequential jobs; median and p10/p90.
``--db postgres``: the master's database is a fresh PostgreSQL database on the tests'
server (``MLSM_TEST_POSTGRES_URL``). ``--prefill N``: N jobs (the same unplaceable kind)
are queued through the bulk route before the flood, so the flood measures submissions
into a queue of that size (and the scheduler passes over it). ``--no-agent`` skips the
agent and part 2. Prints figures; asserts nothing. ``shared/peers/bench_mlsm.sh`` measures the same through
the CLI beside Slurm, task-spooler and nq.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

import httpx
from benchlab import BenchLab, bench_database, wait

PREFILL_PER_CALL = 5000  # jobs per bulk submission while prefilling
BODY = {"argv": ["true"], "labels": {"bench": "nowhere"}}


async def submit_flood(url: str, token: str, n: int, concurrency: int) -> tuple[float, list[float]]:
    body = BODY
    lat: list[float] = []
    todo = iter(range(n))
    async with httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {token}"},
        limits=httpx.Limits(max_connections=concurrency),
    ) as c:

        async def worker() -> None:
            for _ in todo:
                t = time.perf_counter()
                r = await c.post("/api/v1/jobs", json=body)
                r.raise_for_status()
                lat.append((time.perf_counter() - t) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t0, lat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency-runs", type=int, default=20)
    ap.add_argument("--db", default="sqlite", help="sqlite or postgres")
    ap.add_argument("--prefill", type=int, default=0, help="jobs queued before the flood")
    ap.add_argument("--no-agent", action="store_true", help="the flood only (no part 2)")
    args = ap.parse_args()
    with bench_database(args.db) as db_url, BenchLab("mlsm-bench-jobs-", db_url) as lab:
        lab.start_master()
        url, h, tok = lab.url, lab.headers, lab.token
        agent_dir = lab.agent_dir("bench")
        runs = 0 if args.no_agent else args.latency_runs
        if runs:
            lab.start_agent("bench", "--simulate-gpus", "2xA100-80GB")
            lab.wait_online()

        # 2. idle submit-to-start first, on an empty queue
        starts = []
        with httpx.Client(base_url=url, headers=h, timeout=600) as c:
            for _ in range(runs):
                code = "import os, time; open(os.environ['MLSM_OUTPUT_DIR'] + '/t0', 'w').write(repr(time.time()))"
                t_submit = time.time()
                jid = c.post(
                    "/api/v1/jobs", json={"argv": [sys.executable, "-S", "-c", code]}
                ).json()["job"]["id"]
                f = agent_dir / "jobs" / str(jid) / "t0"
                wait(lambda f=f: f.stat().st_size > 0, 30, f"job {jid} start")
                starts.append((float(f.read_text()) - t_submit) * 1000)
                wait(
                    lambda jid=jid: c.get(f"/api/v1/jobs/{jid}").json()["state"] == "succeeded",
                    30,
                    f"job {jid} end",
                )
        # the job itself is a Python start (-S); the same job run directly costs:
        direct = []
        for _ in range(5 if runs else 0):
            t = time.time()
            out = subprocess.run(
                [sys.executable, "-S", "-c", "import time; print(repr(time.time()))"],
                capture_output=True,
                text=True,
            ).stdout
            direct.append((float(out) - t) * 1000)

        t0 = time.perf_counter()
        left = args.prefill
        with httpx.Client(base_url=url, headers=h, timeout=600) as c:
            while left > 0:
                n = min(left, PREFILL_PER_CALL)
                c.post("/api/v1/jobs/bulk", json={"jobs": [BODY] * n}).raise_for_status()
                left -= n
        if args.prefill:
            print(f"prefilled {args.prefill} queued jobs in {time.perf_counter() - t0:.1f} s")

        # 1. submit flood (BENCH_PROFILE=path: py-spy samples the master meanwhile)
        spy = None
        if os.environ.get("BENCH_PROFILE"):
            spy = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(lab.master.pid),
                    "-d",
                    "8",
                    "-f",
                    "raw",
                    "-o",
                    os.environ["BENCH_PROFILE"],
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        wall, lat = asyncio.run(submit_flood(url, tok, args.jobs, args.concurrency))
        if spy is not None:
            spy.wait(timeout=60)
        lat.sort()
        queued = httpx.get(
            f"{url}/api/v1/jobs", params={"state": "queued", "limit": 1}, headers=h, timeout=60
        ).json()
        reason = queued["jobs"][0]["reason"] if queued["jobs"] else ""
        print(
            f"db={args.db} prefill={args.prefill}: submit rate: {args.jobs / wall:.0f} jobs/s ({args.jobs} jobs, {args.concurrency} connections, {wall:.2f} s); "
            f"call median {statistics.median(lat):.1f} ms, p99 {lat[int(len(lat) * 0.99) - 1]:.1f} ms; {queued['total']} queued, reason: {reason!r}"
        )
        if not starts:
            return
        starts.sort()
        q = statistics.quantiles(starts, n=10)
        print(
            f"idle submit->first instruction: median {statistics.median(starts):.1f} ms, p10 {q[0]:.1f} / p90 {q[-1]:.1f} ms "
            f"over {len(starts)} jobs (of which the job's own Python start, run directly: median {statistics.median(direct):.1f} ms)"
        )


if __name__ == "__main__":
    main()
