"""What the benchmark scripts share: a real master (and agents) in a temporary directory.

    with BenchLab() as lab:
        lab.start_master()
        lab.start_agent("n1", "--simulate-gpus", "8xA100-80GB")
        lab.wait_online()
        ... lab.url, lab.headers, lab.token, lab.pid_of_master ...

Processes are ended and the directory removed on exit. Nothing here measures anything.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "bench-password"
POLL_S = 0.05


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(cond: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll ``cond`` until it is true; transient HTTP and lookup errors count as 'not yet'."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except (httpx.HTTPError, OSError, ValueError, KeyError, IndexError):
            pass
        time.sleep(POLL_S)
    raise SystemExit(f"{what} did not happen within {timeout:.0f} s")


class BenchLab:
    def __init__(self, prefix: str = "mlsm-bench-") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.env = dict(
            os.environ, MLSM_PASSWORD=PASSWORD, MLSM_LOG_LEVEL="warning", PYTHONPATH=str(ROOT)
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.master: subprocess.Popen[bytes] | None = None
        self.token = ""

    def __enter__(self) -> BenchLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def mlsm(self, *args: str, log: str | None = None) -> subprocess.Popen[bytes]:
        err: Any = open(self.dir / log, "wb") if log else subprocess.DEVNULL
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlsm", *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        self.procs.append(proc)
        return proc

    def start_master(self) -> None:
        self.master = self.mlsm(
            "master",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.dir / "m"),
            "--init-admin",
            "root",
            log="master.log",
        )
        wait(lambda: httpx.get(f"{self.url}/healthz").status_code == 200, 30, "master start")
        self.token = httpx.post(
            f"{self.url}/api/v1/auth/login", json={"username": "root", "password": PASSWORD}
        ).json()["token"]

    def join_token(self, uses: int = 1) -> str:
        return str(
            httpx.post(
                f"{self.url}/api/v1/join-tokens",
                json={"uses": uses, "ttl_s": 3600},
                headers=self.headers,
            ).json()["token"]
        )

    def start_agent(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        return self.mlsm(
            "agent",
            "--master",
            self.url,
            "--join-token",
            self.join_token(),
            "--name",
            name,
            "--data-dir",
            str(self.agent_dir(name)),
            *extra,
        )

    def agent_dir(self, name: str) -> Path:
        return self.dir / "agents" / name

    def wait_online(self, count: int = 1, timeout: float = 30) -> None:
        wait(
            lambda: (
                sum(
                    n["state"] == "online"
                    for n in httpx.get(f"{self.url}/api/v1/nodes", headers=self.headers).json()
                )
                >= count
            ),
            timeout,
            f"{count} node(s) online",
        )

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)
        shutil.rmtree(self.dir, ignore_errors=True)
