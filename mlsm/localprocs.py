"""The processes and the port of the embedded local service (:mod:`mlsm.local`): start
one in the background with a pid file, wait for it, stop it, and tell whether a pid is the
one listening on a port. Kept apart so :mod:`mlsm.local` reads as what the service does.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mlsm.atomicfile import write_atomic
from mlsm.errors import UnavailableError

STOP_TIMEOUT_S = 15.0
POLL_S = 0.1


def read_pid(p: Path) -> int | None:
    try:
        pid = int(p.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself holds the listening socket of ``port``: a server of
    someone else on that port is not our master, whatever its ``/healthz`` says."""
    import psutil

    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns)


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise UnavailableError("no free port on 127.0.0.1")


def choose_port(explicit: int | None, preferred: int) -> tuple[int, str]:
    """The port to start on and a note when it is not the one preferred. A port asked for
    with ``--port`` is that port or an error; the usual one moves, and says so."""
    if explicit:
        if not port_free(explicit):
            raise UnavailableError(
                f"port {explicit} on 127.0.0.1 is in use: choose another with `mlsm up --port N`"
            )
        return explicit, ""
    if port_free(preferred):
        return preferred, ""
    port = free_port(0)
    return port, (
        f"port {preferred} on 127.0.0.1 is in use (another program); the local service "
        f"listens on port {port} instead (choose one with `mlsm up --port N`)"
    )


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` whole (mode 0600): a concurrent ``mlsm`` call never reads it half written."""
    write_atomic(path, text, 0o600)


def spawn(args: list[str], log: Path, pidfile: Path, env: dict[str, str]) -> int:
    import subprocess  # here: every CLI call reads pid files through this module

    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlsm", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    pidfile.write_text(str(proc.pid))
    return proc.pid


def wait(cond: Callable[[], bool], timeout: float, what: str, log: Path, pidfile: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if read_pid(pidfile) is None:  # it exited (a port taken meanwhile, a bad setting)
            timeout = 0.0
            break
        time.sleep(POLL_S)
    tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
    said = "exited" if not timeout else f"did not come up within {timeout:.0f} s"
    raise UnavailableError(f"{what} {said}; see {log}" + (": " + " | ".join(tail) if tail else ""))


def stop(pidfile: Path) -> bool:
    """Stop the process ``pidfile`` names (TERM, then KILL after STOP_TIMEOUT_S)."""
    pid = read_pid(pidfile)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and read_pid(pidfile) is not None:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(POLL_S)
    if read_pid(pidfile) is not None:
        os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    return True
