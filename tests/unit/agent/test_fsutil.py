"""agent.fsutil: removing and walking trees 5,000 levels deep, never following a link,
with a bounded number of open descriptors."""

from __future__ import annotations

import os
import resource
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.fsutil import DIR_FDS_KEPT, DirFds, TreeChangedError, remove_tree, walk
from tests.support.deep_trees import DEEP, deepest_rel, make_deep, open_fds

# Descriptors the code under test may open beyond those already open: the ones it keeps,
# the top directory, the one it opens before closing the oldest, and a few more that the
# test process itself (a pytest-xdist worker's threads, say) may open meanwhile.
FD_HEADROOM = DIR_FDS_KEPT + 8


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside every tree under test, which links inside them point to."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "precious.txt").write_text("keep me")
    return d


@pytest.fixture
def few_fds() -> Iterator[None]:
    """Lower the descriptor limit to what is open now plus a little: a walk that keeps one
    descriptor per level (5,000) cannot pass under it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(n) for n in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1 + FD_HEADROOM, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_shutil_rmtree_itself_dies_on_such_a_tree(tmp_path: Path, deep_cleanup: None) -> None:
    """Why agent.fsutil exists: the standard library recurses once per level."""
    make_deep(tmp_path / "tree", 1_200)
    with pytest.raises(RecursionError):
        shutil.rmtree(tmp_path / "tree")
    remove_tree(tmp_path / "tree")
    assert not (tmp_path / "tree").exists()


def test_remove_tree_5000_deep_keeps_what_links_point_to(
    tmp_path: Path, outside: Path, few_fds: None, deep_cleanup: None
) -> None:
    top = tmp_path / "tree"
    make_deep(top, DEEP, file_every=7, link_to=outside, link_every=100)
    before = open_fds(tmp_path)
    remove_tree(top)
    assert not os.path.lexists(top)
    assert open_fds(tmp_path) == before
    assert (outside / "precious.txt").read_text() == "keep me"
    assert os.listdir(tmp_path) == ["outside"]


def test_remove_tree_of_a_link_removes_the_link_only(tmp_path: Path, outside: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(outside, target_is_directory=True)
    remove_tree(link)
    assert not os.path.lexists(link)
    assert (outside / "precious.txt").exists()


def test_remove_tree_of_a_file_and_of_nothing(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    remove_tree(f)
    assert not f.exists()
    remove_tree(f)  # already gone: quiet
    remove_tree(tmp_path / "no" / "such" / "dir")


def test_walk_5000_deep_yields_every_entry_and_enters_no_link(
    tmp_path: Path, outside: Path, few_fds: None, deep_cleanup: None
) -> None:
    top = tmp_path / "tree"
    files = make_deep(top, DEEP, file_every=10, link_to=outside, link_every=1000)
    before = open_fds(tmp_path)
    seen_files: list[str] = []
    links: list[str] = []
    dirs = 0
    deepest = 0
    for w in walk(top):
        deepest = max(deepest, w.depth)
        if w.entry.is_symlink():
            links.append(w.rel)
        elif w.entry.is_dir(follow_symlinks=False):
            dirs += 1
        else:
            assert w.entry.is_file(follow_symlinks=False)
            seen_files.append(w.rel)
            if w.name == "bottom.txt":  # the descriptor reads it, whatever the depth
                fd = os.open(w.name, os.O_RDONLY, dir_fd=w.dir_fd)
                with open(fd, "rb") as f:
                    assert f.read() == b"bottom"
    assert open_fds(tmp_path) == before
    assert (dirs, len(seen_files), len(links), deepest) == (DEEP, files, DEEP // 1000, DEEP + 1)
    assert deepest_rel(DEEP) in seen_files
    assert not any("precious" in r for r in seen_files)


def test_walk_sorted_lists_parents_before_children_in_name_order(tmp_path: Path) -> None:
    for rel in ("b/x", "a/z/1", "a/y", "c"):
        (tmp_path / "t" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "t" / rel).write_text(rel)
    got = [w.rel for w in walk(tmp_path / "t", sort=True)]
    assert got == ["a", "b", "c", "a/y", "a/z", "a/z/1", "b/x"]


def test_walk_refuses_a_link_as_its_top(tmp_path: Path, outside: Path) -> None:
    (tmp_path / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OSError):
        list(walk(tmp_path / "link"))


def test_walk_reports_unreadable_subdirectories_and_goes_on(tmp_path: Path) -> None:
    top = tmp_path / "t"
    (top / "gone").mkdir(parents=True)
    (top / "later").mkdir()
    (top / "later" / "f").write_text("x")
    errors: list[OSError] = []
    got = []
    for w in walk(top, sort=True, on_error=errors.append):
        got.append(w.rel)
        if w.rel == "later":  # "gone" was listed but vanishes before it is entered
            os.rmdir(top / "gone")
    assert got == ["gone", "later", "later/f"]
    assert len(errors) == 1 and isinstance(errors[0], FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        for w in walk(top, sort=True):
            if w.rel == "later":
                (top / "later" / "f").unlink()
                os.rmdir(top / "later")


def test_walk_stops_when_a_directory_is_moved_out_from_under_it(
    tmp_path: Path, outside: Path
) -> None:
    """Climbing back up by ``..`` would land outside the tree: the walk refuses to."""
    top = tmp_path / "t"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "f").write_text("x")
    (top / "z").mkdir()
    got = []
    with pytest.raises(TreeChangedError):
        for w in walk(top, sort=True):
            got.append(w.rel)
            if w.rel == "a/b/f":
                os.rename(top / "a", outside / "a")
    assert "z" in got  # listed with the top's entries, but never entered from outside
    assert not any(r.startswith("z/") or "precious" in r for r in got)


def test_dir_fds_reach_5000_deep_with_few_descriptors(
    tmp_path: Path, few_fds: None, deep_cleanup: None
) -> None:
    top = tmp_path / "tree"
    make_deep(top, DEEP)
    rels = []
    rel = ""
    for _ in range(DEEP):
        rel = f"{rel}/d" if rel else "d"
        rels.append(rel)
    before = open_fds(tmp_path)
    with DirFds(top) as fds:
        for r in rels:  # in order, as an unpacker goes
            fd = fds.get(r)
        st = os.stat("bottom.txt", dir_fd=fd)
        assert stat.S_ISREG(st.st_mode)
        assert fds.get(rels[10]) != fds.get(rels[-1])
    assert open_fds(tmp_path) == before


def test_dir_fds_never_pass_through_a_link(tmp_path: Path, outside: Path) -> None:
    top = tmp_path / "t"
    (top / "a").mkdir(parents=True)
    (top / "a" / "link").symlink_to(outside, target_is_directory=True)
    with DirFds(top) as fds, pytest.raises(OSError):
        fds.get("a/link")
