"""Bad input at the edge of a real master: every route that takes a JSON body refuses bad
JSON, wrong types, unknown fields, oversized bodies, nesting deeper than a decoder goes and
integers beyond 64 bits with a structured 4xx (never a 500); every integer query parameter
and path id is bounded the same way; every agent route refuses malformed, deeply nested or
out-of-range MessagePack with a MessagePack error; and the CLI answers a huge number with
one line."""

from __future__ import annotations

import inspect
import re
import typing
from typing import Any

import msgspec
import pytest

from mlsm.config import Settings
from mlsm.wire import agent as w
from mlsm.wire import bulk as wb
from mlsm.wire import code as wc
from mlsm.wire import outputs as wo
from tests.integration.helpers import (
    Master,
    agent_error_of,
    assert_one_line_error,
    error_of,
    route_table,
)

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
#: Agent routes whose body is a stream of pipe records, not one struct (their bad input:
#: tests/integration/test_bulk_pipes.py).
STREAM_ROUTES = {"/agent/v1/bulk/push/{pipe_id:str}"}
AGENT_ROUTES = sorted(
    {p for _, p, _ in ROUTES if p.startswith("/agent/") and p not in STREAM_ROUTES}
)
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


@pytest.mark.parametrize(("method", "template"), _int_param_routes())
def test_id_one_past_64_bits_names_the_parameter(
    master: Master, admin: str, method: str, template: str
) -> None:
    name = _PARAM.search(template).group(1)  # type: ignore[union-attr]
    for value in (2**63, 2**63 + 1, 0, -1):
        path = _PARAM.sub(lambda m, v=value: str(v) if m.group(2) == "int" else "x", template)
        kwargs: dict[str, Any] = {"json": {}} if method in ("POST", "PATCH", "PUT") else {}
        resp = master.request(method, path, token=admin, **kwargs)
        err = _assert_4xx(resp)
        assert resp.status_code == 400, (value, resp.text)
        assert err["details"].get("path") == name, err


# ---------------------------------------------------------------- nesting and huge integers
#: ``[`` x 5,000 (truncated, as sent in the review) and a 200,000-deep value under a field
#: (a 400 KB body, under the body limit): deeper than any decoder recursion allows.
DEEP_BODIES = {
    "5,000 open arrays": b"[" * 5000,
    "200k deep array": b"[" * 200_000 + b"]" * 200_000,
    "200k deep under a field": b'{"nested": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
}
INT64_MAX = 2**63 - 1
HUGE_INTS = (2**63, 2**70, -(2**63) - 1)


@pytest.mark.parametrize(("method", "template", "data_type"), JSON_ROUTES, ids=JSON_IDS)
def test_deep_nesting_is_a_400(
    master: Master, admin: str, method: str, template: str, data_type: Any
) -> None:
    for what, body in DEEP_BODIES.items():
        resp = _send(
            master,
            method,
            template,
            admin,
            content=body,
            headers={"Content-Type": "application/json"},
        )
        err = _assert_4xx(resp)
        assert resp.status_code == 400, (what, resp.text)
        assert err["code"] in ("validation_error", "bad_request"), (what, err)


def _deep_msgpack(depth: int) -> bytes:
    """A map with the known ``protocol`` and an unknown field nested ``depth`` arrays deep
    (structs skip unknown fields for schema evolution, so the decoder must walk it)."""
    return b"\x82" + b"\xa8protocol\x01" + b"\xa6nested" + b"\x91" * depth + b"\xc0"


@pytest.mark.parametrize("path", AGENT_ROUTES)
def test_deep_msgpack_nesting_is_a_400(master: Master, node_secret: str, path: str) -> None:
    headers = {"Content-Type": "application/msgpack", "Authorization": f"Node {node_secret}"}
    for depth in (5_000, 200_000):
        resp = master.request("POST", path, content=_deep_msgpack(depth), headers=headers)
        assert resp.status_code == 400, (depth, resp.status_code, resp.content[:200])
        assert agent_error_of(resp).code == "validation_error"


def _int_fields(data_type: Any) -> list[tuple[str, bool]]:
    """(field, is a list of ints) for every integer field of a request struct."""
    out = []
    for field in msgspec.structs.fields(data_type):
        text = str(field.type)
        if re.search(r"\bint\b", text) and "str" not in text:
            out.append((field.encode_name, text.startswith("list") or "list[" in text))
    return out


_INT_FIELD_CASES = [
    pytest.param(m, p, name, is_list, id=f"{m} {p} {name}")
    for m, p, t in JSON_ROUTES
    for name, is_list in _int_fields(t)
]


def test_integer_fields_were_found() -> None:
    names = {(p, n) for _, p, n, _ in (c.values for c in _INT_FIELD_CASES)}
    assert ("/api/v1/jobs/cancel", "ids") in names
    assert ("/api/v1/settings", "import_max_bytes") in names


@pytest.mark.parametrize(("method", "template", "field", "is_list"), _INT_FIELD_CASES)
def test_huge_integer_in_a_body_names_the_field(
    master: Master, admin: str, method: str, template: str, field: str, is_list: bool
) -> None:
    for value in HUGE_INTS:
        resp = _send(master, method, template, admin, json={field: [value] if is_list else value})
        err = _assert_4xx(resp)
        assert resp.status_code == 400, (value, resp.text)
        assert err["code"] == "validation_error", err
        assert err["details"]["path"] in (field, f"{field}[0]"), err


def _int_query_params() -> list[Any]:
    """(method, path template, query parameter) of every integer query parameter."""
    from mlsm.master.app import create_app

    doc = create_app(Settings(data_dir="/nonexistent-mlsm-test")).openapi_schema.to_schema()
    out = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for prm in op.get("parameters", []):
                if prm["in"] == "query" and "integer" in str(prm.get("schema", {})):
                    template = re.sub(r"\{(\w+)\}", r"{\1:int}", path)
                    out.append(
                        pytest.param(
                            method.upper(), template, prm["name"], id=f"{path} {prm['name']}"
                        )
                    )
    return out


@pytest.mark.parametrize(("method", "template", "name"), _int_query_params())
def test_huge_integer_in_a_query_names_it(
    master: Master, admin: str, method: str, template: str, name: str
) -> None:
    path = _PARAM.sub("1", template)
    for value in HUGE_INTS:
        resp = master.request(method, path, token=admin, params={name: str(value)})
        err = _assert_4xx(resp)
        assert resp.status_code == 400, (value, resp.text)
        assert err["details"].get("path") == name, err


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("after", ["9999999999999999999999999"]),  # 25 digits
        ("after", [str(INT64_MAX + 1)]),  # 19 digits, one past what a database holds
        ("array", "0-99999999999999999999"),
        ("array", "99999999999999999999"),
        ("array", f"{INT64_MAX}-{INT64_MAX + 1}"),
    ],
)
def test_huge_numbers_in_submit_strings_name_the_field(
    master: Master, admin: str, field: str, value: Any
) -> None:
    resp = master.request(
        "POST", "/api/v1/jobs", token=admin, json={"argv": ["true"], field: value}
    )
    err = _assert_4xx(resp)
    assert resp.status_code == 400, resp.text
    assert err["details"]["path"] in (field, f"{field}[0]"), err


AGENT_BODIES: dict[str, type] = {
    "/agent/v1/register": w.RegisterRequest,
    "/agent/v1/heartbeat": w.Heartbeat,
    "/agent/v1/commands": w.CommandPoll,
    "/agent/v1/events": w.JobEvents,
    "/agent/v1/logs": w.LogChunk,
    "/agent/v1/datasets": w.DatasetReport,
    "/agent/v1/outputs/removed": wo.JobDirsRemoved,
    "/agent/v1/code/manifest": wc.CodeManifestFetch,
    "/agent/v1/code/blobs": wc.CodeBlobsFetch,
    "/agent/v1/projects": wc.ProjectReport,
    "/agent/v1/projects/pull": wc.ProjectPull,
    "/agent/v1/bulk/pull": wb.BulkPull,
}


def test_every_agent_route_has_its_body_type_here() -> None:
    assert set(AGENT_BODIES) == set(AGENT_ROUTES)
    assert all(not _int_fields(AGENT_BODIES[p]) for p in NO_INTEGERS)


#: Agent routes whose body carries no integer at all (nothing for the test below to send).
NO_INTEGERS = {"/agent/v1/projects/pull"}


@pytest.mark.parametrize("path", [p for p in AGENT_ROUTES if p not in NO_INTEGERS])
def test_huge_integers_from_an_agent_are_a_400(master: Master, node_secret: str, path: str) -> None:
    headers = {"Content-Type": "application/msgpack", "Authorization": f"Node {node_secret}"}
    fields = _int_fields(AGENT_BODIES[path])
    if path == "/agent/v1/events":
        fields = [("jobs", False)]
    assert fields or path == "/agent/v1/datasets"
    if path == "/agent/v1/datasets":
        fields = [("upsert", False)]
    for name, is_list in fields:
        value: Any = [2**63] if is_list else 2**63  # msgpack carries up to 2**64 - 1
        if name == "jobs":
            value = [{"job_id": 2**63, "state": "running"}]
        if name == "upsert":
            value = [{"root": "/d", "name": "x", "path": "/d/x", "size": 2**63}]
        body = msgspec.msgpack.encode({"protocol": 1, name: value})
        resp = master.request("POST", path, content=body, headers=headers)
        assert resp.status_code == 400, (name, resp.status_code, resp.content[:200])
        err = agent_error_of(resp)
        assert err.code == "validation_error" and f"$.{name}" in err.message, err


def test_a_submission_that_would_store_too_much_is_refused(master: Master) -> None:
    """569 KiB of env x a 100-task array once made the database grow by 56 MiB."""
    from mlsm.master.jobspec import MAX_SUBMISSION_STORED_BYTES

    member = master.make_user("member")
    before = master.request("GET", "/api/v1/jobs?all=true", token=member).json()["total"]
    env = {f"VAR{i}": "x" * 4000 for i in range(140)}
    resp = master.request(
        "POST", "/api/v1/jobs", token=member, json={"argv": ["true"], "array": "0-99", "env": env}
    )
    err = _assert_4xx(resp)
    assert resp.status_code == 413, resp.text
    assert err["code"] == "payload_too_large", err
    assert err["details"]["limit_bytes"] == MAX_SUBMISSION_STORED_BYTES
    assert err["details"]["tasks"] == 100
    assert f"{MAX_SUBMISSION_STORED_BYTES >> 20} MiB" in err["message"]
    after = master.request("GET", "/api/v1/jobs?all=true", token=member).json()["total"]
    assert after == before


@pytest.mark.parametrize(
    "args",
    [
        ["cancel", "99999999999999999999999"],
        ["cancel", "5-99999999999999999999"],
        ["cancel", "9-5"],
        ["cancel", "1-20000"],
        ["job", "show", "99999999999999999999999"],
        ["logs", "99999999999999999999999"],
        ["submit", "--after", "9999999999999999999999999", "--", "true"],
        ["submit", "--after", str(INT64_MAX + 1), "--", "true"],
        ["submit", "--array", "0-99999999999999999999", "--", "true"],
        ["cancel", "5_99999999999999999999999"],
        ["cancel", "5_[0-99999999999999999999]"],
        ["job", "edit", "99999999999999999999999", "--priority", "1"],
        ["job", "show", "5_99999999999999999999999"],
        ["restart", "99999999999999999999999"],
        ["wait", "99999999999999999999999"],
    ],
    ids=" ".join,
)
def test_cli_answers_a_huge_number_with_one_line(
    master: Master, admin: str, args: list[str], tmp_path: Any
) -> None:
    res = master.cli(args, token=admin, home=tmp_path)
    assert_one_line_error(res)


def test_cli_cancels_a_range(master: Master, admin: str, tmp_path: Any) -> None:
    ids = [
        master.request(
            "POST", "/api/v1/jobs", token=admin, json={"argv": ["true"], "hold": True}
        ).json()["job"]["id"]
        for _ in range(3)
    ]
    res = master.cli(["cancel", f"{ids[0]}-{ids[-1]}"], token=admin, home=tmp_path)
    assert res.rc == 0, res
    assert [f"job {i} cancelled" for i in ids] == res.out.splitlines()


def test_no_unhandled_errors_in_the_log(master: Master) -> None:
    """Runs last in this module: nothing above made the master log an unhandled error."""
    bad = [r for r in master.log_records() if r.get("level") == "error" or r.get("status") == 500]
    assert not bad, bad


# ---------------------------------------------------------------- WebSocket queries
@pytest.mark.parametrize(
    "query",
    ["rows=0", "cols=70000", "rows=abc", "term=x%20y", "term=" + "x" * 100, "nope=1"],
)
def test_a_shells_bad_query_is_a_400_naming_it(master: Master, admin: str, query: str) -> None:
    """WebSocket queries are checked by mlsm, so a bad one is a 4400 close with the error
    JSON (never Litestar's 4500 for a failed validation)."""
    resp = master.request("WS", f"/api/v1/jobs/1/shell?{query}", token=admin)
    err = _assert_4xx(resp)
    assert resp.status_code == 400 and err["code"] == "validation_error", err
