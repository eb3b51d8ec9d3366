"""Relay pipes with a real master (in this process, so a test can open pipes and read their
counters) and a real agent process: bytes arrive byte-exact, a puller that goes away stops
the agent's push, only the pipe's node may push, a pipe times out, a slow puller holds the
source back instead of filling the master's memory, an old agent is refused in words."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mlsm import PROTOCOL_VERSION, errors
from mlsm.bulk import Sink, batch_wants, decode_manifest
from mlsm.bulk.manifest import Manifest
from mlsm.master.services.bulk import Pipe
from mlsm.master.services.bulk.pipes import PIPE_BUFFER_BYTES
from mlsm.wire import agent as w
from mlsm.wire import bulk as wb
from tests.integration.lab import ADMIN, PASSWORD, Lab
from tests.support.inproc import InProcessMaster
from tests.support.wait import wait_until

#: Long enough that a busy machine's agent is not taken for a stalled one (a full test run
#: in parallel workers on 2 cores has seen a 3 s pause); the one test that waits for it pays it.
IDLE_S = 10.0
BIG = 256 << 20  # a sparse file: reads fast, far more than any buffer on the way
SLOW = 64 << 20
TREE = {
    "a.txt": b"alpha\n",
    "empty": b"",
    "sub/deeper/b.bin": os.urandom(3 * (1 << 20) + 7),
    "sub/\u00e9t\u00e9.txt": b"unicode",
}


def make_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def sparse(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, InProcessMaster]]:
    base = tmp_path_factory.mktemp("pipes")
    master = InProcessMaster(
        base / "master",
        admin=ADMIN,
        password=PASSWORD,
        heartbeat_interval=0.5,
        stale_after=2.0,
        node_lease=5.0,
        bulk_idle_timeout=IDLE_S,
    ).start()
    with Lab(base / "lab") as lab:
        master.adopt(lab)
        root = lab.root / "roots" / "src"
        make_tree(root / "tree", TREE)
        sparse(root / "big" / "zeros", BIG)
        sparse(root / "slow" / "zeros", SLOW)
        lab.start_agent("src", gpus="", dataset_roots=[root])
        try:
            yield lab, master
        finally:
            lab.close()
            master.stop()


def fake_node(lab: Lab, name: str, protocol: int = PROTOCOL_VERSION) -> str:
    """A node the test speaks for (it never pushes unless told); its secret."""
    reg = lab.agent_call(
        "register",
        w.RegisterRequest(protocol=protocol, join_token=lab.join_token(), name=name),
        None,
    )
    assert reg.status_code == 200, reg.content
    secret = msgspec.msgpack.decode(reg.content, type=w.RegisterReply).node_secret
    hb = lab.agent_call("heartbeat", w.Heartbeat(protocol=protocol), secret)
    assert hb.status_code == 200, hb.content
    return secret


def open_pipe(master: InProcessMaster, node: str, kind: type, **fields: Any) -> Pipe:
    async def go() -> Pipe:
        assert master.services is not None
        n = master.services.nodes.get(node)
        return await master.services.pipes.open(n, kind, **fields)

    return master.run(go())


def read_all(master: InProcessMaster, pipe: Pipe) -> bytes:
    async def go() -> bytes:
        try:
            return await pipe.read_all(1 << 40)
        finally:
            pipe.close()

    return master.run(go())


def dataset(name: str) -> wb.SourceSpec:
    return wb.SourceSpec(kind="dataset", name=name)


def manifest_of(master: InProcessMaster, name: str) -> Manifest:
    pipe = open_pipe(master, "src", wb.BulkManifest, source=dataset(name))
    return decode_manifest(read_all(master, pipe))


def full_want(manifest: Manifest) -> wb.Want:
    files = [(i, 0, e.size) for i, e in enumerate(manifest.entries) if e.kind == "f"]
    wants = list(batch_wants(files, budget=1 << 40))
    assert len(wants) == 1
    return wants[0]


def test_a_pipe_delivers_a_tree_byte_exact(lab: tuple[Lab, InProcessMaster]) -> None:
    the_lab, master = lab
    manifest = manifest_of(master, "tree")
    assert {e.path for e in manifest.entries if e.kind == "f"} == set(TREE)
    pipe = open_pipe(
        master,
        "src",
        wb.BulkServe,
        source=dataset("tree"),
        want=full_want(manifest),
        manifest_digest=manifest.digest(),
    )
    body = read_all(master, pipe)
    sink = Sink(manifest, the_lab.root / "work", durable=False)
    assert sink.feed(body)
    assert sink.next_want() is None
    dest = the_lab.root / "received"
    sink.finish(dest)
    for rel, data in TREE.items():
        assert (dest / rel).read_bytes() == data


def test_a_source_error_reaches_the_puller_as_its_class(lab: tuple[Lab, InProcessMaster]) -> None:
    _, master = lab
    pipe = open_pipe(master, "src", wb.BulkManifest, source=dataset("absent"))
    with pytest.raises(errors.NotFound, match="no dataset absent"):
        read_all(master, pipe)
    stale = open_pipe(
        master,
        "src",
        wb.BulkServe,
        source=dataset("tree"),
        want=wb.Want([(0, 0, 1)]),
        manifest_digest="0" * 64,
    )
    with pytest.raises(errors.SourceChanged, match="changed at the source"):
        read_all(master, stale)


def test_a_puller_that_goes_away_stops_the_push(lab: tuple[Lab, InProcessMaster]) -> None:
    the_lab, master = lab
    manifest = manifest_of(master, "big")
    pipe = open_pipe(
        master,
        "src",
        wb.BulkServe,
        source=dataset("big"),
        want=full_want(manifest),
        manifest_digest=manifest.digest(),
    )

    async def one_chunk_then_leave() -> int:
        async for chunk in pipe:
            pipe.close()
            return len(chunk)
        return 0

    assert master.run(one_chunk_then_leave()) > 0
    pattern = re.compile(rf"pipe {re.escape(pipe.id)}: push stopped after (\d+) bytes")
    found = wait_until(
        lambda: pattern.search(the_lab.agents["src"].output()),
        what="the agent's log saying its push stopped",
    )
    assert int(found.group(1)) < BIG // 4
    assert pipe.bytes_in < BIG // 4
    assert len(master.services.pipes) == 0  # type: ignore[union-attr]


def test_a_slow_puller_holds_the_source_back(lab: tuple[Lab, InProcessMaster]) -> None:
    _, master = lab
    manifest = manifest_of(master, "slow")
    pipe = open_pipe(
        master,
        "src",
        wb.BulkServe,
        source=dataset("slow"),
        want=full_want(manifest),
        manifest_digest=manifest.digest(),
    )
    wait_until(lambda: pipe.peak_buffered >= PIPE_BUFFER_BYTES, what="the pipe's buffer full")
    assert pipe.bytes_in < SLOW // 2  # the source waits for the puller
    body = read_all(master, pipe)
    assert len(body) > SLOW
    assert pipe.peak_buffered <= PIPE_BUFFER_BYTES + (1 << 20)


def test_only_the_pipes_node_may_push(lab: tuple[Lab, InProcessMaster]) -> None:
    the_lab, master = lab
    secret = fake_node(the_lab, "ghost")
    pipe = open_pipe(master, "ghost", wb.BulkManifest, source=dataset("tree"))
    records = (
        wb.pipe_record(wb.PipeKind.DATA, b"hello")
        + wb.pipe_record(wb.PipeKind.DATA, b", world")
        + wb.pipe_record(wb.PipeKind.END)
    )
    route = f"bulk/push/{pipe.id}"
    other = the_lab.agent_call(route, records, the_lab.agents["src"].secret)
    assert other.status_code == 403, other.content
    assert the_lab.agent_call(route, records, None).status_code == 401
    own = the_lab.agent_call(route, records, secret)
    assert own.status_code == 200, own.content
    assert read_all(master, pipe) == b"hello, world"
    again = the_lab.agent_call(route, records, secret)
    assert again.status_code == 404  # a pipe takes one push, and is gone once read


def test_a_pipe_nobody_pushes_times_out(lab: tuple[Lab, InProcessMaster]) -> None:
    the_lab, master = lab
    fake_node(the_lab, "silent")
    pipe = open_pipe(master, "silent", wb.BulkManifest, source=dataset("tree"))
    with pytest.raises(errors.UnavailableError, match="has not started sending"):
        read_all(master, pipe)


def test_an_old_agent_is_refused_in_words(lab: tuple[Lab, InProcessMaster]) -> None:
    the_lab, master = lab
    fake_node(the_lab, "oldie", protocol=2)
    with pytest.raises(errors.Conflict, match="too old"):
        open_pipe(master, "oldie", wb.BulkManifest, source=dataset("tree"))
