"""The one way the tests start a real ``mlsm master``: :class:`MasterProcess`.

A master process on a free loopback port with its own data dir, log file and isolated HOME
(:func:`tests.support.env.isolated_env`), a superadmin made at first start
(``--init-admin``, the password through ``MLSM_PASSWORD``), ready when ``/healthz``
answers, ended with SIGTERM (SIGKILL at the deadline). It runs in a session of its own, so
a Ctrl-C meant for pytest does not reach it and teardown stays in charge.

What is layered on it:

- :class:`tests.integration.helpers.Master`: API helpers (users, tokens, raw requests,
  the CLI) for the integration suite's ``master`` / ``master_factory`` fixtures;
- :class:`tests.integration.lab.Lab`: a master with a fast heartbeat plus real agents;
- ``real_master`` in ``tests/tui/conftest.py``: the dashboard against a real master;
- ``BenchLab`` in ``tests/bench/benchlab.py``: the benchmarks' master.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import httpx

from mlsm.client import Client
from tests.support.env import isolated_env
from tests.support.procs import STOP_TIMEOUT_S, end_process, free_port
from tests.support.wait import wait_until

#: The console script of this environment (the real executable users run).
MLSM = str(Path(sys.executable).with_name("mlsm"))
#: The superadmin a master makes at its first start, unless told otherwise.
ADMIN = "root"
ADMIN_PASSWORD = "root-password-1"
#: How long a master may take to answer /healthz after it was started.
START_TIMEOUT_S = 30.0
#: One /healthz probe while waiting for the start.
HEALTH_PROBE_TIMEOUT_S = 1.0
#: Lines of the master's log shown when it exits before answering.
LOG_TAIL_LINES = 20


class MasterExited(RuntimeError):
    """The master process ended before it answered: waiting longer cannot help."""


class MasterProcess:
    """A real ``mlsm master`` process (see the module's docstring).

    ``extra_args`` go after the usual arguments; ``env`` is added to the isolated
    environment; ``command`` is what runs ``mlsm`` (``[sys.executable, "-m", "mlsm"]``
    where no console script is installed); ``popen`` holds extra ``subprocess.Popen``
    arguments (``umask``, ``preexec_fn``). The port stays the same across restarts.
    """

    #: ``https`` for a master serving TLS (its subclass checks its own certificate).
    scheme = "http"

    def __init__(
        self,
        data_dir: Path,
        *,
        log_path: Path,
        home: Path,
        admin: str = ADMIN,
        password: str = ADMIN_PASSWORD,
        port: int | None = None,
        database_url: str | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        command: Sequence[str] = (MLSM,),
        popen: Mapping[str, Any] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.home = home
        self.home.mkdir(parents=True, exist_ok=True)
        self.admin = admin
        self.password = password
        self.port = port or free_port()
        self.database_url = database_url
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(env or {})
        self.command = tuple(command)
        self.popen = dict(popen or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ lifecycle
    def argv(self) -> list[str]:
        args = [*self.command, "master", "--host", "127.0.0.1", "--port", str(self.port)]
        args += ["--data-dir", str(self.data_dir), "--init-admin", self.admin]
        if self.database_url:
            args += ["--database-url", self.database_url]
        return args + list(self.extra_args)

    def environment(self) -> dict[str, str]:
        return isolated_env(self.home, MLSM_PASSWORD=self.password, **self.extra_env)

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process without waiting for it to answer (its output goes to the log)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self.popen,
            )
        return self.proc

    def answering(self) -> bool:
        """One ``/healthz`` probe: does the master answer now?"""
        try:
            resp = httpx.get(f"{self.url}/healthz", timeout=HEALTH_PROBE_TIMEOUT_S)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until the master answers; :class:`MasterExited` at once if it ends first."""
        proc = self.proc
        assert proc is not None, "the master was not started"

        def ready() -> bool:
            if proc.poll() is not None:
                raise MasterExited(
                    f"the master exited with {proc.returncode} before answering:\n{self.log_tail()}"
                )
            return self.answering()

        wait_until(ready, timeout, f"the master at {self.url} answering /healthz")

    def start(self) -> Self:
        self.spawn()
        self.wait_ready()
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """``sig`` (SIGTERM), then SIGKILL at the deadline; the exit status (None: not
        running)."""
        proc, self.proc = self.proc, None
        return None if proc is None else end_process(proc, sig, timeout)

    def kill(self) -> int | None:
        return self.stop(signal.SIGKILL)

    def restart(self) -> Self:
        self.stop()
        return self.start()

    # ------------------------------------------------------------------ reading
    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_records(self) -> list[dict[str, Any]]:
        """The master's JSON log lines (lines that are not JSON are skipped)."""
        out = []
        for line in self.log_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out

    # ------------------------------------------------------------------ API
    def session_token(self, user: str | None = None, password: str | None = None) -> str:
        """A new session token of ``user`` (the superadmin by default), through the typed
        client."""
        with Client(self.url) as c:
            return c.login(user or self.admin, password or self.password).token


__all__ = [
    "ADMIN",
    "ADMIN_PASSWORD",
    "MLSM",
    "START_TIMEOUT_S",
    "MasterExited",
    "MasterProcess",
]
