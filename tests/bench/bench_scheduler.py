"""One scheduling pass over a full queue: 10,000 queued jobs, 200 nodes x 8 GPUs.

The busy GPUs are held by running jobs with time limits (some without, some preemptible),
queued jobs carry time limits (5 % are preemptible), and three nodes have a user's
reservation, so the pass does backfill with a reservation, preemption and holds.

Run: ``.venv/bin/python tests/bench/bench_scheduler.py [passes] [--jobs N] [--nodes N]
[--gpus N]``. Prints the load average, the minimum, median and maximum time per pass (wall
clock, and the process's CPU time, which other people's processes disturb less), how many
jobs were placed, and a digest of the whole result (placements, reasons, cancellations,
reservations, preemptions), so a change can show that it decides exactly as before;
the target is under 200 ms. At size (``--jobs 100000 --nodes 1000 --gpus 8``) the nodes,
running jobs and reservations scale with ``--nodes`` (three reservations per 200 nodes)
and the target is under 500 ms. The defaults give the figures recorded before the flags.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import time

from mlsm.master.scheduler import (
    GpuSlot,
    Hold,
    NodeCap,
    PendingJob,
    Running,
    SchedContext,
    SchedResult,
    schedule,
)

GIB = 1 << 30
N_JOBS = 10_000
N_NODES = 200
SEED = 4
NOW = 1_700_100_000.0
HOUR = 3600.0


def build(
    seed: int = SEED, n_jobs: int = N_JOBS, n_nodes: int = N_NODES, n_gpus: int = 8
) -> tuple[list[PendingJob], list[NodeCap], SchedContext]:
    rnd = random.Random(seed)
    nodes = []
    running = []
    width = len(f"{n_nodes - 1}") if n_nodes > 1000 else 3
    for i in range(n_nodes):
        mem = (24 if i % 4 == 0 else 40 if i % 4 == 1 else 80) * GIB
        busy = rnd.choice([0, 0, 2, 4, 6, 8])  # some partly or fully busy
        busy = min(busy, n_gpus)
        gpus = [GpuSlot(g, mem, free=g >= busy) for g in range(n_gpus)]
        for g in range(0, busy, 2):  # 2-GPU jobs hold the busy ones
            ends = NOW + rnd.uniform(0.1, 48) * HOUR if rnd.random() < 0.9 else float("inf")
            running.append(
                Running(
                    job_id=100 + len(running),
                    node=f"gpu{i:0{width}d}",
                    gpus=(g, g + 1),
                    ends_at=ends,
                    preemptible=rnd.random() < 0.1,
                    started_at=NOW - rnd.uniform(0, 10) * HOUR,
                )
            )
        nodes.append(
            NodeCap(
                name=f"gpu{i:0{width}d}",
                schedulable=i % 25 != 0,  # 8 draining
                reason_unschedulable="" if i % 25 else "draining",
                gpus=gpus,
                cpus_free=float(rnd.choice([16, 32, 64])),
                mem_free_bytes=rnd.choice([128, 256, 512]) * GIB,
                labels={"rack": f"r{i % 10}"},
                datasets=frozenset({f"ds{i % 20}"}),
                runtimes=frozenset({"process", "venv", "docker"} if i % 2 else {"process"}),
            )
        )
    users = [f"user{u}" for u in range(12)]
    jobs = []
    for j in range(n_jobs):
        jid = 1000 + j
        gpus = rnd.choice([0, 1, 1, 1, 2, 2, 4, 8])
        jobs.append(
            PendingJob(
                id=jid,
                user=rnd.choice(users),
                priority=rnd.choice([0, 0, 0, 0, 10, -5]),
                submitted_at=1_700_000_000.0 + j,
                gpus=gpus,
                gpu_mem_bytes=rnd.choice([0, 0, 0, 20 * GIB, 40 * GIB, 70 * GIB]) if gpus else 0,
                cpus=float(rnd.choice([0, 0, 2, 4, 8])),
                mem_bytes=rnd.choice([0, 0, 16, 64]) * GIB,
                node=f"gpu{rnd.randrange(n_nodes):0{width}d}" if rnd.random() < 0.02 else None,
                labels={"rack": f"r{rnd.randrange(10)}"} if rnd.random() < 0.05 else {},
                datasets=(f"ds{rnd.randrange(25)}",) if rnd.random() < 0.1 else (),
                env_kind=rnd.choice(["process", "process", "venv", "docker"]),
                deps=((jid - rnd.randint(1, 50), "ok"),) if rnd.random() < 0.1 else (),
                array_parent=jid // 100 if rnd.random() < 0.2 else None,
                array_throttle=8,
                time_limit_s=rnd.choice([0, 1, 4, 24, 24, 72]) * HOUR,
                preemptible=rnd.random() < 0.05,
            )
        )
    states = ["queued", "running", "succeeded", "succeeded", "failed"]
    dep_states = {d: rnd.choice(states) for job in jobs for d, _ in job.deps}
    ctx = SchedContext(
        dep_states=dep_states,
        running_array={p: rnd.randint(0, 8) for p in range(10, 10 + 110 * n_jobs // N_JOBS)},
        user_gpus_in_use={u: rnd.randint(0, 20) for u in users},
        user_caps={u: 64 for u in users[:6]},
        usage={u: rnd.uniform(0, 100) for u in users},
        now=NOW,
        running=running,
        holds=[
            Hold(
                f"gpu{base + n:0{width}d}",
                (0, 1, 2, 3),
                NOW + s * HOUR,
                NOW + (s + 8) * HOUR,
                users[(k + base) % len(users)],
            )
            for base in range(0, n_nodes, 200)
            for k, (n, s) in enumerate([(7, -1), (42, 2), (133, 12)])
            if base + n < n_nodes
        ],
    )
    return jobs, nodes, ctx


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("passes", type=int, nargs="?", default=7)
    ap.add_argument("--jobs", type=int, default=N_JOBS)
    ap.add_argument("--nodes", type=int, default=N_NODES)
    ap.add_argument("--gpus", type=int, default=8)
    args = ap.parse_args()
    passes = args.passes
    jobs, nodes, ctx = build(n_jobs=args.jobs, n_nodes=args.nodes, n_gpus=args.gpus)
    times, cpu = [], []
    result = None
    load = os.getloadavg()[0]
    for _ in range(passes):
        c0, t0 = time.process_time(), time.perf_counter()
        result = schedule(jobs, nodes, ctx)
        times.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    assert result is not None
    gpus = sum(len(p.gpu_indices) for p in result.placements)
    print(f"jobs={len(jobs)} nodes={len(nodes)} passes={passes}")
    print(f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(
        f"min {min(times):.1f} ms  median {statistics.median(times):.1f} ms"
        f"  max {max(times):.1f} ms per pass (CPU min {min(cpu):.1f}"
        f"  median {statistics.median(cpu):.1f} ms)"
    )
    print(
        f"placed {len(result.placements)} jobs ({gpus} GPUs), waiting {len(result.reasons)},"
        f" never {len(result.never)}, reserved for {len(result.expected_start)},"
        f" preempting {len(result.preempt)}"
    )
    top = {}
    for why in result.reasons.values():
        top[why] = top.get(why, 0) + 1
    for why, n in sorted(top.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {n:5d}  {why}")
    print(f"result digest {digest(result)}")


def digest(result: SchedResult) -> str:
    """A hash of every decision of a pass (the order of placements included)."""
    h = hashlib.sha256()
    for p in result.placements:
        h.update(f"p{p.job_id}:{p.node}:{p.gpu_indices}".encode())
    for name, part in (
        ("r", result.reasons),
        ("n", result.never),
        ("e", result.expected_start),
        ("x", result.preempt),
    ):
        for k in sorted(part):
            h.update(f"{name}{k}:{part[k]!r}".encode())
    return h.hexdigest()[:16]


if __name__ == "__main__":
    main()
