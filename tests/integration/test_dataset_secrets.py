"""Secrets in import URLs, end to end: a real master and agent (both logging at debug
level) import from a local server through presigned URLs with a password in them, one
that succeeds and some that fail; neither the password nor the signature reaches any API
answer (admin's or member's), CLI output, audit row, master log, agent log, or the stored
command once the import is over. A hostile or old agent that reports the full URL in its
messages is redacted by the master too."""

from __future__ import annotations

import http.server
import io
import sqlite3
import tarfile
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from mlsm import PROTOCOL_VERSION
from mlsm.wire import agent as w
from mlsm.wire import api
from tests.integration.lab import Lab
from tests.support.wait import wait_until

TRANSFER_DEADLINE_S = 60.0
PASSWORD = "pA55-w0rd-in-url"
CREDENTIAL = "AKIA0SECRETCREDENTIAL"
GOOD_SIG = "600d5160a7e0f1e2d3c4"
BAD_SIG = "bad5160a7e0f1e2d3c4"
FRAGMENT = "frag-token-7a7a7a"
SECRETS = (PASSWORD, CREDENTIAL, GOOD_SIG, BAD_SIG, FRAGMENT)


def _archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        ti = tarfile.TarInfo("shard-0.bin")
        ti.size = 5
        tf.addfile(ti, io.BytesIO(b"shard"))
    return buf.getvalue()


ARCHIVE = _archive()


class _Presigned(http.server.BaseHTTPRequestHandler):
    """``/signed/<name>?X-Amz-Credential=..&X-Amz-Signature=<sig>``: 200 with the archive
    when the signature is good, 403 otherwise; ``/to-signed/<name>`` redirects to a
    presigned URL with a bad signature (the secret is then only in ``Location``)."""

    def do_GET(self) -> None:
        route, _, rest = self.path.lstrip("/").partition("/")
        name, _, query = rest.partition("?")
        if route == "signed" and query == _query(GOOD_SIG):
            self._send(200, ARCHIVE)
        elif route == "to-signed":
            self.send_response(302)
            self.send_header("Location", f"/signed/{name}?{_query(BAD_SIG)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(403, b"<Error><Code>SignatureDoesNotMatch</Code></Error>")

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _query(sig: str) -> str:
    return f"X-Amz-Credential={CREDENTIAL}%2F20260101&X-Amz-Signature={sig}"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Presigned)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("secrets")) as lab:
        lab.start_master(MLSM_LOG_LEVEL="debug")
        lab.start_agent(
            "sec",
            gpus="1xA100-80GB",
            dataset_roots=[lab.root / "roots" / "sec"],
            env={"MLSM_LOG_LEVEL": "debug"},
        )
        res = lab.cli("settings", "set", "--import-allow-cidr", "127.0.0.0/8")
        assert res.returncode == 0, res.stderr
        yield lab


def _url(server: str, path: str) -> str:
    return f"http://reader:{PASSWORD}@{server}{path}#{FRAGMENT}"


def _secret_free(where: str, text: str) -> None:
    for s in SECRETS:
        assert s not in text, f"{s!r} is in the {where}:\n{text[-3000:]}"


def _import(lab: Lab, url: str, name: str) -> tuple[int, str]:
    res = lab.cli("dataset", "import", url, "--node", "sec", "--name", name, "--wait")
    out = res.stdout + res.stderr
    _secret_free(f"output of `mlsm dataset import` ({name})", out)
    return res.returncode, out


def _get(lab: Lab, path: str, token: str | None = None) -> str:
    """The raw text of an API answer."""
    headers = {"Authorization": f"Bearer {token or lab.token}"}
    r = httpx.get(f"{lab.url}{path}", headers=headers, timeout=30.0)
    assert r.status_code == 200, r.text
    return r.text


def _command_bodies(lab: Lab) -> list[bytes]:
    """Every command the master stored for agents, straight from its database."""
    if not lab.database_url:
        assert lab.master_data is not None
        with sqlite3.connect(lab.master_data / "mlsm.db") as db:
            return [bytes(r[0]) for r in db.execute("SELECT body FROM commands")]

    async def fetch() -> list[bytes]:
        import asyncpg

        from tests.support.postgres import asyncpg_dsn

        conn = await asyncpg.connect(asyncpg_dsn(lab.database_url))
        try:
            return [bytes(r[0]) for r in await conn.fetch("SELECT body FROM commands")]
        finally:
            await conn.close()

    from tests.support.postgres import run_async

    return list(run_async(fetch()))


def test_import_url_secrets_reach_no_answer_output_audit_row_or_log(lab: Lab, server: str) -> None:
    rc, out = _import(lab, _url(server, f"/signed/good.tar.gz?{_query(GOOD_SIG)}"), "signed")
    assert rc == 0, out
    assert (lab.root / "roots" / "sec" / "signed" / "shard-0.bin").read_bytes() == b"shard"
    rc, out = _import(lab, _url(server, f"/signed/bad.tar.gz?{_query(BAD_SIG)}"), "badsig")
    assert rc != 0 and "403" in out, out
    assert f"http://***@{server}/signed/bad.tar.gz?***" in out  # named, without its secrets
    rc, out = _import(lab, _url(server, "/to-signed/moved.tar.gz"), "redirected")
    assert rc != 0 and "403" in out and f"{server}/signed/moved.tar.gz?***" in out, out

    member = lab.add_user("secreader")
    for who, token in (("admin", None), ("member", member)):
        for args in (
            ("transfers",),
            ("transfers", "--json"),
            ("dataset", "transfers", "--json"),
            ("datasets", "--json"),
            ("dataset", "show", "signed"),
            ("dataset", "show", "signed", "--json"),
        ):
            res = lab.cli(*args, token=token)
            assert res.returncode == 0, (args, res.stderr)
            _secret_free(f"{who}'s `mlsm {' '.join(args)}`", res.stdout + res.stderr)
        listed = _get(lab, "/api/v1/transfers", token)
        _secret_free(f"{who}'s transfer list", listed)
        imports = [t for t in msgspec.json.decode(listed, type=list[api.Transfer])]
        assert len(imports) == 3 and {t.state for t in imports} == {"succeeded", "failed"}
        for t in imports:
            _secret_free(f"{who}'s transfer {t.id}", _get(lab, f"/api/v1/transfers/{t.id}", token))
        for path in ("/api/v1/datasets", "/api/v1/datasets/signed"):
            _secret_free(f"{who}'s {path}", _get(lab, path, token))

    res = lab.cli("audit", "--json", "--action", "dataset.import")
    assert res.returncode == 0, res.stderr
    rows = res.json()
    assert len(rows) == 3 and all("?***" in r["details"]["url"] for r in rows), rows
    _secret_free("audit log", res.stdout)
    _secret_free("audit log's API", _get(lab, "/api/v1/audit"))
    assert lab.cli("audit", "--verify").returncode == 0

    for body in _command_bodies(lab):
        _secret_free("master's stored commands", body.decode(errors="replace"))
    _secret_free("master log", (lab.root / "logs" / "master.log").read_text(errors="replace"))
    _secret_free("agent log", lab.agents["sec"].output())


def test_the_master_redacts_what_an_old_or_hostile_agent_reports(lab: Lab, server: str) -> None:
    """An agent that sends the full URL back in its messages (as agents before this rule
    did, in httpx's own error text): the master takes the message in redacted."""
    reg = lab.agent_call(
        "register",
        w.RegisterRequest(
            protocol=PROTOCOL_VERSION,
            join_token=lab.join_token(),
            name="secold",
            info=w.NodeInfo(dataset_roots=["/old"]),
        ),
        None,
    )
    secret = msgspec.msgpack.decode(reg.content, type=w.RegisterReply).node_secret

    def call(route: str, body: Any) -> httpx.Response:
        resp = lab.agent_call(route, body, secret)
        assert resp.status_code == 200, resp.content
        return resp

    call("heartbeat", w.Heartbeat(protocol=PROTOCOL_VERSION))
    url = _url(server, f"/signed/old.tar.gz?{_query(BAD_SIG)}")
    body = api.DatasetImport(url=url, node="secold", name="fromold")
    t = lab.admin.call("POST", "/api/v1/datasets/import", json=body, type=api.Transfer)
    batch = msgspec.msgpack.decode(
        call("commands", w.CommandPoll(protocol=PROTOCOL_VERSION, wait_s=5)).content,
        type=w.CommandBatch,
    )
    cmd = next(c for c in batch.commands if isinstance(c, w.ImportDataset))
    assert cmd.url == url  # the agent, and only the agent, gets the URL whole
    running = w.TransferProgress(command_id=cmd.id, done_bytes=1, message=f"fetching {url}")
    call("heartbeat", w.Heartbeat(protocol=PROTOCOL_VERSION, transfers=[running]))
    seen = wait_until(
        lambda: (
            (
                x := lab.admin.call("GET", f"/api/v1/transfers/{t.id}", type=api.Transfer)
            ).message.startswith("fetching")
            and x
        ),
        TRANSFER_DEADLINE_S,
        "the running report",
    )
    _secret_free("running transfer", seen.message)
    failed = w.TransferProgress(
        command_id=cmd.id,
        state="failed",
        message=f"Client error '403 Forbidden' for url '{url}' (signature {BAD_SIG})",
    )
    call("heartbeat", w.Heartbeat(protocol=PROTOCOL_VERSION, transfers=[failed]))
    end = wait_until(
        lambda: (
            (x := lab.admin.call("GET", f"/api/v1/transfers/{t.id}", type=api.Transfer)).state
            == "failed"
            and x
        ),
        TRANSFER_DEADLINE_S,
        "the failure",
    )
    assert "403 Forbidden" in end.message and "?***" in end.message, end.message
    _secret_free("failed transfer", end.message)
    _secret_free("transfer list", lab.cli("transfers").stdout)
    for body in _command_bodies(lab):  # the ended import's command holds no secret now
        _secret_free("master's stored commands", body.decode(errors="replace"))
    _secret_free("master log", (lab.root / "logs" / "master.log").read_text(errors="replace"))


def test_a_url_the_master_cannot_read_is_refused_without_echoing_it(lab: Lab) -> None:
    for url in (
        f"http://user:{PASSWORD}/x@127.0.0.1/data.tar",  # the parser sees port {PASSWORD}/x
        f"http://127.0.0.1:99999/data.tar?sig={GOOD_SIG}",
    ):
        body = {"url": url, "node": "sec", "name": "unreadable"}
        r = httpx.post(
            f"{lab.url}/api/v1/datasets/import",
            json=body,
            headers={"Authorization": f"Bearer {lab.token}"},
            timeout=30.0,
        )
        assert r.status_code == 400, r.text
        assert "invalid URL" in r.json()["error"]["message"]
        _secret_free("error answer", r.text)
