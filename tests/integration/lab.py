"""A lab on loopback for integration tests: a real ``mlsm master`` and real ``mlsm agent``
processes, the real ``mlsm`` CLI, and the typed client.

Each test module builds its own :class:`Lab` (module scope) under a temporary directory::

    @pytest.fixture(scope="module")
    def lab(tmp_path_factory):
        with Lab(tmp_path_factory.mktemp("nodes")) as lab:
            lab.start_master()
            yield lab

The master runs with a fast heartbeat (0.5 s), ``stale`` after 2 s and a 5 s lease, so node
state and lease tests take seconds. Every process the lab starts, and every job process
those agents started under the lab's directory, is killed when the lab closes.

Built on ``tests.support``: the master is a :class:`~tests.support.master.MasterProcess`,
every process gets :func:`~tests.support.env.isolated_env`, waits are
:func:`~tests.support.wait.wait_until`, and ``MLSM_TEST_DATABASE=postgresql`` gives the lab
a :func:`~tests.support.postgres.fresh_database`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec

from mlsm import errors
from mlsm.client import Client
from mlsm.wire import agent as w
from mlsm.wire import api
from tests.support.env import isolated_env
from tests.support.master import MLSM, MasterProcess
from tests.support.postgres import fresh_database
from tests.support.procs import end_process, free_port, kill_processes_under
from tests.support.wait import wait_until

ADMIN = "root"
PASSWORD = "integration-pass-1"
HEARTBEAT_S = 0.5
STALE_S = 2.0
LEASE_S = 5.0
START_DEADLINE_S = 30.0
DEADLINE_S = 20.0
CLI_TIMEOUT_S = 60.0
MASTER_ENV = {
    "MLSM_HEARTBEAT_INTERVAL": str(HEARTBEAT_S),
    "MLSM_STALE_AFTER": str(STALE_S),
    "MLSM_NODE_LEASE": str(LEASE_S),
}


def kill(proc: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> int:
    """Send ``sig`` (SIGKILL by default) to ``proc`` and reap it; returns its exit status."""
    return end_process(proc, sig)


@dataclass
class AgentProc:
    name: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    gpus: str = ""
    labels: tuple[str, ...] = ()

    @property
    def secret(self) -> str:
        return (self.data_dir / "node-secret").read_text().strip()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def job_log(self, job_id: int) -> bytes:
        return (self.data_dir / "jobs" / str(job_id) / "output.log").read_bytes()


@dataclass
class CliResult:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    stdout_bytes: bytes = b""

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class Lab:
    root: Path
    port: int = 0
    master_data: Path | None = None
    agents: dict[str, AgentProc] = field(default_factory=dict)
    token: str = ""
    _admin: Client | None = None
    _master: MasterProcess | None = None
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[Any] = field(default_factory=list)
    #: The master's database: SQLite in its data dir, or (``MLSM_TEST_DATABASE=postgresql``,
    #: as CI's second pass sets) a fresh PostgreSQL database made for this lab.
    database_url: str = ""
    _databases: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ environment
    def env(self, **extra: str) -> dict[str, str]:
        """The isolated environment (:func:`tests.support.env.isolated_env`) with HOME and
        the XDG dirs inside the lab, for every process the lab starts.

        Agents run every job as their own account (``MLSM_SINGLE_USER``), as on a one-person
        machine: the lab's users have no Unix accounts here. Tests of the account rule start
        agents with ``MLSM_SINGLE_USER="0"``.
        """
        base = {"PYTHONUNBUFFERED": "1", "MLSM_SINGLE_USER": "1"}
        return isolated_env(self.root / "home", **{**base, **extra})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(
        self, argv: list[str], log_name: str, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        log_path = self.root / "logs" / log_name
        log_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(log_path, "ab")
        self._logs.append(fh)
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, env=env
        )
        self._procs.append(proc)
        return proc

    # ------------------------------------------------------------------ master
    @property
    def master_proc(self) -> subprocess.Popen[bytes] | None:
        """The running master's process (None while it is stopped)."""
        return self._master.proc if self._master is not None else None

    def start_master(
        self, data_dir: Path | None = None, port: int | None = None, **env: str
    ) -> subprocess.Popen[bytes]:
        """Start (or restart, on the same port and data dir) the master; wait for /healthz.

        ``env`` is added to the master's environment (after the lab's fast heartbeat)."""
        self.master_data = data_dir or self.master_data or self.root / "master"
        self.port = port or self.port or free_port()
        if not self.database_url and os.environ.get("MLSM_TEST_DATABASE") == "postgresql":
            self.database_url = self._databases.enter_context(fresh_database(prefix="mlsm_l_"))
        self._master = MasterProcess(
            self.master_data,
            log_path=self.root / "logs" / "master.log",
            home=self.root / "home",
            admin=ADMIN,
            password=PASSWORD,
            port=self.port,
            database_url=self.database_url or None,
            env={"PYTHONUNBUFFERED": "1", "MLSM_SINGLE_USER": "1", **MASTER_ENV, **env},
        )
        self._master.start()
        assert self._master.proc is not None
        if not self.token:
            self.token = self.login(ADMIN, PASSWORD)
        return self._master.proc

    def stop_master(self, sig: int = signal.SIGTERM) -> int:
        assert self._master is not None and self._master.proc is not None
        code = self._master.stop(sig)
        assert code is not None
        return code

    def master_log(self) -> str:
        return self._master.log_text()[-5000:] if self._master is not None else ""

    def login(self, user: str, password: str) -> str:
        with Client(self.url) as c:
            return c.login(user, password).token

    @property
    def admin(self) -> Client:
        """The superadmin's client (its session survives master restarts)."""
        if self._admin is None:
            self._admin = Client(self.url, self.token)
        return self._admin

    def client(self, token: str) -> Client:
        return Client(self.url, token)

    def add_user(self, name: str, role: str = "member", password: str = PASSWORD) -> str:
        """Create a user; returns a session token of theirs."""
        self.admin.call(
            "POST",
            "/api/v1/users",
            json=api.UserCreate(username=name, password=password, role=role),
        )
        return self.login(name, password)

    def join_token(self, ttl_s: float = 3600.0, uses: int = 1) -> str:
        created = self.admin.call(
            "POST",
            "/api/v1/join-tokens",
            json=api.JoinTokenCreate(ttl_s=ttl_s, uses=uses),
            type=api.JoinTokenCreated,
        )
        return created.token

    # ------------------------------------------------------------------ agents
    def start_agent(
        self,
        name: str,
        gpus: str = "2xA100-80GB",
        data_dir: Path | None = None,
        token: str | None = None,
        labels: tuple[str, ...] = (),
        wait: bool = True,
        env: dict[str, str] | None = None,
        dataset_roots: list[Path] | tuple[Path, ...] = (),
        master: str = "",
        wrap: tuple[str, ...] = (),
        import_roots: list[Path] | tuple[Path, ...] = (),
    ) -> AgentProc:
        """Start an agent (a fresh join token unless ``token`` is given, "" for none).

        A restart of a known agent reuses its data dir (and so its node secret).
        ``dataset_roots`` (``import_roots``) are made if missing and given as
        ``--dataset-root`` (``--import-root``). ``master``
        is the master's URL as this agent reaches it (default: the lab's), ``wrap`` a
        command the agent runs under (``("ip", "netns", "exec", NS)``).
        """
        old = self.agents.get(name)
        data_dir = data_dir or (old.data_dir if old else self.root / "agents" / name)
        if token is None:
            token = "" if (data_dir / "node-secret").exists() else self.join_token()
        argv = [*wrap, MLSM, "agent", "--master", master or self.url, "--name", name]
        argv += ["--data-dir", str(data_dir)]
        if token:
            argv += ["--join-token", token]
        if gpus:
            argv += ["--simulate-gpus", gpus]
        for label in labels:
            argv += ["--label", label]
        for root in dataset_roots:
            root.mkdir(parents=True, exist_ok=True)
            argv += ["--dataset-root", str(root)]
        for root in import_roots:
            root.mkdir(parents=True, exist_ok=True)
            argv += ["--import-root", str(root)]
        proc = self._spawn(argv, f"agent-{name}.log", self.env(**(env or {})))
        agent = AgentProc(
            name, data_dir, proc, self.root / "logs" / f"agent-{name}.log", gpus, labels
        )
        self.agents[name] = agent
        if wait:
            self.wait_node_state(name, "online", START_DEADLINE_S)
        return agent

    def stop_agent(self, name: str, sig: int = signal.SIGTERM) -> int:
        return kill(self.agents[name].proc, sig)

    # ------------------------------------------------------------------ reading state
    def node(self, name: str) -> api.Node:
        return self.admin.call("GET", f"/api/v1/nodes/{name}", type=api.Node)

    def nodes(self) -> list[api.Node]:
        return self.admin.call("GET", "/api/v1/nodes", type=list[api.Node])

    def node_state(self, name: str) -> str | None:
        for n in self.nodes():
            if n.name == name:
                return n.state
        return None

    def wait_node_state(self, name: str, state: str, timeout: float = DEADLINE_S) -> api.Node:
        def check() -> api.Node | None:
            agent = self.agents.get(name)
            if agent is not None and agent.proc.poll() is not None and state == "online":
                raise RuntimeError(f"agent {name} exited:\n{agent.output()[-3000:]}")
            for n in self.nodes():
                if n.name == name and n.state == state:
                    return n
            return None

        return wait_until(check, timeout, f"node {name} to be {state}")

    def job(self, job_id: int, client: Client | None = None) -> api.Job:
        return (client or self.admin).call("GET", f"/api/v1/jobs/{job_id}", type=api.Job)

    def wait_job(
        self,
        job_id: int,
        states: str | tuple[str, ...] = api.FINAL_STATES,  # type: ignore[assignment]
        timeout: float = DEADLINE_S,
    ) -> api.Job:
        want = (states,) if isinstance(states, str) else tuple(states)

        def check() -> api.Job | None:
            j = self.job(job_id)
            return j if j.state in want else None

        return wait_until(check, timeout, f"job {job_id} to be {'/'.join(want)}")

    def end_all(self, timeout: float = DEADLINE_S) -> None:
        """Cancel every job not yet ended and every reservation, and wait for the jobs' ends
        (a test module's lab left as the next test expects it)."""
        res = self.admin.call("GET", "/api/v1/jobs", type=api.JobList)
        if res.jobs:
            # A job that ends between the listing and the cancel is a 409 for a single id.
            with contextlib.suppress(errors.Conflict):
                self.admin.call(
                    "POST",
                    "/api/v1/jobs/cancel",
                    json=api.CancelRequest(ids=[j.id for j in res.jobs]),
                )
            for j in res.jobs:
                self.wait_job(j.id, timeout=timeout)
        for r in self.admin.reservations.list():
            self.admin.reservations.cancel(r.id)

    def submit(self, *args: str, token: str | None = None, cwd: Path | None = None) -> int:
        """``mlsm submit ARGS`` through the real CLI (in ``cwd``, see :meth:`cli`); returns
        the job id."""
        res = self.cli("submit", "--json", *args, token=token, cwd=cwd)
        assert res.returncode == 0, res.stderr
        return int(res.json()["job"]["id"])

    def log(self, job_id: int) -> bytes:
        res = self.cli("logs", str(job_id))
        assert res.returncode == 0, res.stderr
        return res.stdout_bytes

    # ------------------------------------------------------------------ the CLI
    def cli(
        self,
        *args: str,
        token: str | None = None,
        timeout: float = CLI_TIMEOUT_S,
        cwd: Path | None = None,
    ) -> CliResult:
        """Run the real ``mlsm`` executable with MLSM_URL/MLSM_TOKEN set (never raises on rc).

        It runs in ``cwd``, by default an empty directory of the lab's (``mlsm submit``
        ships the directory it runs in: never the test's own)."""
        env = self.env(MLSM_URL=self.url, MLSM_TOKEN=self.token if token is None else token)
        if cwd is None:
            cwd = self.root / "cwd"
            cwd.mkdir(exist_ok=True)
        proc = subprocess.run(
            [MLSM, *args],
            capture_output=True,
            env=env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
        )
        return CliResult(
            args,
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
            proc.stdout,
        )

    def cli_popen(self, *args: str, token: str | None = None) -> subprocess.Popen[bytes]:
        env = self.env(MLSM_URL=self.url, MLSM_TOKEN=self.token if token is None else token)
        cwd = self.root / "cwd"
        cwd.mkdir(exist_ok=True)
        proc = subprocess.Popen(
            [MLSM, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd
        )
        self._procs.append(proc)
        return proc

    # ------------------------------------------------------------------ raw agent protocol
    def agent_call(self, path: str, body: bytes | Any, secret: str | None) -> httpx.Response:
        """POST a MessagePack body (a struct, or raw bytes) to ``/agent/v1/<path>``."""
        content = body if isinstance(body, bytes) else w.encoder.encode(body)
        headers = {"content-type": w.MSGPACK}
        if secret:
            headers["authorization"] = f"Node {secret}"
        return httpx.post(
            f"{self.url}/agent/v1/{path}", content=content, headers=headers, timeout=30.0
        )

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
        for proc in reversed(self._procs):
            with contextlib.suppress(Exception):
                kill(proc, signal.SIGKILL)
        if self._master is not None:
            with contextlib.suppress(Exception):
                self._master.kill()
        kill_processes_under(self.root)
        for fh in self._logs:
            fh.close()
        with contextlib.suppress(Exception):
            self._databases.close()


def msgpack(obj: Any) -> bytes:
    return msgspec.msgpack.encode(obj)
