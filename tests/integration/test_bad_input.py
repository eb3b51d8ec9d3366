"""Bad input at the edge of a real master: every route that takes a JSON body refuses bad
JSON, wrong types, unknown fields and oversized bodies with a structured 4xx (never a 500),
and every agent route refuses malformed MessagePack with a MessagePack error."""

from __future__ import annotations

import inspect
import re
import typing
from typing import Any

import msgspec
import pytest

from mlsm.config import Settings
from tests.integration.helpers import Master, agent_error_of, error_of, route_table

_PARAM = re.compile(r"\{(\w+):(\w+)\}")
DUMMY_BY_TYPE = {"int": "999999", "str": "no-such-thing"}
MAX_BODY = Settings().max_body_bytes
AGENT_MAX_BODY = Settings().agent_max_body_bytes
MUTATING = ("POST", "PUT", "PATCH", "DELETE")


def _routes() -> list[tuple[str, str, Any]]:
    """(method, path template, data type or None) of every mutating handler."""
    out = []
    for method, path, handler in route_table():
        if method in MUTATING:
            fn = handler.fn
            takes_data = "data" in inspect.signature(fn).parameters
            out.append((method, path, typing.get_type_hints(fn)["data"] if takes_data else None))
    return sorted(out, key=lambda r: (r[1], r[0]))


ROUTES = _routes()
JSON_ROUTES = [(m, p, t) for m, p, t in ROUTES if t is not None]
AGENT_ROUTES = sorted({p for _, p, _ in ROUTES if p.startswith("/agent/")})
JSON_IDS = [f"{m} {p}" for m, p, _ in JSON_ROUTES]


def concrete(template: str) -> str:
    return _PARAM.sub(lambda m: DUMMY_BY_TYPE[m.group(2)], template)


def test_routes_were_found() -> None:
    assert ("POST", "/api/v1/users") in {(m, p) for m, p, _ in JSON_ROUTES}
    assert "/agent/v1/heartbeat" in AGENT_ROUTES


def _wrong_value(annotation: Any) -> Any:
    """A JSON value of the wrong type for ``annotation`` (dicts get a list, the rest a map)."""
    text = str(annotation)
    return [1] if text.startswith("dict") or "dict[" in text else {"unexpected": [1]}


def _first_field(data_type: Any) -> tuple[str, Any]:
    field = msgspec.structs.fields(data_type)[0]
    return field.encode_name, field.type


@pytest.fixture(scope="module")
def admin(master: Master) -> str:
    return master.admin_token


@pytest.fixture(scope="module")
def node_secret(master: Master) -> str:
    return master.join_node("bad-input-node")


def _send(master: Master, method: str, template: str, token: str, **kwargs: Any) -> Any:
    return master.request(method, concrete(template), token=token, **kwargs)


def _assert_4xx(resp: Any) -> dict[str, Any]:
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text)
    return error_of(resp)


@pytest.mark.parametrize(("method", "template", "data_type"), JSON_ROUTES, ids=JSON_IDS)
def test_malformed_json(
    master: Master, admin: str, method: str, template: str, data_type: Any
) -> None:
    for body in (b'{"name": ', b"\xff\xfe not json", b"{'single': 'quotes'}"):
        resp = _send(
            master,
            method,
            template,
            admin,
            content=body,
            headers={"Content-Type": "application/json"},
        )
        err = _assert_4xx(resp)
        assert resp.status_code == 400, resp.text
        assert err["code"] in ("bad_request", "validation_error"), err


@pytest.mark.parametrize(("method", "template", "data_type"), JSON_ROUTES, ids=JSON_IDS)
def test_not_an_object(
    master: Master, admin: str, method: str, template: str, data_type: Any
) -> None:
    for body in ([], "text", 7, None):
        resp = _send(master, method, template, admin, json=body)
        err = _assert_4xx(resp)
        assert resp.status_code == 400, resp.text
        assert err["code"] == "validation_error", err


@pytest.mark.parametrize(("method", "template", "data_type"), JSON_ROUTES, ids=JSON_IDS)
def test_wrong_type_names_the_field(
    master: Master, admin: str, method: str, template: str, data_type: Any
) -> None:
    name, annotation = _first_field(data_type)
    resp = _send(master, method, template, admin, json={name: _wrong_value(annotation)})
    err = _assert_4xx(resp)
    assert resp.status_code == 400, resp.text
    assert err["code"] == "validation_error", err
    assert err["details"].get("path") == name, err


_UNKNOWN_IDS = [pytest.param(m, p, t, id=f"{m} {p}") for m, p, t in JSON_ROUTES]


@pytest.mark.parametrize(("method", "template", "data_type"), _UNKNOWN_IDS)
def test_unknown_field(
    master: Master, admin: str, method: str, template: str, data_type: Any
) -> None:
    resp = _send(master, method, template, admin, json={"no_such_field": 1})
    err = _assert_4xx(resp)
    assert resp.status_code == 400, resp.text
    assert err["code"] == "validation_error", err
    assert "no_such_field" in err["message"], err


@pytest.mark.parametrize(("method", "template", "data_type"), JSON_ROUTES, ids=JSON_IDS)
def test_oversized_body(
    master: Master, admin: str, method: str, template: str, data_type: Any
) -> None:
    body = b'{"name": "' + b"a" * (MAX_BODY + 16) + b'"}'
    resp = _send(
        master, method, template, admin, content=body, headers={"Content-Type": "application/json"}
    )
    err = _assert_4xx(resp)
    assert resp.status_code == 413, resp.text
    assert err["code"] == "payload_too_large", err


MALFORMED_MSGPACK = {
    "never-used byte": b"\xc1",
    "truncated map": b"\x85\xa8protocol",
    "not a map": b"\x93\x01\x02\x03",
    "empty": b"",
    "json, not msgpack": b'{"protocol": 1}',
}


@pytest.mark.parametrize("path", AGENT_ROUTES)
def test_malformed_msgpack(master: Master, node_secret: str, path: str) -> None:
    headers = {"Content-Type": "application/msgpack", "Authorization": f"Node {node_secret}"}
    for what, body in MALFORMED_MSGPACK.items():
        resp = master.request("POST", path, content=body, headers=headers)
        assert 400 <= resp.status_code < 500, (what, resp.status_code, resp.content)
        err = agent_error_of(resp)
        assert err.code in ("validation_error", "bad_request"), (what, err)


@pytest.mark.parametrize("path", AGENT_ROUTES)
def test_oversized_msgpack(master: Master, node_secret: str, path: str) -> None:
    headers = {"Content-Type": "application/msgpack", "Authorization": f"Node {node_secret}"}
    body = msgspec.msgpack.encode({"protocol": 1, "pad": b"x" * (AGENT_MAX_BODY + 16)})
    resp = master.request("POST", path, content=body, headers=headers)
    assert resp.status_code == 413, (resp.status_code, resp.content)
    assert agent_error_of(resp).code == "payload_too_large"


def test_no_unhandled_errors_in_the_log(master: Master) -> None:
    """Runs last in this module: nothing above made the master log an unhandled error."""
    bad = [r for r in master.log_records() if r.get("level") == "error" or r.get("status") == 500]
    assert not bad, bad


def _int_param_routes() -> list[Any]:
    out = []
    for method, path, _ in route_table():
        if ":int}" not in path:
            continue
        out.append(pytest.param(method, path, id=f"{method} {path}"))
    return out


@pytest.mark.parametrize(("method", "template"), _int_param_routes())
def test_id_beyond_64_bits(master: Master, admin: str, method: str, template: str) -> None:
    path = _PARAM.sub(lambda m: str(2**70) if m.group(2) == "int" else "x", template)
    kwargs: dict[str, Any] = {"json": {}} if method in ("POST", "PATCH", "PUT") else {}
    resp = master.request(method, path, token=admin, **kwargs)
    _assert_4xx(resp)
