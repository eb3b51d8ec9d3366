"""Tickets for the direct path: a source agent serves one connection per ticket.

For a direct transfer the master gives the source agent a random per-transfer **session
key** (with the listener command) and gives the target one :class:`Ticket` per connection::

    mac = HMAC-SHA256(key, "mlsm-bulk-ticket/1" | transfer | target node id | source spec
                           | serial | expires_at)

The source checks each ticket with a :class:`TicketGate` before it serves a byte: the MAC
(constant-time compare), that it was issued for *this* transfer and source spec and for the
node that presents it (the target's node id, pinned by the master), that it has not
expired, and that its serial was never accepted before (single use: a replay is refused
even before expiry). Anything else gets :class:`~mlsm.errors.PermissionDenied` naming the
reason and nothing is served. Serials are kept until their ticket would have expired, so
the set stays small.

Stdlib and msgspec only: the master issues (:class:`TicketIssuer`), the agent checks.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import secrets
import threading
import time
from collections.abc import Callable

import msgspec

from mlsm import errors

__all__ = ["KEY_BYTES", "TICKET_TTL_S", "Ticket", "TicketGate", "TicketIssuer", "new_key"]

KEY_BYTES = 32  # a session key
TICKET_TTL_S = 60.0  # a ticket is good for one connection within this long
_DOMAIN = b"mlsm-bulk-ticket/1"


class Ticket(msgspec.Struct, kw_only=True, frozen=True):
    """One connection's authority (see the module docstring); ``mac`` is hex."""

    transfer_id: int
    target_node: int
    source: str  # the source spec as text ("dataset NAME")
    serial: int
    expires_at: float
    mac: str = ""


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def _mac(key: bytes, t: Ticket) -> str:
    fields = (t.transfer_id, t.target_node, t.source, t.serial, repr(float(t.expires_at)))
    msg = _DOMAIN + b"".join(b"|" + str(f).encode() for f in fields)
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


class TicketIssuer:
    """The master's side: tickets for one transfer's session key."""

    def __init__(
        self,
        key: bytes,
        transfer_id: int,
        source: str,
        ttl_s: float = TICKET_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.transfer_id = transfer_id
        self.source = source
        self.ttl_s = ttl_s
        self.clock = clock
        self._serials = itertools.count(1)

    def issue(self, target_node: int) -> Ticket:
        t = Ticket(
            transfer_id=self.transfer_id,
            target_node=target_node,
            source=self.source,
            serial=next(self._serials),
            expires_at=self.clock() + self.ttl_s,
        )
        return msgspec.structs.replace(t, mac=_mac(self.key, t))


class TicketGate:
    """The source's side: accepts each ticket once, before expiry, for its transfer, source
    spec and target only (see the module docstring). Thread-safe."""

    def __init__(
        self,
        key: bytes,
        transfer_id: int,
        source: str,
        target_node: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.transfer_id = transfer_id
        self.source = source
        self.target_node = target_node
        self.clock = clock
        self._used: dict[int, float] = {}  # serial -> its expiry
        self._lock = threading.Lock()

    def admit(self, t: Ticket) -> None:
        """Accept ``t`` (once) or raise :class:`~mlsm.errors.PermissionDenied`."""
        if not hmac.compare_digest(_mac(self.key, t), t.mac):
            raise errors.PermissionDenied("ticket refused: not issued by the master")
        if t.transfer_id != self.transfer_id or t.source != self.source:
            raise errors.PermissionDenied("ticket refused: issued for another transfer")
        if t.target_node != self.target_node:
            raise errors.PermissionDenied("ticket refused: issued for another node")
        now = self.clock()
        if now >= t.expires_at:
            raise errors.PermissionDenied("ticket refused: expired")
        with self._lock:
            for serial, expiry in list(self._used.items()):
                if expiry <= now:
                    del self._used[serial]
            if t.serial in self._used:
                raise errors.PermissionDenied("ticket refused: already used")
            self._used[t.serial] = t.expires_at
