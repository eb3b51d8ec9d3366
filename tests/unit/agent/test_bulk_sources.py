"""The agent's served trees keep their files' hashes between manifests (agent.bulk.sources):
an unchanged dataset is not read again, also after a restart; a changed file always is,
even when its size and mtime were put back."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

import pytest

import agent.bulk.sources as sources
from agent.bulk.sources import SourceBook, Tree
from mlsm.wire.bulk import SourceSpec

SPEC = SourceSpec(kind="dataset", name="ds")
LONG_AGO_NS = time.time_ns() - 3600 * 10**9  # older than the racy window


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the files the manifest builder reads and hashes."""
    calls: list[int] = []
    real = sources.sha256_fd

    def counting(fd: int, **kw: int) -> tuple[str, int]:
        calls.append(fd)
        return real(fd, **kw)

    monkeypatch.setattr(sources, "sha256_fd", counting)
    return calls


def _dataset(root: Path) -> Path:
    for i in range(5):
        f = root / "ds" / f"f{i}.bin"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(os.urandom(1000 + i))
        os.utime(f, ns=(LONG_AGO_NS, LONG_AGO_NS))
    return root / "ds"


def _book(data_dir: Path, tree: Path) -> SourceBook:
    data_dir.mkdir(mode=0o700, exist_ok=True)
    book = SourceBook(data_dir)
    book.register("dataset", lambda name: Tree(tree))
    return book


def test_an_unchanged_tree_is_not_read_again_even_after_a_restart(
    tmp_path: Path, hashed: list[int]
) -> None:
    tree = _dataset(tmp_path / "roots")
    first = _book(tmp_path / "data", tree).manifest(SPEC)
    assert len(hashed) == 5
    again = _book(tmp_path / "data", tree).manifest(SPEC)  # a new agent process
    assert len(hashed) == 5
    assert again == first
    cache_dir = tmp_path / "data" / "bulk-hashes"
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in cache_dir.iterdir())


def test_a_file_changed_with_its_size_and_mtime_put_back_is_hashed_again(
    tmp_path: Path, hashed: list[int]
) -> None:
    tree = _dataset(tmp_path / "roots")
    book = _book(tmp_path / "data", tree)
    book.manifest(SPEC)
    victim = tree / "f3.bin"
    new = os.urandom(victim.stat().st_size)
    victim.write_bytes(new)
    os.utime(victim, ns=(LONG_AGO_NS, LONG_AGO_NS))
    m = book.manifest(SPEC)
    assert len(hashed) == 6  # only the changed file
    entry = next(e for e in m.entries if e.path == "f3.bin")
    assert entry.sha256 == hashlib.sha256(new).hexdigest()


def test_without_a_data_dir_nothing_is_kept(tmp_path: Path, hashed: list[int]) -> None:
    tree = _dataset(tmp_path / "roots")
    book = SourceBook()
    book.register("dataset", lambda name: Tree(tree))
    book.manifest(SPEC)
    book.manifest(SPEC)
    assert len(hashed) == 10
