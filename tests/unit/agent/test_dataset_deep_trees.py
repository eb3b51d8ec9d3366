"""Datasets 5,000 levels deep (paths far past PATH_MAX): scanned, digested, copied,
deleted and swept like any other, never following the links inside them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.bulk.sources import Tree, build_tree_manifest
from agent.datasets import (
    DatasetScanner,
    delete_dataset,
    digest,
    purge_leftovers,
    scan_entry,
)
from mlsm.bulk import Sink, Source, pump
from tests.support.deep_trees import DEEP, deepest_rel, make_deep

FILE_EVERY = 50  # a file every this many levels


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    d = tmp_path / "outside"
    d.mkdir()
    (d / "precious.txt").write_text("keep me")
    return d


@pytest.fixture
def root(tmp_path: Path, outside: Path, deep_cleanup: None) -> Path:
    """A dataset root holding ``deep`` (5,000 levels, files and outward links on the way)
    and an ordinary ``flat`` dataset."""
    r = tmp_path / "root"
    make_deep(r / "deep", DEEP, file_every=FILE_EVERY, link_to=outside, link_every=500)
    (r / "flat").mkdir()
    (r / "flat" / "a.txt").write_text("a")
    return r


def _files() -> int:
    return DEEP // FILE_EVERY + 1  # + bottom.txt


def _size() -> int:
    levels = range(FILE_EVERY, DEEP + 1, FILE_EVERY)
    return sum(len(str(n)) for n in levels) + len(b"bottom")


def test_the_scanner_reports_a_5000_deep_dataset_whole(root: Path) -> None:
    scanner = DatasetScanner([root])
    report = scanner.scan()
    got = {e.name: e for e in report.upsert}
    assert set(got) == {"deep", "flat"}
    assert (got["deep"].files, got["deep"].size, got["deep"].top) == (_files(), _size(), ["d"])
    assert scanner.errors == 0
    assert scan_entry(root, "deep") == got["deep"]


def test_digest_of_a_5000_deep_dataset_lists_every_file(root: Path) -> None:
    value, manifest = digest(root / "deep")
    assert len(manifest) == _files() and deepest_rel(DEEP) in manifest
    assert not any("precious" in rel for rel in manifest)
    assert digest(root / "deep") == (value, manifest)


def test_a_5000_deep_dataset_is_copied_and_verified(root: Path, tmp_path: Path) -> None:
    """The copy's machinery (the agent's descriptor-built manifest, then Source -> Sink)
    carries a 5,000-deep dataset whole, and leaves its outward links behind."""
    value, manifest = digest(root / "deep")
    tree_manifest = build_tree_manifest(Tree(root / "deep"))
    assert tree_manifest.file_count() == _files()
    dest = tmp_path / "dest-root"
    dest.mkdir()
    with Source.from_tree(root / "deep", tree_manifest) as source:
        sink = Sink(tree_manifest, tmp_path / "work", durable=False)
        pump(sink, source.chunks)
        sink.finish(dest / "deep")
    assert digest(dest / "deep") == (value, manifest)
    assert os.listdir(dest) == ["deep"]


def test_delete_of_a_5000_deep_dataset_keeps_what_its_links_point_to(
    root: Path, outside: Path
) -> None:
    assert delete_dataset([root], str(root / "deep")) is True
    assert os.listdir(root) == ["flat"]
    assert (outside / "precious.txt").read_text() == "keep me"


def test_the_start_up_sweep_removes_a_5000_deep_leftover(root: Path, outside: Path) -> None:
    os.rename(root / "deep", root / ".mlsm-import-deep-0a1b2c")
    removed = purge_leftovers([root])
    assert removed == [root / ".mlsm-import-deep-0a1b2c"]
    assert os.listdir(root) == ["flat"]
    assert (outside / "precious.txt").read_text() == "keep me"
