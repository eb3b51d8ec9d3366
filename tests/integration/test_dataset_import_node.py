"""Importing a directory of one node as a dataset of another (``mlsm dataset import
--from-node NODE --path DIR``), with a real master and real agents.

The source node's agent names the directories admins may import from (``--import-root``);
the import goes through the copies' machinery: direct between the agents when they reach
each other, through the master's relay when the source takes no direct connections,
verified file by file and renamed into the target's dataset root. A path outside the
import roots, a node without any, a link inside a root that leads out of it, and members
are refused, and nothing reaches the target.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlsm.wire import api
from tests.integration.lab import Lab
from tests.support.wait import wait_until

TRANSFER_DEADLINE_S = 120.0
FILES = {"a.bin": os.urandom(3 << 20), "sub/b.txt": b"bee\n", "sub/deeper/c": b"", "d": b"d"}


def make_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("nodeimport")) as lab:
        lab.start_master()
        r = lab.root / "roots"
        lab.start_agent("ina", gpus="", dataset_roots=[r / "ina"], import_roots=[r / "ina-in"])
        lab.start_agent(
            "inr",
            gpus="",
            import_roots=[r / "inr-in"],
            env={"MLSM_BULK_DIRECT": "0"},  # its imports go through the relay
        )
        lab.start_agent("inb", gpus="", dataset_roots=[r / "inb"])
        yield lab


def transfers_of(lab: Lab, name: str) -> list[api.Transfer]:
    return [
        t
        for t in lab.admin.call("GET", "/api/v1/transfers", type=list[api.Transfer])
        if t.dataset == name
    ]


def catalogued(lab: Lab, name: str, node: str) -> bool:
    for d in lab.admin.call("GET", "/api/v1/datasets", type=list[api.Dataset]):
        if d.name == name and node in {c.node for c in d.copies}:
            return True
    return False


def test_an_admin_imports_a_directory_of_another_node_directly(lab: Lab) -> None:
    src = lab.root / "roots" / "ina-in" / "incoming" / "run-7"
    make_tree(src, FILES)
    res = lab.cli(
        "dataset", "import", "--from-node", "ina", "--path", f"{src}/",
        "--node", "inb", "--name", "run7", "--wait",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "direct" in res.stdout and "relay" not in res.stdout, res.stdout
    assert f"ina:{src} -> inb" in res.stdout, res.stdout
    assert tree(lab.root / "roots" / "inb" / "run7") == FILES
    assert tree(src) == FILES  # an import copies: the source stays
    (t,) = transfers_of(lab, "run7")
    assert (t.kind, t.src_node, t.node, t.state) == ("import", "ina", "inb", "succeeded")
    assert t.done_bytes == t.total_bytes == sum(len(v) for v in FILES.values())
    wait_until(lambda: catalogued(lab, "run7", "inb"), TRANSFER_DEADLINE_S, "run7 on inb")
    (row,) = lab.admin.call(
        "GET", "/api/v1/audit", params={"action": "dataset.import", "target": "dataset:run7"}
    )
    assert row["details"]["from_node"] == "ina" and row["details"]["path"] == f"{src}/"


def test_a_source_without_direct_transfers_is_relayed(lab: Lab) -> None:
    src = lab.root / "roots" / "inr-in" / "one-file.bin"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(FILES["a.bin"])
    res = lab.cli(
        "dataset", "import", "--from-node", "inr", "--path", str(src),
        "--node", "inb", "--name", "single", "--wait",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "via master relay" in res.stdout, res.stdout
    # a file is brought as a directory holding it, as a one-file dataset's copy is
    assert tree(lab.root / "roots" / "inb" / "single") == {"one-file.bin": FILES["a.bin"]}


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("{roots}/ina", "is not below an import root of node ina"),
        ("{roots}/ina-in/../ina", "not a plain path"),
        ("relative/dir", "is not an absolute path"),
        ("/", "the file system's root"),
    ],
)
def test_a_path_outside_the_import_roots_is_refused_before_anything_starts(
    lab: Lab, path: str, words: str
) -> None:
    make_tree(lab.root / "roots" / "ina" / "held", {"x": b"x"})
    res = lab.cli(
        "dataset", "import", "--from-node", "ina",
        "--path", path.format(roots=lab.root / "roots"),
        "--node", "inb", "--name", "outside", "--no-wait",
    )  # fmt: skip
    assert res.returncode != 0
    assert words in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert transfers_of(lab, "outside") == []


def test_a_node_without_import_roots_serves_no_path(lab: Lab) -> None:
    res = lab.cli(
        "dataset", "import", "--from-node", "inb", "--path", str(lab.root / "roots" / "inb"),
        "--node", "ina", "--name", "nothing", "--no-wait",
    )  # fmt: skip
    assert res.returncode != 0
    assert "inb allows no imports from its disk" in res.stderr, res.stderr
    assert transfers_of(lab, "nothing") == []


@pytest.mark.parametrize("below", ["", "/sub"])
def test_a_link_inside_an_import_root_does_not_lead_out_of_it(lab: Lab, below: str) -> None:
    """The link named by the path, or one of the directories on the way to it."""
    secret = lab.root / "roots" / "ina-secret"
    make_tree(secret, {"key": b"not for the lab", "sub/key2": b"nor this"})
    link = lab.root / "roots" / "ina-in" / "escape"
    if not link.is_symlink():
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(secret, link)
    name = f"escaped{below.replace('/', '-')}"
    res = lab.cli(
        "dataset", "import", "--from-node", "ina", "--path", f"{link}{below}",
        "--node", "inb", "--name", name, "--wait",
    )  # fmt: skip
    assert res.returncode != 0
    assert "link" in res.stderr, res.stderr
    assert not (lab.root / "roots" / "inb" / name).exists()
    (t,) = transfers_of(lab, name)
    assert t.state == "failed"


def test_members_cannot_import_from_a_node(lab: Lab) -> None:
    member = lab.add_user("nimember")
    src = lab.root / "roots" / "ina-in" / "incoming"
    res = lab.cli(
        "dataset", "import", "--from-node", "ina", "--path", str(src),
        "--node", "inb", "--name", "bymember", "--no-wait", token=member,
    )  # fmt: skip
    assert res.returncode != 0
    assert "admin" in res.stderr, res.stderr
    assert transfers_of(lab, "bymember") == []


BIG = 96 << 20
CUT_FRACTION = 0.3


def test_an_import_from_a_node_resumes_after_the_master_is_killed(lab: Lab) -> None:
    """The master keeps the import's source path only in the target's receive command:
    after a restart it must find it there, and the target continues from its journal."""
    src = lab.root / "roots" / "ina-in" / "big-set"
    make_tree(src, {"big.bin": os.urandom(BIG), "small.txt": b"small\n"})
    body = api.DatasetImport(node="inb", name="bigset", from_node="ina", path=str(src))
    t = lab.admin.call("POST", "/api/v1/datasets/import", json=body, type=api.Transfer)
    part = lab.root / "roots" / "inb" / f".mlsm-bulk-bigset-{t.id}" / "tree" / "big.bin"

    def far_enough() -> bool:
        try:
            return part.stat().st_size >= BIG * CUT_FRACTION
        except FileNotFoundError:
            return False

    wait_until(far_enough, TRANSFER_DEADLINE_S, "a third of big.bin received", poll_s=0.005)
    source = lab.agents["ina"].proc.pid
    os.kill(source, signal.SIGSTOP)  # held mid-way while the master is away
    try:
        lab.stop_master(signal.SIGKILL)
        lab.start_master()
    finally:
        os.kill(source, signal.SIGCONT)

    def ended() -> api.Transfer | None:
        x = lab.admin.call("GET", f"/api/v1/transfers/{t.id}", type=api.Transfer)
        return x if x.state not in ("pending", "running") else None

    end = wait_until(ended, TRANSFER_DEADLINE_S, "the import to end")
    assert end.state == "succeeded", end.message
    assert f"ina:{src} -> inb: imported and verified" in end.message, end.message
    m = re.search(r"\((\d+) sent.*, (\d+) re-sent\)", end.message)
    assert m is not None, end.message
    assert int(m.group(2)) <= 0.1 * BIG, end.message  # resumed, not started over
    assert tree(lab.root / "roots" / "inb" / "bigset") == tree(src)
