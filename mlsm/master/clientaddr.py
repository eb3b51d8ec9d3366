"""Who is calling, by network address: the one rule for every place the master names a client
(login limits, audit rows, the request log, a session's "login from ..." name).

The address is the socket peer's. Only when that peer is a proxy the admin listed in the
``trusted_proxies`` setting (addresses or CIDRs; none by default) does the master read the
``X-Forwarded-For`` header (or, when a request has none, ``Forwarded``'s ``for=``). It
walks the hops from the right, the peer first, skipping trusted proxies, and takes the
first address that is not one: everything to the left of it was written by someone the
admin does not trust, so it is never believed. A hop that is not an address ends the walk
at the trusted proxy that passed it on. Uvicorn's own proxy-header handling is switched off
(see ``server.py``), so this setting is the single source.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
UNKNOWN = "-"


def parse_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``"10.0.0.1"``, ``"10.0.0.0/8"``, ``"::1"`` -> networks; ValueError names a bad entry."""
    out = []
    for entry in entries:
        try:
            out.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or CIDR network") from None
    return tuple(out)


def _parse_hop(value: str) -> IPAddress | None:
    """One hop of a forwarding header: ``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``::1``."""
    v = value.strip().strip('"')
    if v.startswith("["):
        end = v.find("]")
        v = v[1:end] if end > 0 else ""
    elif v.count(":") == 1:  # IPv4 with a port
        v = v.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(v)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _forwarded_for(value: str) -> list[str]:
    """The ``for=`` values of an RFC 7239 ``Forwarded`` header, in order."""
    hops = []
    for element in value.split(","):
        found = ""
        for pair in element.split(";"):
            key, _, val = pair.partition("=")
            if key.strip().lower() == "for":
                found = val
        hops.append(found)  # an element without for= is a hop we cannot name
    return hops


class ClientAddresses:
    """Resolves a request's client address; built once from the ``trusted_proxies`` setting."""

    def __init__(self, trusted_proxies: Sequence[str] = ()) -> None:
        self.trusted = parse_networks(trusted_proxies)

    def is_trusted(self, addr: IPAddress) -> bool:
        return any(addr in net for net in self.trusted)

    def resolve(self, scope: Any) -> str:
        client = scope.get("client")
        if not client:
            return UNKNOWN
        peer_text = str(client[0])
        if not self.trusted:
            return peer_text
        peer = _parse_hop(peer_text)
        if peer is None or not self.is_trusted(peer):
            return peer_text
        xff: list[str] = []
        fwd: list[str] = []
        for k, v in scope.get("headers", ()):
            if k == b"x-forwarded-for":
                xff.extend(v.decode("latin-1").split(","))
            elif k == b"forwarded":
                fwd.extend(_forwarded_for(v.decode("latin-1")))
        hops = xff or fwd
        current = peer
        for raw in reversed(hops):
            hop = _parse_hop(raw)
            if hop is None:
                break  # unparseable: the trusted proxy that passed it on is all we know
            current = hop
            if not self.is_trusted(hop):
                break
        return str(current)


def limit_key(address: str) -> str:
    """The key a per-address limit counts under: the address, or an IPv6 address's /64
    (one host usually holds a whole /64, so counting single IPv6 addresses counts nothing)."""
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))
    return str(addr)
