"""What the benchmark scripts share: a real master (and agents) in a temporary directory.

    with BenchLab() as lab:
        lab.start_master()
        lab.start_agent("n1", "--simulate-gpus", "8xA100-80GB")
        lab.wait_online()
        ... lab.url, lab.headers, lab.token, lab.master.pid ...

The master is the tests' one harness (:class:`tests.support.master.MasterProcess`), run as
``python -m mlsm`` so a plain checkout works; waits are :func:`tests.support.wait.wait_until`.
Processes are ended and the directory removed on exit. Nothing here measures anything.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: make mlsm and tests.support importable

from tests.support.env import isolated_env  # noqa: E402
from tests.support.master import MasterProcess  # noqa: E402
from tests.support.procs import end_process, free_port  # noqa: E402
from tests.support.wait import wait_until  # noqa: E402

ADMIN = "root"
PASSWORD = "bench-password"
#: What a benchmark's ``python -m mlsm`` processes run as.
MLSM = (sys.executable, "-m", "mlsm")
#: Errors that mean "not yet" while a lab settles: no answer yet, no file yet.
NOT_YET = (AssertionError, httpx.HTTPError, OSError, ValueError, KeyError, IndexError)
START_TIMEOUT_S = 30.0

__all__ = ["ROOT", "BenchLab", "bench_database", "free_port", "wait"]


T = TypeVar("T")


def wait(cond: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``cond`` until it is true (:data:`NOT_YET` errors count as "not yet") and return
    what it returned; a missed deadline ends the script with one line."""
    try:
        return wait_until(cond, timeout, what, retry_on=NOT_YET)
    except AssertionError as exc:
        raise SystemExit(str(exc)) from None


class BenchLab:
    def __init__(self, prefix: str = "mlsm-bench-", database_url: str | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.env = isolated_env(
            self.dir / "home",
            MLSM_PASSWORD=PASSWORD,
            MLSM_LOG_LEVEL="warning",
            PYTHONPATH=str(ROOT),
        )
        self.server = MasterProcess(
            self.dir / "m",
            log_path=self.dir / "master.log",
            home=self.dir / "home",
            admin=ADMIN,
            password=PASSWORD,
            command=MLSM,
            database_url=database_url,
            env={"MLSM_LOG_LEVEL": "warning", "PYTHONPATH": str(ROOT)},
        )
        self.port = self.server.port
        self.url = self.server.url
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
            [*MLSM, *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        self.procs.append(proc)
        return proc

    def start_master(self) -> None:
        self.master = self.server.start().proc
        self.token = self.server.session_token()

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
            log=f"agent-{name}.log",
        )

    def agent_dir(self, name: str) -> Path:
        return self.dir / "agents" / name

    def wait_online(self, count: int = 1, timeout: float = START_TIMEOUT_S) -> None:
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
        """End ``proc`` (SIGTERM, SIGKILL at the deadline): an agent or the master."""
        if proc is self.server.proc:
            self.server.stop()
        else:
            end_process(proc)
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)
        self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def bench_database(kind: str) -> Iterator[str | None]:
    """The master's database for a benchmark: None (SQLite in its data dir) or a fresh
    PostgreSQL database on the tests' server (``MLSM_TEST_POSTGRES_URL``), dropped after."""
    if kind == "sqlite":
        yield None
        return
    if kind != "postgres":
        raise SystemExit(f"--db must be sqlite or postgres, not {kind!r}")
    from tests.support.postgres import fresh_database

    with fresh_database(prefix="mlsm_bench_") as url:
        yield url
