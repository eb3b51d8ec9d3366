"""Webhooks: the signed JSON POST, sent only where the address guard allows.

Signature (documented in docs/notifications.md, with a verification snippet)::

    X-Mlsm-Timestamp: <unix seconds>
    X-Mlsm-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>

The timestamp is signed with the body, so a receiver that refuses old timestamps refuses
replays. A webhook URL passes :mod:`mlsm.netguard` (the dataset imports' guard) when it is
added and again at every delivery: the host is resolved then and the POST goes to the
checked address, so a DNS answer that changes later cannot point it inside the lab.
Redirects are not followed (a redirect is an answer that failed).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Sequence

import httpx

from mlsm import __version__
from mlsm.errors import ValidationError
from mlsm.netguard import AddrNet, Resolver, checked_addresses, parse_networks, pinned_request
from mlsm.redact import redact_text, redact_url, url_secrets

WEBHOOK_TIMEOUT_S = 10.0  # one delivery attempt, connect to answer
WEBHOOK_CONNECT_TIMEOUT_S = 5.0
RESOLVE_TIMEOUT_S = 5.0  # a webhook host's name must resolve within this long
SCHEMES = frozenset({"http", "https"})
TIMESTAMP_HEADER = "X-Mlsm-Timestamp"
SIGNATURE_HEADER = "X-Mlsm-Signature"
ERROR_MAX = 300  # characters of a failure kept in the delivery log


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Mlsm-Signature`` value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def allowed_networks(cidrs: Sequence[str]) -> list[AddrNet]:
    try:
        return parse_networks(cidrs)
    except ValueError:
        return []  # lab settings are validated as CIDRs when set


def _parse(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
        port = parsed.port
    except (httpx.InvalidURL, ValueError, TypeError):
        raise ValidationError(
            "invalid webhook URL: its host or port cannot be read", path="url"
        ) from None
    if parsed.scheme not in SCHEMES:
        raise ValidationError(
            f"webhook URL scheme {parsed.scheme or '(none)'!r} is not allowed: only http and https",
            path="url",
        )
    if not parsed.host:
        raise ValidationError("the webhook URL has no host", path="url")
    if port == 0:
        raise ValidationError("invalid webhook URL: port 0", path="url")
    return parsed


async def _addresses(
    host: str, port: int, cidrs: Sequence[str], resolve: Resolver | None
) -> tuple[list[str], list[str]]:
    """The guard's answer, with the name's resolution bounded in time (OSError past it)."""
    try:
        return await asyncio.wait_for(
            checked_addresses(host, port, allowed_networks(cidrs), resolve), RESOLVE_TIMEOUT_S
        )
    except TimeoutError:
        raise OSError(f"no answer from the resolver within {RESOLVE_TIMEOUT_S:g} s") from None


async def check_url(url: str, cidrs: Sequence[str], resolve: Resolver | None = None) -> None:
    """Refuse a webhook URL the master may not post to (scheme, host, the address guard)."""
    parsed = _parse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    host = parsed.raw_host.decode("ascii")
    try:
        usable, reasons = await _addresses(host, port, cidrs, resolve)
    except OSError:
        raise ValidationError(f"webhook host {host!r} does not resolve", path="url") from None
    if not usable:
        raise ValidationError(
            f"refusing webhook to {host}: {'; '.join(reasons) or 'no address'} (an internal "
            "address); an admin can allow its range with `mlsm settings set "
            "--webhook-allow-cidr CIDR`",
            path="url",
        )


async def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    secret: str,
    cidrs: Sequence[str],
    resolve: Resolver | None = None,
) -> tuple[int | None, str]:
    """One delivery attempt: (the HTTP status, or None; why it failed, "" when it did not)."""
    try:
        parsed = _parse(url)
    except ValidationError as e:
        return None, e.message
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    host = parsed.raw_host.decode("ascii")
    try:
        usable, reasons = await _addresses(host, port, cidrs, resolve)
    except OSError as e:
        return None, f"cannot resolve {host}: {e}"
    if not usable:
        return None, f"refused by the address guard: {'; '.join(reasons)}"
    ts = int(time.time())
    all_headers = {
        "Content-Type": "application/json",
        "User-Agent": f"mlsm-webhook/{__version__}",
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: sign(secret, ts, body),
        **headers,
    }
    timeout = httpx.Timeout(WEBHOOK_TIMEOUT_S, connect=WEBHOOK_CONNECT_TIMEOUT_S)
    last = ""
    for ip in usable:
        async with httpx.AsyncClient(timeout=timeout, trust_env=False, follow_redirects=False) as c:
            try:
                resp = await c.send(pinned_request("POST", parsed, ip, all_headers, body))
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
                continue
            await resp.aclose()
            if 200 <= resp.status_code < 300:
                return resp.status_code, ""
            return resp.status_code, f"HTTP {resp.status_code} {resp.reason_phrase}".rstrip()
    return None, _clean(last or "no address answered", url)


def _clean(text: str, url: str) -> str:
    return redact_text(text, url_secrets(url))[:ERROR_MAX]


def shown(url: str) -> str:
    """The URL as lists show it (no userinfo, query or fragment)."""
    return redact_url(url)
