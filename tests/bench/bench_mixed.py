"""One master under mixed load: heartbeats, dashboards, submissions and log shipping at once.

    python tests/bench/bench_mixed.py [--db sqlite|postgres] [--minutes 10] [--nodes 5000]
        [--pollers 100] [--submit-rate 500] [--running 500] [--hb-connections 50]

A real master (one process) and simulated nodes (:mod:`simnodes`), registered through the
agent protocol. The load:

- **heartbeats**: ``wrk`` (Debian's package) POSTs MessagePack heartbeats with 8 simulated
  GPUs, rotating over the node secrets, paced by a Lua ``delay()`` so that every node
  heartbeats every ``--interval`` seconds (5,000 nodes / 2 s = 2,500/s); one ``wrk`` run
  per minute, so each minute has its own percentiles. The nodes that run jobs list them.
- **dashboards**: ``--pollers`` clients, each making the overview screen's three GETs
  (``/api/v1/summary``, ``/api/v1/nodes``, running jobs) every 2 s (the dashboard's
  ``POLL_S``).
- **submissions** at ``--submit-rate`` jobs/s (jobs no node can take: they stay queued).
- **log shipping**: ``--running`` jobs placed on the first nodes and reported running;
  each ships a 200-byte chunk every second through the agent's log route.

Per minute it prints the heartbeat rate achieved and p50/p99 (wrk's), the submit rate
and p99, the dashboard polls and their p99, log chunks, the nodes that are not online
(stale must stay 0), the master's RSS and the load average. The load tool runs in this
process and wrk beside it: on a small machine they compete with the master for the CPU,
so the rates achieved are printed beside the targets. Figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from benchlab import BenchLab, bench_database
from simnodes import MSGPACK, SimNode, events_body, heartbeat_body, node_info

from mlsm import PROTOCOL_VERSION
from mlsm.wire import agent as w

POLL_S = 2.0  # the dashboard's refresh (tui.app.POLL_S)
LOG_EVERY_S = 1.0
LOG_CHUNK = b"x" * 199 + b"\n"
REGISTER_CONCURRENCY = 32
SUBMIT_CONCURRENCY = 64
JOBS_PER_NODE = 10  # the running jobs sit on the first nodes, this many each
SUBMIT_BODY = {"argv": ["true"], "labels": {"bench": "nowhere"}}

LUA = """
local secrets = {}
for line in io.lines("%(secrets)s") do secrets[#secrets + 1] = line end
local function slurp(p) local f = io.open(p, "rb"); local b = f:read("*all"); f:close(); return b end
local body = slurp("%(body)s")
local special = {}
for i = 1, %(special)d do special[i] = slurp("%(dir)s/hb" .. i .. ".bin") end
local i = math.random(#secrets)
local d = %(delay)d
function delay() return d end
request = function()
  i = i %% #secrets + 1
  local b = special[i] or body
  return wrk.format("POST", "/agent/v1/heartbeat",
    {["Content-Type"] = "application/msgpack", ["Authorization"] = "Node " .. secrets[i]}, b)
end
"""


@dataclass
class Minute:
    submit: list[float] = field(default_factory=list)
    poll: list[float] = field(default_factory=list)
    logs: int = 0
    errors: int = 0


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_wrk(url: str, lua: Path, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res: dict[str, float] = {"rps": float(m.group(1)) if m else 0.0}
    for p in ("50", "99"):
        m = re.search(rf"\s{p}(?:\.000)?%\s+([\d.]+)(us|ms|s)", out)
        if m:
            res[f"p{p}"] = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = float(m.group(1)) if m else 0.0
    return res


async def register_all(url: str, join_token: str, n: int) -> list[SimNode]:
    sem = asyncio.Semaphore(REGISTER_CONCURRENCY)
    info = node_info()
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:

        async def one(i: int) -> SimNode:
            name = f"sim{i:05d}"
            req = w.RegisterRequest(
                protocol=PROTOCOL_VERSION, join_token=join_token, name=name, info=info
            )
            async with sem:
                r = await c.post(
                    "/agent/v1/register", content=w.encoder.encode(req), headers=MSGPACK
                )
            r.raise_for_status()
            return SimNode(name, w.decode_register_reply(r.content).node_secret)

        return list(await asyncio.gather(*(one(i) for i in range(n))))


async def place_running(
    url: str, headers: dict[str, str], nodes: list[SimNode], n_jobs: int, tmp: Path
) -> dict[str, list[w.JobReport]]:
    """``n_jobs`` jobs placed on the first nodes and reported running there: node name ->
    its job reports (its heartbeats list them from now on)."""
    hosts = nodes[: max(1, (n_jobs + JOBS_PER_NODE - 1) // JOBS_PER_NODE)]
    hb = heartbeat_body(tmp)
    running: dict[str, list[w.JobReport]] = {}
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        for node in hosts:  # online before jobs can be placed there
            r = await c.post("/agent/v1/heartbeat", content=hb, headers=node.headers)
            r.raise_for_status()
        specs = [
            {"argv": ["sleep", "infinity"], "node": hosts[i % len(hosts)].name}
            for i in range(n_jobs)
        ]
        r = await c.post("/api/v1/jobs/bulk", json={"jobs": specs}, headers=headers)
        r.raise_for_status()
        now = time.time()
        deadline = time.monotonic() + 300
        while sum(len(v) for v in running.values()) < n_jobs and time.monotonic() < deadline:
            for node in hosts:
                poll = w.CommandPoll(protocol=PROTOCOL_VERSION, wait_s=0)
                r = await c.post(
                    "/agent/v1/commands", content=w.encoder.encode(poll), headers=node.headers
                )
                cmds = w.decode_batch(r.content).commands
                starts = [x for x in cmds if isinstance(x, w.StartJob)]
                if not cmds:
                    continue
                ack = w.CommandPoll(protocol=PROTOCOL_VERSION, wait_s=0, ack=[x.id for x in cmds])
                await c.post(
                    "/agent/v1/commands", content=w.encoder.encode(ack), headers=node.headers
                )
                reps = [
                    w.JobReport(
                        job_id=s.job.job_id,
                        attempt=s.job.attempt,
                        state="running",
                        pid=1000 + s.job.job_id,
                        started_at=now,
                    )
                    for s in starts
                ]
                if reps:
                    running.setdefault(node.name, []).extend(reps)
                    r = await c.post(
                        "/agent/v1/events", content=events_body(reps), headers=node.headers
                    )
                    r.raise_for_status()
            await asyncio.sleep(0.2)
    return running


async def load(
    args: argparse.Namespace,
    url: str,
    headers: dict[str, str],
    by_name: dict[str, SimNode],
    running: dict[str, list[w.JobReport]],
    minutes: list[Minute],
    stop: asyncio.Event,
) -> None:
    limits = httpx.Limits(max_connections=args.pollers + SUBMIT_CONCURRENCY + 64)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:

        async def submitter() -> None:
            sem = asyncio.Semaphore(SUBMIT_CONCURRENCY)
            t0 = time.monotonic()
            sent = 0

            async def one() -> None:
                try:
                    t = time.perf_counter()
                    r = await c.post("/api/v1/jobs", json=SUBMIT_BODY, headers=headers)
                    r.raise_for_status()
                    minutes[-1].submit.append((time.perf_counter() - t) * 1000)
                except httpx.HTTPError:
                    minutes[-1].errors += 1
                finally:
                    sem.release()

            while not stop.is_set():
                due = int((time.monotonic() - t0) * args.submit_rate)
                while sent < due and not stop.is_set():
                    await sem.acquire()
                    asyncio.get_running_loop().create_task(one())
                    sent += 1
                await asyncio.sleep(0.01)

        async def poller(k: int) -> None:
            await asyncio.sleep(POLL_S * k / max(args.pollers, 1))
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    await asyncio.gather(
                        c.get("/api/v1/summary", headers=headers),
                        c.get("/api/v1/nodes", headers=headers),
                        c.get(
                            "/api/v1/jobs",
                            params={"state": "running", "limit": 5000},
                            headers=headers,
                        ),
                    )
                    minutes[-1].poll.append((time.perf_counter() - t) * 1000)
                except httpx.HTTPError:
                    minutes[-1].errors += 1
                await asyncio.sleep(max(0.0, POLL_S - (time.perf_counter() - t)))

        async def shipper(node: SimNode, rep: w.JobReport, k: int) -> None:
            await asyncio.sleep(LOG_EVERY_S * k / max(args.running, 1))
            offset = 0
            while not stop.is_set():
                t = time.perf_counter()
                chunk = w.LogChunk(
                    job_id=rep.job_id, attempt=rep.attempt, offset=offset, data=LOG_CHUNK
                )
                try:
                    r = await c.post(
                        "/agent/v1/logs", content=w.encoder.encode(chunk), headers=node.headers
                    )
                    offset = w.decode_log_ack(r.content).next_offset
                    minutes[-1].logs += 1
                except (httpx.HTTPError, ValueError):
                    minutes[-1].errors += 1
                await asyncio.sleep(max(0.0, LOG_EVERY_S - (time.perf_counter() - t)))

        tasks = [asyncio.create_task(submitter())]
        tasks += [asyncio.create_task(poller(k)) for k in range(args.pollers)]
        k = 0
        for name, reps in running.items():
            for rep in reps:
                tasks.append(asyncio.create_task(shipper(by_name[name], rep, k)))
                k += 1
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def drive(
    args: argparse.Namespace,
    lab: BenchLab,
    by_name: dict[str, SimNode],
    running: dict[str, list[w.JobReport]],
    lua: Path,
) -> None:
    assert lab.master is not None
    minutes: list[Minute] = [Minute()]
    stop = asyncio.Event()
    loader = asyncio.create_task(load(args, lab.url, lab.headers, by_name, running, minutes, stop))
    print(
        f"{'min':>3} {'hb/s':>6} {'hb p50':>7} {'hb p99':>7} {'sub/s':>6} {'sub p99':>8} "
        f"{'polls/s':>7} {'poll p99':>8} {'logs/s':>6} {'errs':>5} {'stale':>5} "
        f"{'offline':>7} {'RSS MB':>7} {'load1':>5}"
    )
    async with httpx.AsyncClient(base_url=lab.url, timeout=120) as c:
        for minute in range(1, args.minutes + 1):
            hb = await asyncio.to_thread(run_wrk, lab.url, lua, 60, args.hb_connections)
            cur = minutes[-1]
            minutes.append(Minute())
            r = await c.get("/api/v1/nodes", headers=lab.headers)
            states = [n["state"] for n in r.json()]
            stale = states.count("stale")
            offline = states.count("offline")
            print(
                f"{minute:3d} {hb['rps']:6.0f} {hb.get('p50', 0):7.1f} {hb.get('p99', 0):7.1f} "
                f"{len(cur.submit) / 60:6.0f} {pct(cur.submit, 0.99):8.1f} "
                f"{len(cur.poll) / 60:7.1f} {pct(cur.poll, 0.99):8.0f} {cur.logs / 60:6.0f} "
                f"{cur.errors + int(hb['non2xx']):5d} {stale:5d} {offline:7d} "
                f"{rss_mb(lab.master.pid):7.0f} {os.getloadavg()[0]:5.1f}",
                flush=True,
            )
    stop.set()
    await loader
    subs = [x for m in minutes for x in m.submit]
    if subs:
        print(f"submit median {statistics.median(subs):.1f} ms over {len(subs)} submissions")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="sqlite")
    ap.add_argument("--minutes", type=int, default=10)
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--interval", type=float, default=2.0, help="heartbeat interval per node")
    ap.add_argument("--pollers", type=int, default=100)
    ap.add_argument("--submit-rate", type=float, default=500.0)
    ap.add_argument("--running", type=int, default=500)
    ap.add_argument("--hb-connections", type=int, default=50)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("needs wrk (apt-get install wrk)")
    with bench_database(args.db) as db_url, BenchLab("mlsm-bench-mixed-", db_url) as lab:
        lab.start_master()
        assert lab.master is not None
        t0 = time.perf_counter()
        nodes = asyncio.run(register_all(lab.url, lab.join_token(uses=args.nodes), args.nodes))
        by_name = {n.name: n for n in nodes}
        t_reg = time.perf_counter() - t0
        running = asyncio.run(place_running(lab.url, lab.headers, nodes, args.running, lab.dir))
        n_running = sum(len(v) for v in running.values())
        tmp = lab.dir
        (tmp / "secrets.txt").write_text("\n".join(n.secret for n in nodes) + "\n")
        (tmp / "body.bin").write_bytes(heartbeat_body(tmp))
        hosts = len(running)
        for i, node in enumerate(nodes[:hosts], start=1):  # Lua indexes from 1
            (tmp / f"hb{i}.bin").write_bytes(heartbeat_body(tmp, running.get(node.name, [])))
        rate = args.nodes / args.interval
        delay_ms = max(0, int(args.hb_connections * 1000 / rate))
        lua = tmp / "hb.lua"
        lua.write_text(
            LUA
            % {
                "secrets": tmp / "secrets.txt",
                "body": tmp / "body.bin",
                "dir": tmp,
                "special": hosts,
                "delay": delay_ms,
            }
        )
        print(
            f"db={args.db}: {args.nodes} nodes registered in {t_reg:.0f} s; {n_running} jobs "
            f"running on {hosts} nodes; targets: heartbeats {rate:.0f}/s ({args.hb_connections} "
            f"connections, {delay_ms} ms apart), submits {args.submit_rate:.0f}/s, "
            f"{args.pollers} dashboards every {POLL_S:g} s, {n_running} log chunks/s; "
            f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
        )
        asyncio.run(drive(args, lab, by_name, running, lua))


if __name__ == "__main__":
    main()
