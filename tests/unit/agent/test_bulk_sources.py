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
from agent.bulk.sources import SourceBook, Tree, build_tree_manifest, open_tree, path_resolver
from mlsm import errors
from mlsm.bulk import Sink, pump
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


# ---------------------------------------------------------------- path trees (node imports)
def test_a_path_is_served_only_at_or_below_an_import_root(tmp_path: Path) -> None:
    """The agent's own check, whatever the master let through."""
    root = tmp_path / "in"
    (root / "set" / "sub").mkdir(parents=True)
    (root / "set" / "sub" / "f").write_bytes(b"f")
    (tmp_path / "other").mkdir()
    resolve = path_resolver([root])
    tree = resolve(f"{root}/set/")
    assert (tree.root, tree.only) == (root / "set", "")
    assert build_tree_manifest(tree).file_count() == 1
    assert resolve(str(root)).root == root
    file_tree = resolve(f"{root}/set/sub/f")
    assert (file_tree.root, file_tree.only) == (root / "set" / "sub", "f")
    with pytest.raises(errors.PermissionDenied, match="not below an import root"):
        resolve(str(tmp_path / "other"))
    with pytest.raises(errors.PermissionDenied, match="not below an import root"):
        resolve(f"{root}-sibling/x")  # a prefix of the text is not "below"
    for bad in (f"{root}/set/../../other", "set", f"{root}//set", f"{root}/./set"):
        with pytest.raises(errors.ValidationError):
            resolve(bad)
    with pytest.raises(errors.NotFound):
        resolve(f"{root}/missing")
    with pytest.raises(errors.PermissionDenied, match="no imports from its disk"):
        path_resolver([])(f"{root}/set")


def test_a_link_on_the_way_is_never_followed_even_when_swapped_in_after_the_check(
    tmp_path: Path,
) -> None:
    root = tmp_path / "in"
    (root / "set").mkdir(parents=True)
    (root / "set" / "f").write_bytes(b"f")
    outside = tmp_path / "outside"
    (outside / "set").mkdir(parents=True)
    (outside / "set" / "secret").write_bytes(b"secret")
    os.symlink(outside, root / "link")
    resolve = path_resolver([root])
    with pytest.raises(errors.UnsafeTree, match="link"):
        build_tree_manifest(resolve(f"{root}/link/set"))
    with pytest.raises(errors.UnsafeTree, match="link"):
        resolve(f"{root}/link")
    (root / "a" / "set").mkdir(parents=True)
    tree = resolve(f"{root}/a/set")  # checked while every level is a directory ...
    os.rename(root / "a", tmp_path / "moved")
    os.symlink(outside, root / "a")  # ... then a link is put in the way
    with pytest.raises(errors.UnsafeTree, match="link"):
        build_tree_manifest(tree)
    with pytest.raises(errors.UnsafeTree, match="link"):
        open_tree(tree)


def test_a_manifest_with_hashes_to_come_reads_nothing_and_the_stream_fills_the_cache(
    tmp_path: Path, hashed: list[int]
) -> None:
    tree = _dataset(tmp_path / "roots")
    book = _book(tmp_path / "data", tree)
    announced = book.manifest(SPEC, hashes_later=True)
    assert hashed == [] and announced.hashes_to_come() == 5
    where, served = book.serving(SPEC, announced.digest())
    assert served == announced
    with book.source(where, served) as source:
        sink = Sink(served, tmp_path / "work", durable=False)
        pump(sink, source.chunks)
    sink.finish(tmp_path / "copy")
    assert {p.name: p.read_bytes() for p in (tmp_path / "copy").iterdir()} == {
        p.name: p.read_bytes() for p in tree.iterdir()
    }

    restarted = _book(tmp_path / "data", tree)  # a new agent process
    full = restarted.manifest(SPEC)
    assert hashed == [] and full.hashes_to_come() == 0  # the stream's hashes were kept
    # a target that asks again (it restarted) naming its journal's manifest gets it
    again = restarted.manifest(SPEC, hashes_later=True, resume=announced.digest())
    assert again.digest() == announced.digest()
    assert _book(tmp_path / "data", tree).serving(SPEC, announced.digest())[1] == announced
    # a new copy gets the hashes the stream left: nothing is hashed again while it is sent
    second = restarted.manifest(SPEC, hashes_later=True)
    assert second.hashes_to_come() == 0 and second.digest() == full.digest()
    # ... and the first copy's manifest is still there for its target to resume with
    after = _book(tmp_path / "data", tree)
    assert after.manifest(SPEC, hashes_later=True, resume=announced.digest()) == announced
    assert after.manifest(SPEC, hashes_later=True, resume="0" * 64) == full  # unknown: fresh

    (tree / "f0.bin").write_bytes(b"changed")
    changed = _book(tmp_path / "data", tree)
    assert changed.manifest(SPEC, hashes_later=True, resume=announced.digest()) != announced
    with pytest.raises(errors.SourceChanged):
        _book(tmp_path / "data", tree).serving(SPEC, announced.digest())
