"""Agents of another release talk to this master (compatibility policy: docs/operations.md).

Within one protocol version the wire only grows optional fields, so an agent one minor
release older sends bodies *without* this release's newest optional fields, and an agent
one release newer sends fields this master has never heard of. Both must be accepted. The
bodies are plain dicts encoded as MessagePack, exactly what such an agent puts on the wire
(not this release's structs, which would always fill every field). An agent whose protocol
lies outside ``[MIN_AGENT_PROTOCOL, PROTOCOL_VERSION]`` gets 426 with a message saying so.
"""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest

from mlsm import MIN_AGENT_PROTOCOL, PROTOCOL_VERSION
from mlsm.wire import agent as w
from tests.integration.helpers import (
    Master,
    agent_error_of,
)
from tests.support.wait import wait_until

NODE_ONLINE_TIMEOUT_S = 20.0
#: What an older agent's register body holds: only the fields protocol 1 started with.
OLDER_REGISTER_INFO = {"hostname": "old-box", "cpu_cores": 8, "agent_version": "0.0.9"}
#: Fields a hypothetical newer agent adds at every level of a body.
FUTURE = {"numa_topology": {"nodes": 2}, "future_flags": ["x", 1]}


def _post(master: Master, path: str, body: dict[str, Any], secret: str | None) -> httpx.Response:
    headers = {"Content-Type": w.MSGPACK}
    if secret:
        headers["Authorization"] = f"Node {secret}"
    return master.request(
        "POST", f"/agent/v1/{path}", content=msgspec.msgpack.encode(body), headers=headers
    )


def _join_token(master: Master) -> str:
    resp = master.request("POST", "/api/v1/join-tokens", token=master.admin_token, json={"uses": 1})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["token"])


def _register(master: Master, name: str, **extra: Any) -> str:
    body = {"protocol": PROTOCOL_VERSION, "join_token": _join_token(master), "name": name}
    body.update(extra)
    resp = _post(master, "register", body, None)
    assert resp.status_code == 200, resp.content
    return w.decode_register_reply(resp.content).node_secret


def _node(master: Master, name: str) -> dict[str, Any]:
    resp = master.request("GET", f"/api/v1/nodes/{name}", token=master.admin_token)
    assert resp.status_code == 200, resp.text
    node = resp.json()
    assert isinstance(node, dict)
    return node


def test_an_older_agent_with_fewer_fields_registers_heartbeats_and_polls(master: Master) -> None:
    secret = _register(master, "older-agent", info=OLDER_REGISTER_INFO)
    # The smallest heartbeat protocol 1 ever sent: no gpus, jobs, datasets or transfers keys.
    hb = {"protocol": PROTOCOL_VERSION, "seq": 1, "host": {"cpu_percent": 12.5}}
    resp = _post(master, "heartbeat", hb, secret)
    assert resp.status_code == 200, resp.content
    w.decode_heartbeat_reply(resp.content)

    node = wait_until(
        lambda: (n := _node(master, "older-agent"))["state"] == "online" and n,
        NODE_ONLINE_TIMEOUT_S,
        "the older agent's node online",
    )
    assert node["info"]["agent_version"] == "0.0.9"
    assert node["host"]["cpu_percent"] == 12.5

    resp = _post(master, "commands", {"protocol": PROTOCOL_VERSION, "wait_s": 0}, secret)
    assert resp.status_code == 200, resp.content
    assert w.decode_batch(resp.content).commands == []
    resp = _post(master, "events", {"protocol": PROTOCOL_VERSION, "jobs": []}, secret)
    assert resp.status_code == 200, resp.content


def test_a_newer_agent_with_unknown_fields_is_accepted(master: Master) -> None:
    secret = _register(master, "newer-agent", info={**OLDER_REGISTER_INFO, **FUTURE}, **FUTURE)
    hb = {
        "protocol": PROTOCOL_VERSION,
        "seq": 1,
        "host": {"cpu_percent": 33.0, **FUTURE},
        "gpus": [{"index": 0, "name": "H100", "mem_total": 80 << 30, "simulated": True, **FUTURE}],
        **FUTURE,
    }
    resp = _post(master, "heartbeat", hb, secret)
    assert resp.status_code == 200, resp.content

    node = wait_until(
        lambda: (n := _node(master, "newer-agent"))["state"] == "online" and n,
        NODE_ONLINE_TIMEOUT_S,
        "the newer agent's node online",
    )
    assert node["host"]["cpu_percent"] == 33.0
    assert [g["sample"]["name"] for g in node["gpus"]] == ["H100"]
    resp = _post(master, "commands", {"protocol": PROTOCOL_VERSION, "wait_s": 0, **FUTURE}, secret)
    assert resp.status_code == 200, resp.content


@pytest.mark.parametrize(
    "protocol", [MIN_AGENT_PROTOCOL - 1, PROTOCOL_VERSION + 1], ids=["too-old", "too-new"]
)
def test_a_protocol_outside_the_supported_range_gets_426_in_plain_words(
    master: Master, protocol: int
) -> None:
    body = {"protocol": protocol, "join_token": _join_token(master), "name": f"p{protocol}"}
    resp = _post(master, "register", body, None)
    assert resp.status_code == 426, resp.content
    err = agent_error_of(resp)
    assert err.code == "protocol_mismatch"
    assert f"{MIN_AGENT_PROTOCOL}..{PROTOCOL_VERSION}" in err.message
    assert f"speaks {protocol}" in err.message
    assert "same mlsm version" in err.message

    secret = _register(master, f"ok{protocol + 10}")
    resp = _post(master, "heartbeat", {"protocol": protocol, **FUTURE}, secret)
    assert resp.status_code == 426, resp.content
    assert agent_error_of(resp).code == "protocol_mismatch"
