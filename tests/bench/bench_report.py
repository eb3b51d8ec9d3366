"""One agent report that ends many jobs: how long the master takes to apply it.

    python tests/bench/bench_report.py [--jobs 1000] [--db sqlite|postgres]

A real master and one simulated node (:mod:`simnodes`). ``--jobs`` jobs are submitted for
that node and placed there; one ``/agent/v1/events`` report says they all run, then one
says they all ended, with mixed ends (exit 0, exit 1, cancelled by the agent, failed to
start, lost: a fifth each, the lost ones with retries so they are requeued). Prints the
time of each report call and of the placement. Figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import time

import httpx
from benchlab import BenchLab, bench_database, wait
from simnodes import events_body, heartbeat_body, poll, register

from mlsm.wire import agent as w

PLACE_TIMEOUT_S = 600.0


def ends(jobs: list[tuple[int, int]]) -> list[w.JobReport]:
    now = time.time()
    out = []
    for i, (jid, attempt) in enumerate(jobs):
        kind = i % 5
        if kind == 0:
            rep = w.JobReport(
                job_id=jid, attempt=attempt, state="exited", exit_code=0, ended_at=now
            )
        elif kind == 1:
            rep = w.JobReport(
                job_id=jid, attempt=attempt, state="exited", exit_code=1, ended_at=now
            )
        elif kind == 2:
            rep = w.JobReport(
                job_id=jid,
                attempt=attempt,
                state="exited",
                end_kind="cancelled",
                reason="cancelled on the node",
                ended_at=now,
            )
        elif kind == 3:
            rep = w.JobReport(
                job_id=jid, attempt=attempt, state="failed_to_start", reason="no venv"
            )
        else:
            rep = w.JobReport(job_id=jid, attempt=attempt, state="lost", reason="process vanished")
        out.append(rep)
    return out


def profiler(lab: BenchLab) -> subprocess.Popen[bytes] | None:
    """With ``BENCH_PROFILE=path``: py-spy samples the master until stopped (raw output)."""
    if not os.environ.get("BENCH_PROFILE") or lab.master is None:
        return None
    spy = subprocess.Popen(
        [
            "py-spy",
            "record",
            "--pid",
            str(lab.master.pid),
            "-f",
            "raw",
            "-o",
            os.environ["BENCH_PROFILE"],
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1)  # py-spy attaches
    return spy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--db", default="sqlite")
    args = ap.parse_args()
    with bench_database(args.db) as db_url, BenchLab("mlsm-bench-report-", db_url) as lab:
        lab.start_master()
        with httpx.Client(base_url=lab.url, timeout=600) as c:
            (node,) = register(c, lab.join_token(), ["sim0"])
            hb = heartbeat_body(lab.dir)
            c.post("/agent/v1/heartbeat", content=hb, headers=node.headers).raise_for_status()
            body = {"argv": ["true"], "node": "sim0", "retries": 1}
            t0 = time.perf_counter()
            for _ in range(args.jobs):
                c.post("/api/v1/jobs", json=body, headers=lab.headers).raise_for_status()
            t_submit = time.perf_counter() - t0

            def assigned() -> bool:
                c.post("/agent/v1/heartbeat", content=hb, headers=node.headers)
                r = c.get(
                    "/api/v1/jobs", params={"state": "assigned", "limit": 1}, headers=lab.headers
                )
                return bool(r.json()["total"] == args.jobs)

            t0 = time.perf_counter()
            wait(assigned, PLACE_TIMEOUT_S, f"{args.jobs} jobs assigned")
            t_place = time.perf_counter() - t0
            starts: list[w.StartJob] = []
            ack: list[int] = []
            while batch := poll(c, node, ack):  # a poll answers a bounded batch
                ack = [cmd.id for cmd in batch]
                starts += [cmd for cmd in batch if isinstance(cmd, w.StartJob)]
            jobs = [(s.job.job_id, s.job.attempt) for s in starts]
            spy = profiler(lab)
            now = time.time()
            running = [
                w.JobReport(job_id=j, attempt=a, state="running", pid=10_000 + j, started_at=now)
                for j, a in jobs
            ]
            t0 = time.perf_counter()
            c.post(
                "/agent/v1/events", content=events_body(running), headers=node.headers
            ).raise_for_status()
            t_run = time.perf_counter() - t0
            t0 = time.perf_counter()
            c.post(
                "/agent/v1/events", content=events_body(ends(jobs)), headers=node.headers
            ).raise_for_status()
            t_end = time.perf_counter() - t0
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
            states: dict[str, int] = {}
            for st in ("queued", "assigned", "running", "succeeded", "failed", "cancelled"):
                r = c.get("/api/v1/jobs", params={"state": st, "limit": 1}, headers=lab.headers)
                states[st] = r.json()["total"]
        print(
            f"db={args.db} jobs={args.jobs}: {len(starts)} StartJob commands; "
            f"submits {t_submit:.1f} s (sequential), placement {t_place:.2f} s"
        )
        print(f"report of {len(jobs)} starts: {t_run * 1000:.0f} ms")
        print(f"report of {len(jobs)} ends (mixed): {t_end * 1000:.0f} ms")
        print(f"states after: {states}")


if __name__ == "__main__":
    main()
