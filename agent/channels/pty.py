"""A shell in a process job: a real PTY, as the job's account, in its directory and
environment.

What the job is, is read from its shim (the agent's own process, which the job's
environment was built for; :mod:`agent.runtimes.process.launch`): its environment
(``CUDA_VISIBLE_DEVICES``, the venv's or conda's ``PATH``, ``MLSM_*``) from
``/proc/<shim>/environ``, its working directory and account from the shim's arguments
(``--cwd``, ``--uid``, ``--gid``, ``--groups``), so a job the agent re-adopted after a
restart gets the same shell. The account is the one
:func:`agent.runtimes.accounts.resolve_account` chose when the job started; uid 0 is
refused unless the job itself runs as the agent's own account (an admin's job, or a
single-user node), as the account rule says.

The shell is the account's login shell (``/etc/passwd``; ``/bin/sh`` when that is a
no-login shell), started interactive but not as a login shell: a login shell's
``/etc/profile`` would reset ``PATH`` and lose the job's venv. It runs in a new session
whose controlling terminal is the PTY (a small helper makes it so, then enters the working
directory *as the account*, so a directory the account cannot reach is not entered by the
agent for it). Window size: ``TIOCSWINSZ`` (the kernel sends SIGWINCH); Ctrl-C is the
terminal's. When the channel ends, every process left in the shell's session is killed:
what a shell started does not outlive it, unaccounted, on the job's GPUs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import pwd
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import psutil

from agent.runtimes.base import AdoptRecord
from mlsm.wire.channels import MAX_DATA_FRAME

#: Seconds between SIGHUP and SIGKILL for what a shell left running.
KILL_GRACE_S = 2.0
#: Shells that mean "no login": the job's account then gets /bin/sh.
NO_LOGIN = ("nologin", "false")
FALLBACK_SHELL = "/bin/sh"
#: pid_start of a record and the process's create_time may differ by this much.
START_TOLERANCE_S = 1.0

# Runs as the account (Popen drops to it first): take the PTY as the controlling terminal,
# enter the working dir (or stay in HOME and say why), exec the shell.
_HELPER = """
import fcntl, os, sys, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
cwd, shell = sys.argv[1], sys.argv[2]
try:
    os.chdir(cwd)
except OSError as e:
    home = os.environ.get("HOME") or "/"
    sys.stderr.write(f"mlsm: cannot enter {cwd}: {e.strerror}; starting in {home}\\r\\n")
    try:
        os.chdir(home)
    except OSError:
        os.chdir("/")
os.execv(shell, [os.path.basename(shell), "-i"])
"""


class ShellError(Exception):
    """The shell cannot start; the message says why."""


@dataclass(frozen=True)
class ShellContext:
    """Who, where and with what environment a job's shell runs."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    cwd: str
    env: dict[str, str]


def _opt(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv[:-1]):
        if a == "--":
            return None
        if a == name:
            return argv[i + 1]
    return None


def process_job_context(record: AdoptRecord) -> ShellContext:
    """The context of a running process job, read from its shim (see the docstring)."""
    if record.pid is None:
        raise ShellError(f"job {record.job_id} has no process on this node")
    try:
        shim = psutil.Process(record.pid)
        if record.pid_start and abs(shim.create_time() - record.pid_start) > START_TOLERANCE_S:
            raise ShellError(f"job {record.job_id}'s process is gone")
        argv = shim.cmdline()
        env = shim.environ()
    except psutil.Error as exc:
        raise ShellError(f"job {record.job_id}'s process cannot be read: {exc}") from exc
    cwd = _opt(argv, "--cwd") or record.job_dir
    uid_s, gid_s = _opt(argv, "--uid"), _opt(argv, "--gid")
    if uid_s is not None and gid_s is not None:
        uid, gid = int(uid_s), int(gid_s)
        groups = tuple(int(g) for g in (_opt(argv, "--groups") or "").split(",") if g)
    else:  # the job runs as the agent's own account
        uid, gid, groups = os.geteuid(), os.getegid(), ()
    if uid == 0 and os.geteuid() != 0:
        raise ShellError("refusing a shell as uid 0")
    return ShellContext(uid=uid, gid=gid, groups=groups, cwd=cwd, env=env)


def login_shell(uid: int) -> str:
    """The account's shell from /etc/passwd, or /bin/sh for a no-login one."""
    try:
        shell = pwd.getpwuid(uid).pw_shell
    except KeyError:
        return FALLBACK_SHELL
    if not shell or os.path.basename(shell) in NO_LOGIN or not os.access(shell, os.X_OK):
        return FALLBACK_SHELL
    return shell


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class PtyShell:
    """A shell on a PTY (a :class:`~agent.channels.stream.Stream`)."""

    def __init__(self, ctx: ShellContext, *, rows: int, cols: int, term: str) -> None:
        self.ctx = ctx
        shell = login_shell(ctx.uid)
        env = {**ctx.env, "TERM": term or "xterm-256color", "SHELL": shell, "MLSM_SHELL": "1"}
        master, slave = os.openpty()
        try:
            set_winsize(slave, rows, cols)
            switch = ctx.uid != os.geteuid()
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _HELPER, ctx.cwd, shell],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd="/",
                env=env,
                start_new_session=True,
                user=ctx.uid if switch else None,
                group=ctx.gid if switch else None,
                extra_groups=list(ctx.groups) if switch else None,
                close_fds=True,
            )
        except OSError as exc:
            os.close(master)
            raise ShellError(f"could not start a shell: {exc}") from exc
        finally:
            os.close(slave)
        self.master = master
        os.set_blocking(master, False)
        self._loop = asyncio.get_running_loop()
        self._readable = asyncio.Event()
        self._exited = asyncio.Event()
        self._loop.add_reader(master, self._readable.set)
        # The shell's end, without a thread blocked in wait(): its pidfd turns readable.
        self._pidfd = os.pidfd_open(self.proc.pid)
        self._loop.add_reader(self._pidfd, self._exited.set)
        self._eof = False
        self._closed = False

    async def read(self) -> bytes:
        while not self._eof:
            try:
                data = os.read(self.master, MAX_DATA_FRAME)
            except BlockingIOError:
                if self._exited.is_set():  # gone, and what it wrote last was read
                    self._eof = True
                    break
                self._readable.clear()
                await _first(self._readable.wait(), self._exited.wait())
                continue
            except OSError as exc:
                if exc.errno != errno.EIO:  # EIO: every slave end closed
                    raise
                self._eof = True
                break
            if not data:
                self._eof = True
                break
            return data
        return b""

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                await asyncio.sleep(0)  # the PTY's input queue is full: let the shell read
                continue
            view = view[n:]

    def resize(self, rows: int, cols: int) -> None:
        with contextlib.suppress(OSError):
            set_winsize(self.master, rows, cols)

    def write_eof(self) -> None:
        return None

    async def finish(self) -> int:
        await self._exited.wait()
        code = self.proc.wait()
        return code if code >= 0 else 128 - code

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self.master)
        self._loop.remove_reader(self._pidfd)
        os.close(self.master)
        await asyncio.to_thread(kill_session, self.proc.pid)
        await asyncio.to_thread(self.proc.wait)
        os.close(self._pidfd)


async def _first(*aws: Coroutine[Any, Any, Any]) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


def kill_session(sid: int) -> None:
    """SIGHUP, then SIGKILL, every process of session ``sid`` (the shell's)."""
    for sig in (signal.SIGHUP, signal.SIGKILL):
        left = []
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(p.pid) == sid:
                    p.send_signal(sig)
                    left.append(p)
        if not left:
            return
        _, alive = psutil.wait_procs(left, timeout=KILL_GRACE_S)
        if not alive:
            return
