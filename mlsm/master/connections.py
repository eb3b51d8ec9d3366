"""How many connections the master holds, and for how long a silent one may sit.

uvicorn (h11 here: the master names its protocol class, so httptools is never picked)
arms its keep-alive timer only after a response, and the first byte received disarms it.
A connection that never sends a byte, or sends half a request head, is therefore held
forever; uvicorn offers no request-head timeout (its issue #157 lists one as never done),
and an ASGI middleware cannot help, since the app sees a request only once its head is
complete. Held connections are descriptors; once the process runs out of them asyncio
stops accepting (it retries each second), and ``/healthz`` times out with everyone else.

So the master serves with :class:`GuardedH11Protocol`, uvicorn's h11 protocol plus:

- a **request-head deadline**: ``header_timeout`` seconds from the connection's start, or
  from the first byte after a keep-alive pause, to a complete request head;
- a **body stall timeout**: ``body_timeout`` seconds without a byte of a request body
  (not counted while the master itself has paused reading);
- the **keep-alive idle timeout** between requests (uvicorn's, ``keepalive_timeout``);
- a **connection cap** (:func:`connection_cap`), derived from the descriptor limit with
  room kept for the database, log files and spool files. At the cap a new connection
  takes the place of the one that has waited longest for a request (idle or with an
  unfinished head), as nginx reuses idle connections; connections with a request in
  flight (an agent's long poll, a log follow) are never dropped. Only when every
  connection is busy is the new one refused, with a 503.

Nothing here runs per request beyond a few attribute checks and one dict operation.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("mlsm.master.connections")

#: Descriptors kept out of the connection cap: stdio, listening sockets, the event loop,
#: the database pool (SQLite: a file, its -wal and -shm per pooled connection, up to 15
#: connections; PostgreSQL: up to 20 sockets), TLS files and the interpreter's own.
FD_RESERVED = 128
#: Descriptors one connection may hold: its socket, and one file a request keeps open
#: while it runs (a log it streams, a spool file it writes).
FDS_PER_CONNECTION = 2
#: The cap never goes below this, however low the descriptor limit (a warning says so).
MIN_CONNECTIONS = 16
#: An agent holds about this many connections: its long poll, heartbeats, log shipping.
CONNECTIONS_PER_NODE = 3
#: Below room for this many nodes the master warns at start to raise LimitNOFILE.
LARGE_LAB_NODES = 1000
#: The soft descriptor limit is raised to the hard one, at most to this when unlimited.
NOFILE_CEILING = 1 << 20
#: Connections waiting in the kernel for the master to accept them (a lab's agents
#: reconnecting at once after a master restart), at most.
LISTEN_BACKLOG = 4096
#: ... and at least.
MIN_BACKLOG = 16
#: At most one warning this often while the cap is reached.
CAP_WARNING_INTERVAL_S = 60.0

_BUSY_BODY = (
    b'{"error": {"code": "unavailable", "message": "the master is at its connection limit; '
    b'retry shortly", "details": {}}}'
)
_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"connection: close\r\nretry-after: 1\r\ncontent-length: "
    + str(len(_BUSY_BODY)).encode()
    + b"\r\n\r\n"
    + _BUSY_BODY
)


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) in force.

    The soft limit is often 1,024 while the hard one is far higher (systemd: 524,288);
    a master for a large lab needs several descriptors per node."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = NOFILE_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise the descriptor limit from %d to %d: %s", soft, target, exc)
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def connection_cap(nofile: int, configured: int = 0) -> int:
    """How many connections fit in ``nofile`` descriptors; ``configured`` (> 0) lowers it."""
    derived = max(MIN_CONNECTIONS, (nofile - FD_RESERVED) // FDS_PER_CONNECTION)
    return min(derived, configured) if configured > 0 else derived


def listen_backlog(nofile: int, cap: int) -> int:
    """The listen backlog, which asyncio also uses as the most connections it accepts in one
    go before any of them is counted: kept within the descriptors the cap leaves over, so
    a burst is accepted and sorted out (evicted, refused) instead of failing with EMFILE."""
    return max(MIN_BACKLOG, min(LISTEN_BACKLOG, nofile - FD_RESERVED - cap))


@dataclass(slots=True)
class ConnectionGuard:
    """State shared by every connection of one server."""

    max_connections: int
    header_timeout: float
    body_timeout: float
    open: int = 0
    evicted: int = 0  # dropped at the cap while waiting for a request
    refused: int = 0  # turned away at the cap (every connection busy)
    timed_out: int = 0  # head or body not sent in time
    #: Connections waiting for a request head (idle or partial), longest-waiting first.
    waiting: OrderedDict[GuardedH11Protocol, None] = field(default_factory=OrderedDict)
    _warned_at: float = -CAP_WARNING_INTERVAL_S

    def admit(self) -> bool:
        """Count a new connection in; at the cap, make room or say no."""
        if self.open >= self.max_connections:
            if not self.waiting:
                self.refused += 1
                self._warn("refusing new connections (every connection has a request)")
                return False
            victim, _ = self.waiting.popitem(last=False)
            victim.drop()
            self.evicted += 1
            self._warn("closing the connections that waited longest for a request")
        self.open += 1
        return True

    def _warn(self, what: str) -> None:
        now = time.monotonic()
        if now - self._warned_at >= CAP_WARNING_INTERVAL_S:
            self._warned_at = now
            log.warning(
                "connection cap of %d reached: %s (evicted %d, refused %d so far)",
                self.max_connections,
                what,
                self.evicted,
                self.refused,
            )


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol under a :class:`ConnectionGuard` (see the module docstring)."""

    guard: ClassVar[ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._counted = False
        self._timer: asyncio.TimerHandle | None = None
        self._reading_head = False  # a head deadline is armed
        self._reading_body = False  # a body stall timer is armed

    # ------------------------------------------------------------------ lifecycle
    # uvicorn's H11Protocol narrows asyncio's BaseTransport to Transport here (with the same
    # ignore); this override has to keep uvicorn's signature.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if not self.guard.admit():
            transport.write(_BUSY_RESPONSE)
            transport.close()
            return
        self._counted = True
        super().connection_made(transport)
        self.guard.waiting[self] = None
        self._reading_head = True
        self._arm(self.guard.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:  # refused in connection_made: uvicorn never knew of it
            return
        self._release()
        super().connection_lost(exc)

    def drop(self) -> None:
        """Close this connection to make room (it was waiting for a request)."""
        self._release()
        if not self.transport.is_closing():
            self.transport.close()

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            self.guard.open -= 1
            self.guard.waiting.pop(self, None)
        self._disarm()

    # ------------------------------------------------------------------ input
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._counted or self.transport.is_closing():
            return
        if self.conn.their_state is h11.IDLE and not self._reading_head:
            # Keep-alive: uvicorn's idle timer runs until the next byte; this connection
            # now waits for a request and is the newest to do so.
            self.guard.waiting.pop(self, None)
            self.guard.waiting[self] = None
        else:
            self._track()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # The WebSocket protocol takes the transport over: no longer ours to count or time.
        self._release()
        super().handle_websocket_upgrade(event)

    def _track(self) -> None:
        """Follow the request's phase after input: arm, re-arm or disarm the timer."""
        if not self._counted or self.transport.is_closing():
            self._disarm()
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            if not self._reading_head:  # the first bytes of a head after a keep-alive pause
                self._reading_head = True
                self._arm(self.guard.header_timeout)
            return
        self._reading_head = False
        self.guard.waiting.pop(self, None)
        if state is h11.SEND_BODY:
            self._reading_body = True
            self._arm(self.guard.body_timeout)  # any progress restarts the stall timer
        else:
            self._disarm()

    # ------------------------------------------------------------------ the timer
    def _arm(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(delay, self._expired)

    def _disarm(self) -> None:
        self._reading_body = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._reading_body and self.flow.read_paused:
            # The master paused reading (the app is behind), not the client.
            self._arm(self.guard.body_timeout)
            return
        self.guard.timed_out += 1
        log.debug(
            "closing %s: request %s not received in time",
            self.client,
            "body" if self._reading_body else "head",
        )
        self.transport.close()


def protocol_class(guard: ConnectionGuard) -> type[GuardedH11Protocol]:
    """A protocol class bound to ``guard``, for ``uvicorn.Config(http=...)``."""

    class Bound(GuardedH11Protocol):
        pass

    Bound.guard = guard
    return Bound
