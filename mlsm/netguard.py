"""The one guard against server-side request forgery, for every outbound fetch mlsm makes
on someone's behalf: dataset imports (on the agent) and webhooks (on the master).

Only globally routable unicast addresses are used (loopback, link-local, RFC 1918
private, ``fc00::/7``, CGNAT, multicast, unspecified and reserved ranges are refused,
IPv4 mapped into IPv6 included) unless the address lies in an admin-allowed network. The
host is resolved here and the request then goes to the very address that was checked
(:func:`pinned_request`: ``Host`` header and TLS SNI name the host), so a second DNS
answer can never redirect the connection (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence

import httpx

Resolver = Callable[[str, int], Awaitable[list[str]]]
AddrIP = ipaddress.IPv4Address | ipaddress.IPv6Address
AddrNet = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Sequence[str]) -> list[AddrNet]:
    """Networks from CIDR strings; ``ValueError`` names the first bad one."""
    nets: list[AddrNet] = []
    for c in cidrs:
        try:
            nets.append(ipaddress.ip_network(c.strip(), strict=False))
        except ValueError:
            raise ValueError(f"allowed CIDR {c!r} is not a valid network") from None
    return nets


def address_refusal(ip: AddrIP, allowed: Sequence[AddrNet] = ()) -> str | None:
    """Why ``ip`` may not be fetched from, or ``None`` when it may."""
    if any(ip.version == net.version and ip in net for net in allowed):
        return None
    check = ip
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        check = ip.ipv4_mapped
        if any(net.version == 4 and check in net for net in allowed):
            return None
    for attr, what in (
        ("is_unspecified", "unspecified"),
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_private", "private"),
        ("is_reserved", "reserved"),
    ):
        if getattr(check, attr):
            return what
    if not check.is_global:
        return "not globally routable"
    return None


async def system_resolve(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    seen: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        addr = str(sockaddr[0]).split("%", 1)[0]  # drop an IPv6 zone id
        if addr not in seen:
            seen.append(addr)
    return seen


async def checked_addresses(
    host: str, port: int, allowed: Sequence[AddrNet], resolve: Resolver | None = None
) -> tuple[list[str], list[str]]:
    """(addresses of ``host`` that may be connected to, why each other one may not).
    ``OSError`` when the name does not resolve."""
    try:
        literal: AddrIP | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    addrs = [str(literal)] if literal is not None else await (resolve or system_resolve)(host, port)
    usable: list[str] = []
    reasons: list[str] = []
    for a in addrs:
        why = address_refusal(ipaddress.ip_address(a), allowed)
        if why is None:
            usable.append(a)
        else:
            reasons.append(f"{a} is {why}")
    return usable, reasons


def host_header(url: httpx.URL) -> str:
    host = url.raw_host.decode("ascii")
    if ":" in host:
        host = f"[{host}]"
    return host if url.port is None else f"{host}:{url.port}"


def pinned_request(
    method: str,
    url: httpx.URL,
    ip: str,
    headers: dict[str, str],
    content: bytes | None = None,
) -> httpx.Request:
    """A request for ``url`` that connects to ``ip`` while naming the host (Host + SNI)."""
    name = url.raw_host.decode("ascii")
    extensions = {"sni_hostname": name} if url.scheme == "https" else {}
    return httpx.Request(
        method,
        url.copy_with(host=ip),
        headers={"Host": host_header(url), **headers},
        content=content,
        extensions=extensions,
    )
