"""The one rule that names a request's client: the socket peer, and forwarded headers only
through proxies the admin trusts, right-most untrusted hop first."""

from __future__ import annotations

from typing import Any

import pytest

from mlsm.master.clientaddr import ClientAddresses, limit_key


def scope(peer: str | None, *headers: tuple[str, str]) -> dict[str, Any]:
    return {
        "client": (peer, 5555) if peer else None,
        "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in headers],
    }


XFF = "X-Forwarded-For"
FWD = "Forwarded"


def test_with_no_trusted_proxy_every_header_is_ignored() -> None:
    r = ClientAddresses()
    assert r.resolve(scope("127.0.0.1", (XFF, "203.0.113.9"), (FWD, "for=1.2.3.4"))) == "127.0.0.1"
    assert r.resolve(scope(None)) == "-"


@pytest.mark.parametrize(
    ("peer", "headers", "want"),
    [
        # an untrusted peer's headers are not read
        ("192.0.2.1", [(XFF, "203.0.113.9")], "192.0.2.1"),
        # a trusted peer without a header is the client
        ("10.0.0.1", [], "10.0.0.1"),
        # right-most hop that is not a trusted proxy; what a client wrote left of it is ignored
        ("10.0.0.1", [(XFF, "1.1.1.1, 203.0.113.9")], "203.0.113.9"),
        ("10.0.0.1", [(XFF, "1.1.1.1, 203.0.113.9, 10.0.0.7")], "203.0.113.9"),
        # several header lines are one list, in order
        ("10.0.0.1", [(XFF, "1.1.1.1"), (XFF, "203.0.113.9, 10.0.0.2")], "203.0.113.9"),
        # every hop trusted: the left-most one
        ("10.0.0.1", [(XFF, "10.9.9.9, 10.0.0.2")], "10.9.9.9"),
        # a hop that is not an address stops at the proxy that passed it on
        ("10.0.0.1", [(XFF, "203.0.113.9, unknown")], "10.0.0.1"),
        ("10.0.0.1", [(XFF, "203.0.113.9, 10.0.0.2, ")], "10.0.0.1"),
        # ports and brackets
        ("10.0.0.1", [(XFF, "203.0.113.9:4711")], "203.0.113.9"),
        ("10.0.0.1", [(XFF, "[2001:db8::1]:4711")], "2001:db8::1"),
        ("10.0.0.1", [(XFF, "2001:db8::1")], "2001:db8::1"),
        # RFC 7239 Forwarded, used only when there is no X-Forwarded-For
        ("10.0.0.1", [(FWD, 'for="[2001:db8::5]:80";proto=https, for=10.0.0.3')], "2001:db8::5"),
        ("10.0.0.1", [(FWD, "for=_hidden")], "10.0.0.1"),
        ("10.0.0.1", [(FWD, "proto=https")], "10.0.0.1"),
        ("10.0.0.1", [(FWD, "for=198.51.100.1"), (XFF, "203.0.113.9")], "203.0.113.9"),
        # an IPv4-mapped peer counts as its IPv4 address
        ("::ffff:10.0.0.1", [(XFF, "203.0.113.9")], "203.0.113.9"),
    ],
)
def test_a_trusted_proxys_headers_name_the_client(
    peer: str, headers: list[tuple[str, str]], want: str
) -> None:
    r = ClientAddresses(["10.0.0.0/8"])
    assert r.resolve(scope(peer, *headers)) == want


def test_a_bad_entry_is_named() -> None:
    with pytest.raises(ValueError, match="'nope' is not an IP address"):
        ClientAddresses(["10.0.0.1", "nope"])


def test_limits_count_an_ipv6_host_by_its_64() -> None:
    assert limit_key("2001:db8:1:2:aaaa::1") == limit_key("2001:db8:1:2:bbbb::9")
    assert limit_key("2001:db8:1:3::1") != limit_key("2001:db8:1:2::1")
    assert limit_key("192.0.2.1") == "192.0.2.1"
    assert limit_key("-") == "-"
