"""A 100 MB job log through the whole path, watching the master's and the CLI's memory.

    python tests/bench/bench_big_log.py [--mib 100]

A real master and agent; a job writes ``--mib`` MiB to stdout; the agent ships it in 1 MiB
chunks; then ``mlsm logs ID`` streams it to a file. Prints the time each step took, the
master's resident memory before and after (psutil), the CLI's peak resident memory
(``ru_maxrss`` of the child), and checks the copy equals the node's file byte for byte.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import resource
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
        except (httpx.HTTPError, KeyError, IndexError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} did not happen within {timeout:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=100)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mlsm-bench-log-"))
    env = dict(
        os.environ, MLSM_PASSWORD="bench-password", MLSM_LOG_LEVEL="warning", PYTHONPATH=str(ROOT)
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = []
    mlsm = [sys.executable, "-m", "mlsm"]
    try:
        master = subprocess.Popen(
            [
                *mlsm,
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
        procs.append(master)
        wait(lambda: httpx.get(f"{url}/healthz").status_code == 200, 30, "master start")
        tok = httpx.post(
            f"{url}/api/v1/auth/login", json={"username": "root", "password": "bench-password"}
        ).json()["token"]
        h = {"Authorization": f"Bearer {tok}"}
        jt = httpx.post(f"{url}/api/v1/join-tokens", json={}, headers=h).json()["token"]
        procs.append(
            subprocess.Popen(
                [
                    *mlsm,
                    "agent",
                    "--master",
                    url,
                    "--join-token",
                    jt,
                    "--name",
                    "log",
                    "--data-dir",
                    str(tmp / "a"),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait(
            lambda: httpx.get(f"{url}/api/v1/nodes", headers=h).json()[0]["state"] == "online",
            30,
            "agent online",
        )
        rss0 = psutil.Process(master.pid).memory_info().rss
        code = (
            "import sys\n"
            "line = (b'x' * 1023) + b'\\n'\n"
            f"for i in range({args.mib} * 1024):\n"
            "    sys.stdout.buffer.write(line)\n"
        )
        t0 = time.monotonic()
        jid = httpx.post(
            f"{url}/api/v1/jobs", json={"argv": [sys.executable, "-c", code]}, headers=h
        ).json()["job"]["id"]
        wait(
            lambda: httpx.get(f"{url}/api/v1/jobs/{jid}", headers=h).json()["state"] == "succeeded",
            600,
            "job end",
        )
        t_ship = time.monotonic() - t0
        rss1 = psutil.Process(master.pid).memory_info().rss
        out = tmp / "copy.log"
        t1 = time.monotonic()
        with open(out, "wb") as fh:
            subprocess.run(
                [*mlsm, "logs", str(jid)],
                env=dict(env, MLSM_URL=url, MLSM_TOKEN=tok),
                stdout=fh,
                check=True,
            )
        t_read = time.monotonic() - t1
        cli_peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        rss2 = psutil.Process(master.pid).memory_info().rss
        node_file = tmp / "a" / "jobs" / str(jid) / "output.log"
        same = filecmp.cmp(node_file, out, shallow=False)
        size = node_file.stat().st_size
        print(
            f"log of {size / 2**20:.1f} MiB: written and shipped in {t_ship:.1f} s, read back by `mlsm logs` in {t_read:.1f} s"
        )
        print(
            f"master RSS: {rss0 / 2**20:.0f} MiB before, {rss1 / 2**20:.0f} MiB after shipping, {rss2 / 2**20:.0f} MiB after streaming"
        )
        print(
            f"`mlsm logs` peak RSS: {cli_peak_kib / 1024:.0f} MiB (the only child that has exited)"
        )
        print(f"copy identical to the node's output.log: {same}")
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
