"""The sync client's two wires answer alike against a real master.

:class:`~mlsm.client.Client` sends over the standard library's ``http.client`` unless it is
given an httpx transport (:mod:`mlsm.client.wires`); everything above the wire (the
request, the query, the error tree) is one code path. Each test runs the same calls over
both wires: answers, queries with booleans and lists, error answers mapped to the same
:mod:`mlsm.errors` class, streamed answers, raw and streamed (chunked) uploads, a master
that cannot be reached, and a kept-alive connection that the master closed meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from mlsm import errors
from mlsm.bulk import IgnoreRules, Source, batch_wants, build_manifest, encode_manifest
from mlsm.client import Client
from mlsm.client.wires import HttpxWire, StdlibWire
from mlsm.wire import api
from mlsm.wire.follow import LogEnded
from tests.integration.lab import Lab
from tests.support.procs import free_port
from tests.support.wait import wait_until

WIRES = ["stdlib", "httpx"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("wires")) as lab:
        lab.start_master()
        lab.start_agent("w1")
        lab.wait_node_state("w1", "online")
        yield lab


def _client(lab: Lab, wire: str, token: str | None = None, url: str | None = None) -> Client:
    transport = httpx.HTTPTransport() if wire == "httpx" else None
    c = Client(url or lab.url, lab.token if token is None else token, transport=transport)
    assert isinstance(c._wire, HttpxWire if wire == "httpx" else StdlibWire)
    return c


@pytest.mark.parametrize("wire", WIRES)
def test_answers_and_queries(lab: Lab, wire: str) -> None:
    with _client(lab, wire) as c:
        assert c.health().protocol >= 1
        job = c.jobs.submit(api.JobSubmit(argv=["true"], name=f"w-{wire}", hold=True)).job
        assert job.state == "held"
        held = c.jobs.list(state="held", all=True, limit=1000)  # bool and int parameters
        assert job.id in [j.id for j in held.jobs]
        assert all(j.state == "held" for j in held.jobs)
        assert c.jobs.cancel([job.id]).cancelled == [job.id]
        assert c.jobs.get(job.id).state == "cancelled"


@pytest.mark.parametrize("wire", WIRES)
def test_error_answers_map_to_the_same_errors(lab: Lab, wire: str) -> None:
    with _client(lab, wire) as c:
        with pytest.raises(errors.NotFound, match="no user named 'nobody\\\\nhere'"):
            c.users.get("nobody\nhere")
        with pytest.raises(errors.ValidationError):
            c.call("POST", "/api/v1/jobs", json={"argv": []})
    with (
        _client(lab, wire, token="mlsm_s_not-a-token") as c,
        pytest.raises(errors.AuthenticationError),
    ):
        c.jobs.list()


@pytest.mark.parametrize("wire", WIRES)
def test_streamed_answers(lab: Lab, wire: str) -> None:
    with _client(lab, wire) as c:
        job = c.jobs.submit(api.JobSubmit(argv=["sh", "-c", "echo one; echo two"])).job
        lab.wait_job(job.id)
        assert b"".join(c.jobs.log(job.id)).endswith(b"one\ntwo\n")
        events = list(c.jobs.follow(job.id))
        assert isinstance(events[-1], LogEnded)
        with pytest.raises(errors.NotFound):
            b"".join(c.jobs.log(10**9))


@pytest.mark.parametrize("wire", WIRES)
def test_raw_and_chunked_uploads(
    lab: Lab, wire: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tree = tmp_path_factory.mktemp(f"tree-{wire}")
    (tree / "a.txt").write_bytes(wire.encode() * 1000)
    (tree / "b.bin").write_bytes(wire.encode() + bytes(range(256)) * 300)  # new to the store
    manifest = build_manifest(tree, rules=IgnoreRules())
    with _client(lab, wire) as c:
        offer = c.code.offer(encode_manifest(manifest))  # raw bytes, MessagePack
        assert sorted(offer.want) == [0, 1]
        with Source.from_tree(tree, manifest) as source:
            missing = ((i, 0, manifest.entries[i].size) for i in offer.want)
            want = next(batch_wants(missing, budget=1 << 30, max_items=100))
            done = c.code.upload(offer.digest, source.chunks(want))  # an iterator: chunked
        assert done.want == []
        assert done.digest == offer.digest


@pytest.mark.parametrize("wire", WIRES)
def test_an_unreachable_master_is_unavailable(lab: Lab, wire: str) -> None:
    with _client(lab, wire, url=f"http://127.0.0.1:{free_port()}") as c:
        with pytest.raises(errors.UnavailableError, match="cannot reach the master at"):
            c.jobs.list()
        with pytest.raises(errors.UnavailableError, match="cannot reach the master at"):
            b"".join(c.jobs.log(1))


@pytest.mark.parametrize("wire", WIRES)
def test_a_connection_the_master_closed_is_opened_again(lab: Lab, wire: str) -> None:
    with _client(lab, wire) as c:
        assert c.health().protocol >= 1
        lab.stop_master()
        lab.start_master()
        wait_until(lambda: httpx.get(f"{lab.url}/healthz").status_code == 200, 20, "master up")
        # The kept-alive connection died with the old process: the call opens a new one.
        assert c.auth.me().username == "root"
