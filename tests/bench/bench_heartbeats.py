"""Master heartbeat ingestion: N simulated nodes with 8 GPUs each, driven by wrk.

    python tests/bench/bench_heartbeats.py [--nodes 500] [--seconds 15] [--connections 64]

Starts a real master (one uvicorn process, SQLite) and registers N nodes through the
agent protocol, then has ``wrk`` (Debian's package) POST MessagePack heartbeats with 8
simulated GPUs, rotating over the N node secrets. For comparison it runs the same load
against a plain Litestar app with one heartbeat endpoint that only decodes the body and
answers, served the same way (the "peer"). Prints requests/s and latency percentiles of
both. Figures only: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
from benchlab import ROOT, BenchLab, free_port, wait

from agent.collectors import HostCollector, SimulatedProbe
from mlsm import PROTOCOL_VERSION
from mlsm.wire import agent as w

PEER_START_S = 30.0
PEER_APP = textwrap.dedent(
    """
    import msgspec
    from litestar import Litestar, Request, Response, post
    from mlsm.wire import agent as w

    @post("/agent/v1/heartbeat", status_code=200)
    async def heartbeat(request: Request) -> Response:
        hb = w.decode_heartbeat(await request.body())
        assert request.headers.get("authorization")
        return Response(content=w.encoder.encode(w.HeartbeatReply()), media_type=w.MSGPACK)

    app = Litestar([heartbeat])
    """
)

LUA = """
local secrets = {}
for line in io.lines("%(secrets)s") do secrets[#secrets + 1] = line end
local f = io.open("%(body)s", "rb"); local body = f:read("*all"); f:close()
local i = 0
request = function()
  i = i %% #secrets + 1
  return wrk.format("POST", "/agent/v1/heartbeat",
    {["Content-Type"] = "application/msgpack", ["Authorization"] = "Node " .. secrets[i]}, body)
end
"""


def run_wrk(url: str, lua: Path, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    res: dict[str, float] = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "90", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        if m:
            v = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
            res[f"p{pct}_ms"] = v
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = float(errs.group(1)) if errs else 0.0
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("needs wrk (apt-get install wrk)")
    with BenchLab("mlsm-bench-hb-") as lab:
        lab.start_master()
        assert lab.master is not None
        master, url, tmp, env = lab.master, lab.url, lab.dir, lab.env
        jt = lab.join_token(uses=args.nodes)
        secrets = []
        with httpx.Client(base_url=url) as c:
            for i in range(args.nodes):
                req = w.RegisterRequest(
                    protocol=PROTOCOL_VERSION, join_token=jt, name=f"bench{i:04d}"
                )
                r = c.post(
                    "/agent/v1/register",
                    content=w.encoder.encode(req),
                    headers={"content-type": w.MSGPACK},
                )
                secrets.append(w.decode_register_reply(r.content).node_secret)
        probe = SimulatedProbe("8xA100-80GB", identity="bench")
        hb = w.Heartbeat(
            protocol=PROTOCOL_VERSION,
            seq=1,
            sent_at=time.time(),
            host=HostCollector(tmp).sample(),
            gpus=probe.sample(),
        )
        body = w.encoder.encode(hb)
        (tmp / "secrets.txt").write_text("\n".join(secrets) + "\n")
        (tmp / "body.bin").write_bytes(body)
        lua = tmp / "hb.lua"
        lua.write_text(LUA % {"secrets": tmp / "secrets.txt", "body": tmp / "body.bin"})
        print(f"{args.nodes} nodes registered; heartbeat body {len(body)} bytes (8 GPUs)")
        spy = None
        if os.environ.get("BENCH_PROFILE"):  # py-spy samples the master while wrk runs
            spy = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(master.pid),
                    "-d",
                    str(args.seconds),
                    "-f",
                    "raw",
                    "-o",
                    os.environ["BENCH_PROFILE"],
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        mine = run_wrk(url, lua, args.seconds, args.connections)
        if spy is not None:
            spy.wait(timeout=60)
        lab.stop(master)

        peer_dir = tmp / "peer"
        peer_dir.mkdir()
        (peer_dir / "peer_app.py").write_text(PEER_APP)
        pport = free_port()
        peer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "peer_app:app",
                "--port",
                str(pport),
                "--log-level",
                "warning",
                "--no-access-log",
                "--backlog",
                "4096",
            ],
            cwd=peer_dir,
            env=dict(env, PYTHONPATH=f"{peer_dir}:{ROOT}"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        lab.procs.append(peer)
        purl = f"http://127.0.0.1:{pport}"
        wait(lambda: httpx.get(purl + "/").status_code > 0, PEER_START_S, "the peer app answering")
        theirs = run_wrk(purl, lua, args.seconds, args.connections)
        print(f"{'':34} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
        for name, r in (
            ("mlsm master (SQLite, full ingest)", mine),
            ("plain Litestar decode+reply peer", theirs),
        ):
            print(
                f"{name:34} {r['rps']:8.0f} {r.get('p50_ms', 0):8.2f} {r.get('p90_ms', 0):8.2f} {r.get('p99_ms', 0):8.2f} {r['non2xx']:8.0f}"
            )
        print(f"mlsm/peer throughput: {mine['rps'] / theirs['rps']:.2f}")


if __name__ == "__main__":
    main()
