"""A forwarded TCP connection to a port inside a job.

Which port may be reached: one that the job's own account listens on, for a process job
(and a container on the host's network), since the agent connects from the node itself,
where every local service listens, and a member must not reach the node's other services
(a database on 127.0.0.1, another member's notebook) through their job. A container with a
network of its own is entered instead: the connection is made inside the container's
network namespace (``setns`` in a thread of its own, which returns to the agent's
namespace before it ends), where only the job listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import threading

import psutil

from mlsm.wire.channels import MAX_DATA_FRAME

CONNECT_TIMEOUT_S = 5.0
CLONE_NEWNET = 0x40000000
LOOPBACKS = (("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6))


class ForwardError(Exception):
    """The port cannot be reached; the message says why."""


def listener_uids(port: int) -> set[int]:
    """The accounts of the processes that listen on TCP ``port`` in this namespace."""
    uids: set[int] = set()
    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            with contextlib.suppress(psutil.Error):
                uids.add(psutil.Process(c.pid).uids().real)
    return uids


def connect_local(port: int, uid: int) -> socket.socket:
    """A connection to ``port`` on this node's loopback, when account ``uid`` listens there."""
    if uid not in listener_uids(port):
        raise ForwardError(
            f"nothing of the job's listens on port {port} (a forward reaches only ports "
            "that the job's own account listens on)"
        )
    return _connect_loopback(port)


def _connect_loopback(port: int) -> socket.socket:
    last: OSError | None = None
    for host, family in LOOPBACKS:
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
            s.settimeout(CONNECT_TIMEOUT_S)
            s.connect((host, port))
            return s
        except OSError as exc:
            s.close()
            last = exc
    raise ForwardError(f"port {port} does not answer: {last}")


def same_netns(pid: int) -> bool:
    return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino


def connect_in_netns(pid: int, port: int) -> socket.socket:
    """A connection to ``port`` on the loopback of process ``pid``'s network namespace."""
    result: list[socket.socket | BaseException] = []

    def run() -> None:
        # A thread of its own, which ends after the connect: the namespace it entered goes
        # with it, and no other work ever runs in it (socket() binds the socket to it).
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            try:
                if libc.setns(target, CLONE_NEWNET) != 0:
                    why = os.strerror(ctypes.get_errno())
                    raise ForwardError(f"cannot enter the job's network: {why}")
            finally:
                os.close(target)
            result.append(_connect_loopback(port))
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=run, name="mlsm-netns", daemon=True)
    t.start()
    t.join()
    got = result[0]
    if isinstance(got, BaseException):
        raise got
    return got


class TcpStream:
    """A forwarded connection (a :class:`~agent.channels.stream.Stream`)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._loop = asyncio.get_running_loop()

    async def read(self) -> bytes:
        try:
            return await self._loop.sock_recv(self.sock, MAX_DATA_FRAME)
        except OSError:
            return b""

    async def write(self, data: bytes) -> None:
        await self._loop.sock_sendall(self.sock, data)

    def resize(self, rows: int, cols: int) -> None:
        return None

    def write_eof(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    async def finish(self) -> None:
        return None

    async def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
