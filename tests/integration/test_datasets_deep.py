"""Deep trees with a real master and agent: a 1,500-level dataset and a 1,500-level
leftover of an interrupted import are on disk when the agent starts; it comes up, sweeps
the leftover, reports the dataset whole, and deletes it through ``mlsm dataset rm``. An
import of a deep archive that fails at its last entry leaves nothing behind.
(``shutil.rmtree`` and ``os.path.realpath`` recurse once per level or link and died on
all of these.)"""

from __future__ import annotations

import http.server
import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlsm.wire import api
from tests.integration.lab import Lab
from tests.support.deep_trees import LAB_DEEP, deep_tar, make_deep, remove_all_under
from tests.support.wait import wait_until

TRANSFER_DEADLINE_S = 60.0
FILE_EVERY = 100
LEFTOVER = ".mlsm-import-deep-0a1b2c3d4e5f"


def _root(lab: Lab) -> Path:
    return lab.root / "roots" / "deepnode"


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("outside")
    (d / "precious.txt").write_text("keep me")
    return d


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, outside: Path) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("deep")
    try:
        with Lab(base) as lab:
            lab.start_master()
            root = _root(lab)
            make_deep(
                root / "deep", LAB_DEEP, file_every=FILE_EVERY, link_to=outside, link_every=500
            )
            make_deep(root / LEFTOVER, LAB_DEEP)
            (root / "flat").mkdir()
            (root / "flat" / "a.txt").write_text("a")
            lab.start_agent("deepnode", gpus="1xA100-80GB", dataset_roots=[root])
            yield lab
    finally:
        remove_all_under(base)  # pytest's own clean-up would die on what a failure left


def _dataset(lab: Lab, name: str) -> api.Dataset | None:
    for d in lab.admin.call("GET", "/api/v1/datasets", type=list[api.Dataset]):
        if d.name == name:
            return d
    return None


def test_the_agent_comes_up_sweeps_the_leftover_and_reports_the_deep_dataset(
    lab: Lab,
) -> None:
    d = wait_until(lambda: _dataset(lab, "deep"), TRANSFER_DEADLINE_S, "the deep dataset")
    assert d.copies[0].files == LAB_DEEP // FILE_EVERY + 1 and d.copies[0].top == ["d"]
    assert sorted(os.listdir(_root(lab))) == ["deep", "flat"]
    assert "removed leftover" in lab.agents["deepnode"].output()
    assert lab.agents["deepnode"].proc.poll() is None


def test_a_deep_dataset_is_deleted_with_mlsm_dataset_rm(lab: Lab, outside: Path) -> None:
    wait_until(lambda: _dataset(lab, "deep"), TRANSFER_DEADLINE_S, "the deep dataset")
    res = lab.cli("dataset", "rm", "deep", "--node", "deepnode", "--yes", "--wait")
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(_root(lab))) == ["flat"]
    wait_until(lambda: _dataset(lab, "deep") is None, TRANSFER_DEADLINE_S, "deep to leave")
    assert (outside / "precious.txt").read_text() == "keep me"


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("deepweb")
    evil = tarfile.TarInfo("evil")
    evil.type = tarfile.SYMTYPE
    evil.linkname = "/etc"
    (d / "deep-bad.tar").write_bytes(deep_tar(LAB_DEEP, last=evil))

    def handler(*args: Any, **kw: Any) -> _Files:
        return _Files(*args, directory=str(d), **kw)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_deep_import_that_fails_cleans_up_fully(lab: Lab, web: str) -> None:
    res = lab.cli("settings", "set", "--import-allow-cidr", "127.0.0.0/8")
    assert res.returncode == 0, res.stderr
    before = sorted(os.listdir(_root(lab)))
    res = lab.cli(
        "dataset", "import", f"{web}/deep-bad.tar", "--node", "deepnode", "--name", "deepbad",
        "--wait",
    )  # fmt: skip
    assert res.returncode != 0
    assert "'evil'" in res.stderr and "/etc" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert sorted(os.listdir(_root(lab))) == before  # no .mlsm-import-* left, nothing new
    assert _dataset(lab, "deepbad") is None
    assert lab.agents["deepnode"].proc.poll() is None
