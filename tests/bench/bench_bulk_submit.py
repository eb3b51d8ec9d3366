"""Bulk submission through the CLI: ``mlsm submit --from FILE`` on a real master.

    python tests/bench/bench_bulk_submit.py [--jobs 2000] [--runs 3] [--run-them 200]

1. ``--jobs`` command lines in a job file, submitted by the real ``mlsm`` executable in
   one call, timed from starting the CLI to its exit (CLI start-up, reading and checking
   the file, the one request, the master's checks and the one transaction that stores every
   job). The jobs ask for a label no node has, so they stay queued: the figure is the
   submission, not the agent. Best and median of ``--runs``.
2. ``--run-them`` jobs (``true``) submitted the same way to a node with an agent, timed
   until the last one has succeeded: the rate end to end.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import httpx
from benchlab import MLSM, BenchLab, wait

CALL_TIMEOUT_S = 120.0


def submit_file(
    lab: BenchLab, lines: list[str], extra: tuple[str, ...] = ()
) -> tuple[float, list[int]]:
    path = lab.dir / f"jobs-{time.monotonic_ns()}.txt"
    path.write_text("".join(lines))
    env = {**lab.env, "MLSM_URL": lab.url, "MLSM_TOKEN": lab.token}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*MLSM, "submit", "-q", "--no-code", *extra, "--from", str(path)],
        capture_output=True,
        env=env,
        check=True,
    )
    elapsed = time.perf_counter() - t0
    return elapsed, [int(x) for x in proc.stdout.split()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--run-them", type=int, default=200)
    args = ap.parse_args()
    with BenchLab("mlsm-bench-bulk-") as lab:
        lab.start_master()
        lines = [f"python train.py --seed {i}\n" for i in range(args.jobs)]
        rates = []
        for _ in range(args.runs):
            s, ids = submit_file(lab, lines, ("--label", "bench=nowhere"))
            assert len(ids) == args.jobs
            rates.append(args.jobs / s)
        print(
            f"submit --from, {args.jobs} jobs through the CLI: best {max(rates):,.0f} jobs/s, "
            f"median {statistics.median(rates):,.0f} jobs/s ({args.runs} runs)"
        )
        if args.run_them:
            with httpx.Client(base_url=lab.url, headers=lab.headers, timeout=CALL_TIMEOUT_S) as c:
                open_ids = [
                    j["id"] for j in c.get("/api/v1/jobs", params={"limit": 10000}).json()["jobs"]
                ]
                for i in range(0, len(open_ids), 10000):
                    c.post("/api/v1/jobs/cancel", json={"ids": open_ids[i : i + 10000]})
            lab.start_agent("bench", "--simulate-gpus", "2xA100-80GB")
            lab.wait_online()
            t0 = time.perf_counter()
            _, ids = submit_file(lab, ["true\n"] * args.run_them)
            last = max(ids)
            with httpx.Client(base_url=lab.url, headers=lab.headers) as c:
                wait(
                    lambda: (
                        c.get("/api/v1/jobs", params={"state": "succeeded", "limit": 1}).json()[
                            "total"
                        ]
                        >= args.run_them
                    ),
                    600,
                    f"job {last} and the rest to succeed",
                )
            s = time.perf_counter() - t0
            print(
                f"{args.run_them} jobs (true) submitted with --from and run to the end: {args.run_them / s:,.1f} jobs/s"
            )


if __name__ == "__main__":
    main()
