"""What an idle agent costs its server: CPU and resident memory at the default interval.

    python tests/bench/bench_agent_cost.py [--gpus 8xA100-80GB] [--seconds 60]

Starts a real master and a real agent (simulated GPUs, the default 2 s heartbeat), lets it
settle, then measures the agent process's CPU time over the window (psutil) and its
resident set size. Prints the figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
SETTLE_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():  # type: ignore[operator]
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what} did not happen within {timeout:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", default="8xA100-80GB")
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mlsm-bench-agent-"))
    env = dict(
        os.environ, MLSM_PASSWORD="bench-password", MLSM_LOG_LEVEL="warning", PYTHONPATH=str(ROOT)
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mlsm",
                    "master",
                    "--port",
                    str(port),
                    "--data-dir",
                    str(tmp / "m"),
                    "--init-admin",
                    "root",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait(lambda: httpx.get(f"{url}/healthz").status_code == 200, 30, "master start")
        tok = httpx.post(
            f"{url}/api/v1/auth/login", json={"username": "root", "password": "bench-password"}
        ).json()["token"]
        h = {"Authorization": f"Bearer {tok}"}
        jt = httpx.post(f"{url}/api/v1/join-tokens", json={}, headers=h).json()["token"]
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlsm",
                "agent",
                "--master",
                url,
                "--join-token",
                jt,
                "--name",
                "cost",
                "--data-dir",
                str(tmp / "a"),
                "--simulate-gpus",
                args.gpus,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(agent)
        wait(
            lambda: any(
                n["state"] == "online" for n in httpx.get(f"{url}/api/v1/nodes", headers=h).json()
            ),
            30,
            "agent online",
        )
        time.sleep(SETTLE_S)  # let start-up work (imports, first samples) pass before measuring
        p = psutil.Process(agent.pid)
        t0 = p.cpu_times()
        w0 = time.monotonic()
        time.sleep(args.seconds)  # the measurement window itself
        t1 = p.cpu_times()
        wall = time.monotonic() - w0
        cpu = (t1.user - t0.user + t1.system - t0.system) / wall * 100
        rss = p.memory_info().rss / 2**20
        n = httpx.get(f"{url}/api/v1/nodes", headers=h).json()[0]
        print(f"agent with {args.gpus} (simulated), heartbeat {2.0:g} s, window {wall:.0f} s")
        print(
            f"  CPU: {cpu:.2f}% of one core   RSS: {rss:.1f} MiB   GPUs reported: {len(n['gpus'])}"
        )
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
