"""Processes the tests start: free loopback ports, ending a process, and killing what a lab's
agents left running."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import psutil

#: How long a process gets to exit after its signal before it is killed.
STOP_TIMEOUT_S = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def end_process(
    proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S
) -> int:
    """Send ``sig`` to ``proc`` (unless it has exited), reap it, and return its exit status;
    SIGKILL when it is still there after ``timeout``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    return int(proc.returncode)


def kill_processes_under(root: Path) -> None:
    """SIGKILL what a lab's agents left running: job shims (their argv names a job dir
    under ``root``), every process of their sessions, and anything whose cwd is under it."""
    prefix = str(root)
    mine = os.getpid()
    doomed: set[int] = set()
    for p in psutil.process_iter(["pid", "cmdline", "cwd"]):
        with contextlib.suppress(psutil.Error):
            cmd = p.info["cmdline"] or []
            cwd = p.info["cwd"] or ""
            if p.pid != mine and (cwd.startswith(prefix) or any(a.startswith(prefix) for a in cmd)):
                doomed.add(p.pid)
    sessions = set(doomed)
    for pid in psutil.pids():
        with contextlib.suppress(OSError):
            if os.getsid(pid) in sessions and pid != mine:
                doomed.add(pid)
    for pid in doomed:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


__all__ = ["STOP_TIMEOUT_S", "end_process", "free_port", "kill_processes_under"]
