"""Datasets end to end: real master, real agents with temporary dataset roots, the real CLI.

Scanning while heartbeats keep their rhythm, the catalog (copies, edits), imports from a
local HTTP server (allowed by an admin setting), hostile archives, checksums, copies and
moves relayed through the master and verified file by file, deletes and their refusals,
placement by dataset, and path safety at the import and delete routes.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import itertools
import os
import signal
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from mlsm import PROTOCOL_VERSION
from mlsm.client import Client
from mlsm.wire import agent as w
from mlsm.wire import api
from tests.integration.lab import (
    STALE_S,
    AgentProc,
    Lab,
)
from tests.support.wait import wait_until

TRANSFER_DEADLINE_S = 60.0
SCAN_FILES = 40_000  # small files in the dataset scanned while heartbeats go on
SCAN_DIRS = 200
BIG_FILE = 5 * (1 << 20) + 123  # spans several 1 MiB transfer chunks


# ------------------------------------------------------------------ the lab
def start_agent(lab: Lab, name: str, roots: list[Path], *, wait: bool = True) -> AgentProc:
    """An agent with dataset roots and one simulated GPU."""
    return lab.start_agent(name, gpus="1xA100-80GB", dataset_roots=roots, wait=wait)


#: Datasets on each node's disk before its agent starts (so the first scan reports them).
CORPUS = {
    "big.bin": os.urandom(BIG_FILE),
    "nested/deeper/small.txt": b"small\n",
    "empty": b"",
    "nested/\u00e9t\u00e9.txt": b"unicode name",
}
TOMOVE = {"part-0": os.urandom(70_000), "sub/part-1": b"one"}
BEFORE: dict[str, dict[str, dict[str, bytes]]] = {
    "dsa": {
        "shared": {"readme.txt": b"same name, two nodes\n"},
        "corpus": CORPUS,
        "queued-on": {"x": b"1"},
        "oversized": {"a.bin": os.urandom(3 << 20)},
        "tocancel": {"a.bin": os.urandom(4 << 20)},
    },
    "dsb": {
        "shared": {"readme.txt": b"same name, two nodes\n"},
        "tomove": TOMOVE,
        "inuse": {"data": b"needed"},
        "only-b": {"f": b"b"},
        # named like the static action routes POST /api/v1/datasets/{transfer,import}
        "transfer": {"t": b"named transfer"},
        "import": {"i": b"named import"},
    },
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("datasets")) as lab:
        lab.start_master()
        for name, datasets in BEFORE.items():
            root = lab.root / "roots" / name
            for ds, files in datasets.items():
                make_tree(root / ds, files)
            start_agent(lab, name, [root])
        start_agent(lab, "dsnoroot", [])
        yield lab


def root_of(lab: Lab, node: str) -> Path:
    return lab.root / "roots" / node


def make_tree(path: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        f = path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
    return path


def tree(path: Path) -> dict[str, bytes]:
    """Every regular file under ``path`` (relative path -> content)."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def listing(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()}


def catalog(lab: Lab, name: str) -> api.Dataset | None:
    for d in lab.admin.call("GET", "/api/v1/datasets", type=list[api.Dataset]):
        if d.name == name:
            return d
    return None


def copies_on(lab: Lab, name: str) -> set[str]:
    d = catalog(lab, name)
    return {c.node for c in d.copies} if d else set()


def wait_copies(lab: Lab, name: str, nodes: set[str]) -> None:
    wait_until(lambda: copies_on(lab, name) == nodes, TRANSFER_DEADLINE_S, f"{name} on {nodes}")


def transfer(lab: Lab, tid: int) -> api.Transfer:
    return lab.admin.call("GET", f"/api/v1/transfers/{tid}", type=api.Transfer)


def wait_transfer(lab: Lab, tid: int) -> api.Transfer:
    return wait_until(
        lambda: (t := transfer(lab, tid)).state not in ("pending", "running") and t,
        TRANSFER_DEADLINE_S,
        f"transfer {tid} to end",
    )


def no_leftovers(root: Path) -> None:
    hidden = [n for n in listing(root) if n.startswith(".mlsm-")]
    assert not hidden, hidden


def raw(lab: Lab, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token or lab.token}"}
    return httpx.request(method, f"{lab.url}{path}", headers=headers, timeout=30.0, **kw)


# ------------------------------------------------------------------ scanning and catalog
def test_scanning_many_small_files_keeps_heartbeats_in_rhythm(lab: Lab) -> None:
    root = lab.root / "roots" / "dsscan"
    many = root / "many"
    for d in range(SCAN_DIRS):
        sub = many / f"d{d:03}"
        sub.mkdir(parents=True)
        for i in range(SCAN_FILES // SCAN_DIRS):
            (sub / f"f{i:04}").write_bytes(b"x")
    start_agent(lab, "dsscan", [root], wait=False)
    seen: list[float] = []
    states: list[str] = []

    def sample() -> None:
        for node in lab.nodes():
            if node.name == "dsscan" and node.last_seen is not None:
                states.append(node.state)
                if not seen or node.last_seen != seen[-1]:
                    seen.append(node.last_seen)

    def scanned() -> bool:
        sample()
        d = catalog(lab, "many")
        return d is not None and d.copies[0].files == SCAN_FILES

    wait_until(scanned, TRANSFER_DEADLINE_S, "the big dataset in the catalog")
    n = len(seen)
    wait_until(lambda: sample() or len(seen) >= n + 3, 4 * STALE_S, "three more heartbeats")
    d = catalog(lab, "many")
    assert d is not None
    assert d.copies[0].size == SCAN_FILES and d.copies[0].top[:2] == ["d000", "d001"]
    assert set(states) == {"online"}, states
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert max(gaps) < STALE_S, gaps


def test_the_same_name_on_two_nodes_is_two_copies(lab: Lab) -> None:
    wait_copies(lab, "shared", {"dsa", "dsb"})
    res = lab.cli("datasets", "--json")
    assert res.returncode == 0, res.stderr
    shared = [d for d in res.json() if d["name"] == "shared"]
    assert len(shared) == 1 and len(shared[0]["copies"]) == 2
    only_a = lab.cli("datasets", "--node", "dsa", "--json").json()
    assert [c["node"] for d in only_a if d["name"] == "shared" for c in d["copies"]] == ["dsa"]
    show = lab.cli("dataset", "show", "shared")
    assert show.returncode == 0 and "dsa" in show.stdout and "dsb" in show.stdout


def test_owners_and_admins_edit_description_and_tags(lab: Lab) -> None:
    owner = lab.add_user("dsowner")
    other = lab.add_user("dsother")
    res = lab.cli("dataset", "set", "shared", "--owner", "dsowner")
    assert res.returncode == 0, res.stderr
    res = lab.cli("dataset", "set", "shared", "--description", "mine", "--tag", "nlp", token=owner)
    assert res.returncode == 0, res.stderr
    res = lab.cli("dataset", "set", "shared", "--description", "theirs", token=other)
    assert res.returncode != 0 and "only the owner" in res.stderr
    res = lab.cli("dataset", "set", "shared", "--tag", "vision", "--tag", "nlp")
    assert res.returncode == 0, res.stderr
    d = catalog(lab, "shared")
    assert d is not None
    assert (d.description, d.tags, d.owner) == ("mine", ["nlp", "vision"], "dsowner")


@pytest.mark.parametrize("name", ["transfer", "import"])
def test_a_dataset_named_like_an_action_route_is_shown_edited_and_deleted(
    lab: Lab, name: str
) -> None:
    wait_copies(lab, name, {"dsb"})
    show = lab.cli("dataset", "show", name, "--json")
    assert show.returncode == 0, show.stderr
    assert show.json()["name"] == name
    res = lab.cli("dataset", "set", name, "--description", f"the {name} set")
    assert res.returncode == 0, res.stderr
    d = catalog(lab, name)
    assert d is not None and d.description == f"the {name} set"
    member = lab.add_user(f"m-{name}")
    refused = raw(lab, "DELETE", f"/api/v1/datasets/{name}", params={"node": "dsb"}, token=member)
    assert refused.status_code == 403, refused.text
    res = lab.cli("dataset", "rm", name, "--node", "dsb", "--yes", "--wait")
    assert res.returncode == 0, res.stderr
    assert not (root_of(lab, "dsb") / name).exists()
    wait_copies(lab, name, set())
    audit = lab.admin.call("GET", "/api/v1/audit", params={"action": "dataset.delete"})
    # a refused request never reached its handler: its row names the path
    targets = {f"dataset:{name}", f"/api/v1/datasets/{name}"}
    outcomes = {(a["actor"], a["outcome"]) for a in audit if a["target"] in targets}
    assert outcomes == {(f"m-{name}", "denied"), ("root", "ok")}


# ------------------------------------------------------------------ imports
class _Files(http.server.SimpleHTTPRequestHandler):
    release = threading.Event()

    def do_GET(self) -> None:
        if self.path == "/slow":  # announces 10 MiB, sends 64 KiB, then waits for the test
            self.send_response(200)
            self.send_header("Content-Length", str(10 << 20))
            self.end_headers()
            self.wfile.write(b"s" * (64 << 10))
            self.wfile.flush()
            self.release.wait(TRANSFER_DEADLINE_S)
            return
        super().do_GET()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local HTTP server on 127.0.0.1 serving good and hostile archives."""
    d = tmp_path_factory.mktemp("web")
    good = io.BytesIO()
    with tarfile.open(fileobj=good, mode="w:gz") as tf:
        for name, data in {"images/a.png": b"A" * 1000, "labels.csv": b"a,1\n"}.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    (d / "good.tar.gz").write_bytes(good.getvalue())
    (d / "plain.bin").write_bytes(os.urandom(3000))
    slip = io.BytesIO()
    with zipfile.ZipFile(slip, "w") as zf:
        zf.writestr("ok.txt", b"fine")
        zf.writestr("../../../../escaped-by-zip.txt", b"owned")
    (d / "slip.zip").write_bytes(slip.getvalue())
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tf:
        link = tarfile.TarInfo("link")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc"
        tf.addfile(link)
        ti = tarfile.TarInfo("link/escaped-by-tar")
        ti.size = 5
        tf.addfile(ti, io.BytesIO(b"owned"))
    (d / "symlink.tar").write_bytes(evil.getvalue())

    def handler(*args: Any, **kw: Any) -> _Files:
        return _Files(*args, directory=str(d), **kw)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        _Files.release.set()
        server.shutdown()
        server.server_close()


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_import_from_loopback_is_refused_until_an_admin_allows_it(lab: Lab, web: str) -> None:
    before = listing(root_of(lab, "dsa"))
    res = lab.cli("dataset", "import", f"{web}/good.tar.gz", "--node", "dsa", "--name", "web")
    assert res.returncode != 0
    assert "--import-allow-cidr" in res.stderr and "internal address" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert listing(root_of(lab, "dsa")) == before
    res = lab.cli("settings", "set", "--import-allow-cidr", "127.0.0.0/8")
    assert res.returncode == 0, res.stderr


@pytest.fixture
def allowed(lab: Lab, web: str) -> str:
    res = lab.cli("settings", "set", "--import-allow-cidr", "127.0.0.0/8")
    assert res.returncode == 0, res.stderr
    return web


def test_import_an_archive_with_a_good_checksum(lab: Lab, allowed: str, web: str) -> None:
    data = httpx.get(f"{web}/good.tar.gz").content
    res = lab.cli(
        "dataset", "import", f"{web}/good.tar.gz", "--node", "dsa", "--name", "webdata",
        "--sha256", sha256_of(data), "--wait",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "succeeded" in res.stdout
    assert tree(root_of(lab, "dsa") / "webdata") == {
        "images/a.png": b"A" * 1000,
        "labels.csv": b"a,1\n",
    }
    wait_copies(lab, "webdata", {"dsa"})
    d = catalog(lab, "webdata")
    assert d is not None and d.copies[0].files == 2
    listed = lab.cli("dataset", "transfers", "--json").json()
    mine = [t for t in listed if t["dataset"] == "webdata"]
    assert mine[0]["state"] == "succeeded" and mine[0]["done_bytes"] == len(data)
    no_leftovers(root_of(lab, "dsa"))


def test_import_a_plain_file_keeps_it_in_a_directory(lab: Lab, allowed: str, web: str) -> None:
    res = lab.cli(
        "dataset", "import", f"{web}/plain.bin", "--node", "dsb", "--name", "blob", "--wait"
    )
    assert res.returncode == 0, res.stderr
    assert listing(root_of(lab, "dsb") / "blob") == {"plain.bin"}


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("/good.tar.gz", "checksum mismatch"),
        ("/slip.zip", ""),
        ("/symlink.tar", ""),
        ("/missing.tar", "404"),
    ],
    ids=["sha256-mismatch", "zip-slip", "symlink-escape", "http-404"],
)
def test_a_failed_import_leaves_nothing(
    lab: Lab, allowed: str, web: str, url: str, why: str
) -> None:
    root = root_of(lab, "dsa")
    before = listing(root)
    args = ["dataset", "import", web + url, "--node", "dsa", "--name", "bad", "--wait"]
    if why.startswith("checksum"):
        args += ["--sha256", "0" * 64]
    res = lab.cli(*args)
    assert res.returncode != 0
    assert why in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert listing(root) == before
    assert not (lab.root / "escaped-by-zip.txt").exists()
    assert not Path("/etc/escaped-by-tar").exists()
    assert catalog(lab, "bad") is None
    no_leftovers(root)


def test_a_cancelled_import_leaves_nothing(lab: Lab, allowed: str, web: str) -> None:
    root = root_of(lab, "dsa")
    before = listing(root)
    body = api.DatasetImport(url=f"{web}/slow", node="dsa", name="slowdata")
    t = lab.admin.call("POST", "/api/v1/datasets/import", json=body, type=api.Transfer)
    wait_until(lambda: transfer(lab, t.id).done_bytes > 0, TRANSFER_DEADLINE_S, "bytes arriving")
    assert any(n.startswith(".mlsm-import-slowdata") for n in listing(root))
    res = lab.cli("dataset", "cancel", str(t.id))
    assert res.returncode == 0, res.stderr
    end = wait_transfer(lab, t.id)
    assert end.state == "cancelled", end
    assert listing(root) == before
    no_leftovers(root)


def test_import_refusals_are_clear(lab: Lab, allowed: str, web: str) -> None:
    def post(**kw: Any) -> httpx.Response:
        body = {"url": f"{web}/good.tar.gz", "node": "dsa", "name": "x1", **kw}
        return raw(lab, "POST", "/api/v1/datasets/import", json=body)

    r = post(url="file:///etc/passwd")
    assert r.status_code == 400 and "only http and https" in r.json()["error"]["message"]
    r = post(url="ftp://127.0.0.1/x")
    assert r.status_code == 400
    r = post(node="dsnoroot")
    assert r.status_code == 409 and "--dataset-root" in r.json()["error"]["message"]
    r = post(node="no-such-node")
    assert r.status_code == 404
    r = post(name="shared")
    assert r.status_code == 409 and "already exists" in r.json()["error"]["message"]
    member = lab.add_user("dsimporter")
    r = raw(
        lab,
        "POST",
        "/api/v1/datasets/import",
        token=member,
        json={"url": f"{web}/good.tar.gz", "node": "dsa", "name": "x2"},
    )
    assert r.status_code == 403


# ------------------------------------------------------------------ path safety
HOSTILE = ["..", ".", "a/b", "../etc", "a\x00b", "a\nb", "x" * 300, "a\u2215b", "-rf", ".mlsm-x"]


@pytest.mark.parametrize("name", HOSTILE, ids=repr)
def test_hostile_names_are_refused_and_touch_nothing(lab: Lab, web: str, name: str) -> None:
    roots = [root_of(lab, n) for n in ("dsa", "dsb")]
    before = [listing(r) for r in roots]
    body = {"url": f"{web}/good.tar.gz", "node": "dsa", "name": name}
    r = raw(lab, "POST", "/api/v1/datasets/import", json=body)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["message"]
    body = {"name": name, "src": "dsa", "dst": "dsb"}
    r = raw(lab, "POST", "/api/v1/datasets/transfer", json=body)
    assert 400 <= r.status_code < 500, r.text
    if name.isprintable() and "/" not in name:
        r = raw(lab, "DELETE", f"/api/v1/datasets/{name}", params={"node": "dsa"})
        assert 400 <= r.status_code < 500, r.text
    assert [listing(r) for r in roots] == before


# ------------------------------------------------------------------ copies and moves
def test_copy_between_two_agents_is_verified_file_by_file(lab: Lab) -> None:
    files = CORPUS
    wait_copies(lab, "corpus", {"dsa"})
    started = time.monotonic()
    res = lab.cli("dataset", "copy", "corpus", "--from", "dsa", "--to", "dsb", "--wait")
    elapsed = time.monotonic() - started
    assert res.returncode == 0, res.stderr
    assert "verified" in res.stdout and "direct" in res.stdout, res.stdout
    assert tree(root_of(lab, "dsb") / "corpus") == files
    assert tree(root_of(lab, "dsa") / "corpus") == files
    wait_copies(lab, "corpus", {"dsa", "dsb"})
    assert lab.master_data is not None
    assert not (lab.master_data / "transfers").exists()  # the master stages nothing
    no_leftovers(root_of(lab, "dsb"))
    print(f"copy of {BIG_FILE / 2**20:.1f} MiB through the master: {elapsed:.2f} s (CLI included)")
    res = lab.cli("dataset", "digest", "corpus", "--node", "dsb")
    assert res.returncode == 0, res.stderr
    d = catalog(lab, "corpus")
    assert d is not None
    digests = {c.node: c.digest for c in d.copies}
    assert digests["dsb"] and digests["dsb"] in res.stdout
    res = lab.cli("dataset", "digest", "corpus", "--node", "dsa")
    assert res.returncode == 0, res.stderr
    d = catalog(lab, "corpus")
    assert d is not None and {c.digest for c in d.copies} == {digests["dsb"]}
    again = raw(
        lab,
        "POST",
        "/api/v1/datasets/transfer",
        json={"name": "corpus", "src": "dsa", "dst": "dsb"},
    )
    assert again.status_code == 409


def test_move_deletes_the_source_only_after_the_copy(lab: Lab) -> None:
    files = TOMOVE
    wait_copies(lab, "tomove", {"dsb"})
    res = lab.cli("dataset", "move", "tomove", "--from", "dsb", "--to", "dsa", "--json", "--wait")
    assert res.returncode == 0, res.stderr
    assert res.json()["state"] == "succeeded"
    assert tree(root_of(lab, "dsa") / "tomove") == files
    assert not (root_of(lab, "dsb") / "tomove").exists()
    wait_copies(lab, "tomove", {"dsa"})


def test_a_copy_over_the_size_limit_fails_and_leaves_nothing(lab: Lab) -> None:
    wait_copies(lab, "oversized", {"dsa"})
    assert lab.cli("settings", "set", "--import-max-gib", str(1 / 1024)).returncode == 0
    try:
        res = lab.cli("dataset", "copy", "oversized", "--from", "dsa", "--to", "dsb", "--wait")
    finally:
        assert lab.cli("settings", "set", "--import-max-gib", "1024").returncode == 0
    assert res.returncode != 0 and "over the limit" in res.stderr, res.stderr
    assert not (root_of(lab, "dsb") / "oversized").exists()
    no_leftovers(root_of(lab, "dsb"))
    assert copies_on(lab, "oversized") == {"dsa"}


def test_a_cancelled_copy_leaves_nothing(lab: Lab) -> None:
    wait_copies(lab, "tocancel", {"dsa"})
    body = api.DatasetTransfer(name="tocancel", src="dsa", dst="dsb")
    t = lab.admin.call("POST", "/api/v1/datasets/transfer", json=body, type=api.Transfer)
    lab.admin.call("POST", f"/api/v1/transfers/{t.id}/cancel")
    end = wait_transfer(lab, t.id)
    assert end.state == "cancelled", end
    assert not (root_of(lab, "dsb") / "tocancel").exists()
    no_leftovers(root_of(lab, "dsb"))
    again = lab.cli("dataset", "copy", "tocancel", "--from", "dsa", "--to", "dsb", "--wait")
    assert again.returncode == 0, again.stderr  # a later copy of the same dataset works


def test_copy_refusals(lab: Lab) -> None:
    def post(**kw: Any) -> httpx.Response:
        body = {"name": "shared", "src": "dsa", "dst": "dsnoroot", **kw}
        return raw(lab, "POST", "/api/v1/datasets/transfer", json=body)

    assert post().status_code == 409  # no dataset root there
    assert post(dst="dsa").status_code == 400
    assert post(name="nowhere", dst="dsb").status_code == 404
    member = lab.add_user("dscopier")
    r = raw(
        lab,
        "POST",
        "/api/v1/datasets/transfer",
        token=member,
        json={"name": "shared", "src": "dsa", "dst": "dsb"},
    )
    assert r.status_code == 403


# ------------------------------------------------------------------ deletes and placement
def test_delete_refused_for_members_and_while_a_job_needs_the_copy(lab: Lab) -> None:
    wait_copies(lab, "inuse", {"dsb"})
    member = lab.add_user("dsdeleter")
    r = raw(lab, "DELETE", "/api/v1/datasets/inuse", token=member, params={"node": "dsb"})
    assert r.status_code == 403
    res = lab.cli("dataset", "rm", "inuse", "--node", "dsb", "--yes", token=member)
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1
    res = lab.cli("dataset", "rm", "inuse", "--node", "dsb")
    assert res.returncode != 0 and "--yes" in res.stderr  # no terminal: no silent delete
    job = lab.submit("--dataset", "inuse", "--", "sleep", "120")
    lab.wait_job(job, "running")
    r = raw(lab, "DELETE", "/api/v1/datasets/inuse", params={"node": "dsb"})
    assert r.status_code == 409, r.text
    assert str(job) in r.json()["error"]["message"]
    assert (root_of(lab, "dsb") / "inuse" / "data").exists()
    assert lab.cli("cancel", str(job)).returncode == 0
    lab.wait_job(job, "cancelled")
    res = lab.cli("dataset", "rm", "inuse", "--node", "dsb", "--yes")
    assert res.returncode == 0, res.stderr
    assert not (root_of(lab, "dsb") / "inuse").exists()
    wait_copies(lab, "inuse", set())
    audit = lab.admin.call("GET", "/api/v1/audit", params={"action": "dataset.delete"})
    outcomes = [(a["actor"], a["outcome"]) for a in audit]
    assert ("dsdeleter", "denied") in outcomes and ("root", "ok") in outcomes


def test_a_queued_job_holds_the_only_copy(lab: Lab) -> None:
    wait_copies(lab, "queued-on", {"dsa"})
    job = lab.submit("--dataset", "queued-on", "--gpus", "8", "--", "true")  # never fits
    lab.wait_job(job, "queued")
    r = raw(lab, "DELETE", "/api/v1/datasets/queued-on", params={"node": "dsa"})
    assert r.status_code == 409, r.text
    assert lab.cli("cancel", str(job)).returncode == 0


def test_jobs_run_where_their_dataset_is(lab: Lab) -> None:
    wait_copies(lab, "only-b", {"dsb"})
    job = lab.submit("--dataset", "only-b", "--", "sh", "-c", 'echo "path=$MLSM_DATASET_ONLY_B"')
    done = lab.wait_job(job)
    assert done.state == "succeeded" and done.node == "dsb", done
    assert f"path={root_of(lab, 'dsb') / 'only-b'}".encode() in lab.log(job)
    waiting = lab.submit("--dataset", "nowhere-at-all", "--", "true")
    j = wait_until(
        lambda: (j := lab.job(waiting)).reason and j, 20.0, "a reason for the waiting job"
    )
    assert j.state == "queued" and "no online node holds dataset nowhere-at-all" in j.reason
    assert lab.cli("cancel", str(waiting)).returncode == 0


def test_transfers_list_for_members(lab: Lab) -> None:
    member = lab.add_user("dsreader")
    with Client(lab.url, member) as c:
        rows = c.call("GET", "/api/v1/transfers", type=list[api.Transfer])
    assert rows and all(t.state in ("succeeded", "failed", "cancelled") for t in rows)
    r = raw(lab, "POST", f"/api/v1/transfers/{rows[0].id}/cancel", token=member)
    assert r.status_code == 403
    r = raw(lab, "POST", f"/api/v1/transfers/{rows[0].id}/cancel")
    assert r.status_code == 409


def test_a_forged_copy_fails_verification_and_leaves_nothing(lab: Lab) -> None:
    """A hostile source node serves bytes that differ from its own manifest."""
    from mlsm.bulk import Entry, Manifest, encode_frame, encode_manifest
    from mlsm.bulk.frames import NO_INDEX, Flag
    from mlsm.wire import bulk as wb

    reg = lab.agent_call(
        "register",
        w.RegisterRequest(
            protocol=PROTOCOL_VERSION,
            join_token=lab.join_token(),
            name="dsfake",
            info=w.NodeInfo(dataset_roots=["/fake"]),
        ),
        None,
    )
    secret = msgspec.msgpack.decode(reg.content, type=w.RegisterReply).node_secret

    def call(route: str, body: Any) -> httpx.Response:
        resp = lab.agent_call(route, body, secret)
        assert resp.status_code == 200, resp.content
        return resp

    call("heartbeat", w.Heartbeat(protocol=PROTOCOL_VERSION))
    entry = w.DatasetEntry(root="/fake", name="forged", path="/fake/forged", size=7, files=1)
    call("datasets", w.DatasetReport(full=True, upsert=[entry]))
    body = api.DatasetTransfer(name="forged", src="dsfake", dst="dsa")
    t = lab.admin.call("POST", "/api/v1/datasets/transfer", json=body, type=api.Transfer)
    manifest = Manifest([Entry("a.txt", "f", 7, 0o644, 0, sha256_of(b"genuine"))])
    answers = {
        wb.BulkManifest: wb.pipe_record(wb.PipeKind.DATA, encode_manifest(manifest)),
        wb.BulkServe: wb.pipe_record(
            wb.PipeKind.DATA,
            encode_frame(0, 0, b"forged!") + encode_frame(NO_INDEX, 0, flags=Flag.END),
        ),
    }
    served: list[str] = []
    acks: list[int] = []

    def serve_one() -> bool:
        """Answer the pipe commands the target's pulls caused; True once it ended."""
        poll = w.CommandPoll(protocol=PROTOCOL_VERSION, wait_s=0.5, ack=acks)
        batch = msgspec.msgpack.decode(call("commands", poll).content, type=w.CommandBatch)
        acks.clear()
        for cmd in batch.commands:
            acks.append(cmd.id)
            if isinstance(cmd, wb.BulkManifest | wb.BulkServe):
                assert cmd.source == wb.SourceSpec(kind="dataset", name="forged")
                served.append(type(cmd).__name__)
                records = answers[type(cmd)] + wb.pipe_record(wb.PipeKind.END)
                lab.agent_call(f"bulk/push/{cmd.pipe_id}", records, secret)
        call("heartbeat", w.Heartbeat(protocol=PROTOCOL_VERSION))
        return transfer(lab, t.id).state not in ("pending", "running")

    wait_until(serve_one, TRANSFER_DEADLINE_S, "the forged copy to end")
    end = transfer(lab, t.id)
    assert end.state == "failed" and "a.txt" in end.message, end
    assert served[0] == "BulkManifest" and "BulkServe" in served
    pull = lab.agent_call("bulk/pull", wb.BulkPull(transfer_id=t.id, what="manifest"), secret)
    assert pull.status_code in (403, 404)  # only the target pulls, and only while it runs
    assert not (root_of(lab, "dsa") / "forged").exists()
    no_leftovers(root_of(lab, "dsa"))
    assert copies_on(lab, "forged") == {"dsfake"}


def test_an_agent_killed_mid_import_fails_it_and_sweeps_its_temp_dir(
    lab: Lab, allowed: str, web: str
) -> None:
    """Runs last: it restarts node dsb."""
    root = root_of(lab, "dsb")
    before = listing(root)
    body = api.DatasetImport(url=f"{web}/slow", node="dsb", name="crashed")
    t = lab.admin.call("POST", "/api/v1/datasets/import", json=body, type=api.Transfer)
    wait_until(lambda: transfer(lab, t.id).done_bytes > 0, TRANSFER_DEADLINE_S, "bytes arriving")
    lab.stop_agent("dsb", signal.SIGKILL)
    assert any(n.startswith(".mlsm-import-crashed") for n in listing(root))
    end = wait_transfer(lab, t.id)
    assert end.state == "failed" and "offline" in end.message, end
    start_agent(lab, "dsb", [root])
    assert listing(root) == before
    no_leftovers(root)
