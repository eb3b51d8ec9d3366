"""Notifications off the hot path: the master's submit latency while a webhook backlog of a
burst of job ends is being delivered, against its idle figure.

    python tests/bench/bench_notify.py [--jobs 1000] [--samples 200] [--delay 0.2]

1. A real master; a node speaking the agent protocol from this script (so 1,000 jobs can
   end in one report without 1,000 processes on this machine); a webhook receiver on
   loopback that takes ``--delay`` seconds (200 ms) to answer each POST, subscribed
   lab-wide to every job event.
2. Idle figure: ``--samples`` sequential submits (of jobs that stay queued) before
   anything else happens; median, p90.
3. ``--jobs`` jobs are placed on the node, reported running, then all reported ended in
   one burst (one agent event call): thousands of webhook deliveries queue up behind a
   200 ms receiver. While they are being delivered, ``--samples`` submits again.
Prints both figures and their ratio; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx
import msgspec
from benchlab import BenchLab, wait

from mlsm import PROTOCOL_VERSION
from mlsm.wire import agent as w
from tests.support.receivers import WebhookReceiver

MSGPACK = {"content-type": w.MSGPACK}


class FakeNode:
    """The agent protocol, spoken from here: register, heartbeat, take StartJobs, report."""

    def __init__(self, lab: BenchLab, name: str) -> None:
        self.url = lab.url
        reply = self._post(
            "register",
            w.RegisterRequest(
                protocol=PROTOCOL_VERSION,
                join_token=lab.join_token(),
                name=name,
                info=w.NodeInfo(cpu_cores=64, mem_total=512 << 30, job_account="bench"),
            ),
            None,
        )
        self.secret = msgspec.msgpack.decode(reply, type=w.RegisterReply).node_secret
        self.acks: list[int] = []
        self.running: dict[int, int] = {}  # job id -> attempt

    def _post(self, route: str, body: object, secret: str | None) -> bytes:
        headers = dict(MSGPACK)
        if secret:
            headers["authorization"] = f"Node {secret}"
        resp = httpx.post(
            f"{self.url}/agent/v1/{route}",
            content=w.encoder.encode(body),
            headers=headers,
            timeout=60,
        )
        resp.raise_for_status()
        return resp.content

    def heartbeat(self) -> None:
        jobs = [
            w.JobReport(job_id=j, attempt=a, state="running", pid=1000 + j, started_at=time.time())
            for j, a in self.running.items()
        ]
        self._post("heartbeat", w.Heartbeat(protocol=PROTOCOL_VERSION, jobs=jobs), self.secret)

    def take_starts(self) -> int:
        poll = w.CommandPoll(protocol=PROTOCOL_VERSION, wait_s=0.2, ack=self.acks)
        batch = msgspec.msgpack.decode(
            self._post("commands", poll, self.secret), type=w.CommandBatch
        )
        self.acks = [c.id for c in batch.commands]
        for c in batch.commands:
            if isinstance(c, w.StartJob):
                self.running[c.job.job_id] = c.job.attempt
        return len(self.running)

    def end_all(self) -> None:
        now = time.time()
        reports = [
            w.JobReport(
                job_id=j, attempt=a, state="exited", exit_code=0, ended_at=now, end_kind="exit"
            )
            for j, a in self.running.items()
        ]
        self._post("events", w.JobEvents(protocol=PROTOCOL_VERSION, jobs=reports), self.secret)
        self.running.clear()


def submit_latencies(c: httpx.Client, n: int) -> list[float]:
    body = {"argv": ["true"], "labels": {"bench": "nowhere"}}  # stays queued
    out = []
    for _ in range(n):
        t = time.perf_counter()
        c.post("/api/v1/jobs", json=body).raise_for_status()
        out.append((time.perf_counter() - t) * 1000)
    return out


def figures(lat: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(lat, n=10)
    return statistics.median(lat), q[8]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--delay", type=float, default=0.2)
    args = ap.parse_args()
    with BenchLab() as lab, WebhookReceiver(delay_s=args.delay) as hook:
        lab.start_master()
        c = httpx.Client(base_url=lab.url, headers=lab.headers, timeout=60)
        c.patch(
            "/api/v1/settings", json={"webhook_allow_cidrs": ["127.0.0.0/8"]}
        ).raise_for_status()
        c.post(
            "/api/v1/notify", json={"url": hook.url, "on": ["job"], "lab_wide": True}
        ).raise_for_status()
        node = FakeNode(lab, "burst")
        node.heartbeat()
        idle = submit_latencies(c, args.samples)
        wait(lambda: len(hook.received) >= args.samples, 120, "the idle submits' webhooks")

        for _ in range(args.jobs):  # the burst's jobs: placed on the node at once
            c.post("/api/v1/jobs", json={"argv": ["true"], "node": "burst"}).raise_for_status()

        def placed() -> bool:
            node.heartbeat()
            return node.take_starts() >= args.jobs

        wait(placed, 300, f"{args.jobs} jobs placed on the node")
        node.heartbeat()  # all running
        before = len(hook.received)
        t0 = time.perf_counter()
        node.end_all()
        burst_ms = (time.perf_counter() - t0) * 1000
        busy = submit_latencies(c, args.samples)
        backlog = c.get("/api/v1/events", params={"limit": 1}).json()["last_id"]
        delivered = len(hook.received) - before
        i_med, i_p90 = figures(idle)
        b_med, b_p90 = figures(busy)
        print(f"jobs ended in one report: {args.jobs} (report took {burst_ms:.0f} ms)")
        print(f"receiver answers in {args.delay * 1000:.0f} ms; newest event id {backlog}")
        print(f"webhooks delivered while measuring: {delivered} (the rest still queued)")
        print(f"submit latency idle:        median {i_med:.1f} ms  p90 {i_p90:.1f} ms")
        print(f"submit latency during burst: median {b_med:.1f} ms  p90 {b_p90:.1f} ms")
        print(f"ratio (median): {b_med / i_med:.2f}")
        c.close()


if __name__ == "__main__":
    main()
