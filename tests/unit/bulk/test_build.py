"""mlsm.bulk.build_manifest: what a person's tree may hold, refusals in one message, limits
before reading, the hash cache, and trees 5,000 deep or 20,000 files wide."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import time
from pathlib import Path

import pytest

from mlsm.bulk import HashCache, IgnoreRules, build_manifest
from mlsm.bulk.hashing import FileKey, sha256_fd
from mlsm.errors import PayloadTooLarge, UnsafeTree
from tests.support.deep_trees import DEEP, deepest_rel, make_deep
from tests.unit.bulk.support import sample_tree, write


def test_a_tree_becomes_entries_in_canonical_order(tmp_path: Path) -> None:
    root = sample_tree(tmp_path / "t")
    m = build_manifest(root)
    by_path = {e.path: e for e in m.entries}
    assert [e.path for e in m.entries][:3] == ["README.md", "dir-link", "empty-dir"]
    assert by_path["run.sh"].mode == 0o755 and by_path["secret.key"].mode == 0o600
    assert by_path["ro"].kind == "d" and by_path["ro"].mode == 0o555
    assert by_path["dir-link"].kind == "l" and by_path["dir-link"].target == "src/pkg"
    data = by_path["src/pkg/data.bin"]
    fd = os.open(root / "src/pkg/data.bin", os.O_RDONLY)
    assert data.sha256 == sha256_fd(fd)[0] and data.size == 1 << 20
    os.close(fd)
    assert by_path["src/pkg/data.bin"].mtime_ns == (root / "src/pkg/data.bin").stat().st_mtime_ns


def test_setuid_setgid_and_sticky_bits_stay_behind(tmp_path: Path) -> None:
    write(tmp_path / "t" / "tool", b"x", 0o4755)
    (tmp_path / "t" / "shared").mkdir(mode=0o777)
    os.chmod(tmp_path / "t" / "shared", 0o3777)
    modes = {e.path: e.mode for e in build_manifest(tmp_path / "t").entries}
    assert modes == {"shared": 0o777, "tool": 0o755}


def test_special_files_and_escaping_links_are_refused_together(tmp_path: Path) -> None:
    root = tmp_path / "t"
    write(root / "ok.py", b"x")
    os.mkfifo(root / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    os.symlink("/etc/passwd", root / "abs-link")
    os.symlink("../../elsewhere", root / "out-link")
    os.mknod(root / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    try:
        with pytest.raises(UnsafeTree) as err:
            build_manifest(root)
    finally:
        sock.close()
    msg = err.value.message
    for part in ("'fifo' (a FIFO)", "'sock' (a socket)", "'null' (a device)", "absolute path"):
        assert part in msg
    assert "outside the tree" in msg and "5 entries" in msg and ".mlsmignore" in msg
    assert len(err.value.details["entries"]) == 5


def test_many_refusals_are_named_a_few_then_counted(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    for i in range(12):
        os.mkfifo(root / f"fifo{i:02d}")
    with pytest.raises(UnsafeTree, match=r"fifo04' \(a FIFO\), and 7 more") as err:
        build_manifest(root)
    assert "fifo05" not in err.value.message


def test_a_chain_of_in_tree_links_that_leads_out_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "t"
    (root / "a").mkdir(parents=True)
    os.symlink("..", root / "a" / "up")  # fine on its own: the root
    os.symlink("a/up/..", root / "out")  # through it, one level above the root
    with pytest.raises(UnsafeTree, match=r"'out'.*leads outside"):
        build_manifest(root)


def test_names_that_are_not_utf8_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    (root / os.fsdecode(b"bad\xff")).write_bytes(b"x")
    with pytest.raises(UnsafeTree, match="not valid UTF-8"):
        build_manifest(root)


def test_limits_are_checked_before_any_file_is_read(tmp_path: Path) -> None:
    root = tmp_path / "t"
    for i in range(5):
        write(root / f"f{i}", b"x" * 100)
    cache = HashCache()
    with pytest.raises(PayloadTooLarge, match="5 files, more than the limit of 4"):
        build_manifest(root, max_files=4, cache=cache)
    with pytest.raises(PayloadTooLarge, match="500 bytes, more than the limit of 499"):
        build_manifest(root, max_bytes=499, cache=cache)
    assert cache.hits == cache.misses == 0  # nothing was hashed
    assert build_manifest(root, max_files=5, max_bytes=500).file_count() == 5


def test_the_hash_cache_keeps_a_resubmit_to_the_changed_files(tmp_path: Path) -> None:
    root = tmp_path / "t"
    old = time.time() - 60
    for i in range(50):
        write(root / "d" / f"f{i}", f"content {i}".encode())
        os.utime(root / "d" / f"f{i}", (old, old))
    cache = HashCache()
    first = build_manifest(root, cache=cache)
    assert cache.misses == 50
    cache.save(tmp_path / "cache")
    cache = HashCache.load(tmp_path / "cache")
    again = build_manifest(root, cache=cache)
    assert (cache.hits, cache.misses) == (50, 0)
    assert again == first
    write(root / "d" / "f7", b"changed!!")  # same size class, new mtime and content
    os.utime(root / "d" / "f7", (old + 1, old + 1))
    changed = build_manifest(root, cache=cache)
    assert cache.misses == 1
    assert {e.path for e in changed.entries} == {e.path for e in first.entries}
    assert [e.path for e in changed.entries if e not in first.entries] == ["d/f7"]


def test_a_file_written_just_now_is_not_cached(tmp_path: Path) -> None:
    """git's "racily clean" case: a second write in the same timestamp tick as the hashing
    would leave the key unchanged, so a fresh file is hashed again next time."""
    write(tmp_path / "t" / "fresh", b"1")
    cache = HashCache()
    build_manifest(tmp_path / "t", cache=cache)
    assert len(cache) == 0
    st = (tmp_path / "t" / "fresh").stat()
    old = st.st_mtime_ns - 10**10
    cache.put(FileKey("x", 1, old, 1, old), "ab" * 32)
    assert len(cache) == 1


def test_a_file_rewritten_with_its_size_and_mtime_put_back_is_hashed_again(
    tmp_path: Path,
) -> None:
    """``cp -p`` / ``touch -d`` keep the size and mtime of a changed file; its ctime moves,
    and the cache is keyed by it too."""
    f = tmp_path / "t" / "data"
    write(f, b"before")
    long_ago = f.stat().st_mtime_ns - 10**11
    os.utime(f, ns=(long_ago, long_ago))
    cache = HashCache()
    cache.put(FileKey.of("data", f.stat()), "ab" * 32, hashed_at_ns=f.stat().st_ctime_ns + 10**10)
    with open(f, "r+b") as fh:
        fh.write(b"AFTER!")
    os.utime(f, ns=(long_ago, long_ago))
    m = build_manifest(tmp_path / "t", cache=cache)
    assert m.entries[0].sha256 == hashlib.sha256(b"AFTER!").hexdigest()
    assert cache.misses == 1


def test_an_unreadable_cache_file_is_an_empty_cache(tmp_path: Path) -> None:
    (tmp_path / "cache").write_bytes(b"\x93garbage")
    assert len(HashCache.load(tmp_path / "cache")) == 0
    assert len(HashCache.load(tmp_path / "missing")) == 0


def test_the_root_may_be_a_link_named_by_the_person(tmp_path: Path) -> None:
    write(tmp_path / "real" / "a", b"x")
    os.symlink("real", tmp_path / "via-link")
    assert build_manifest(tmp_path / "via-link") == build_manifest(tmp_path / "real")


def test_a_tree_5000_deep_builds_without_recursion(tmp_path: Path, deep_cleanup: None) -> None:
    make_deep(tmp_path / "t", DEEP, file_every=1000)
    (tmp_path / "t" / ".gitignore").write_text("f\n")  # ignore rules on every level
    m = build_manifest(tmp_path / "t", rules=IgnoreRules())
    files = [e.path for e in m.entries if e.kind == "f"]
    assert files == [".gitignore", deepest_rel(DEEP)]
    assert sum(1 for e in m.entries if e.kind == "d") == DEEP


def test_20000_files_build_and_a_cached_rebuild_reads_none(tmp_path: Path) -> None:
    root = tmp_path / "t"
    old = time.time() - 60
    for d in range(100):
        sub = root / f"d{d:03d}"
        sub.mkdir(parents=True)
        for f in range(200):
            p = sub / f"f{f:03d}.py"
            p.write_bytes(b"#" * (d + f))
            os.utime(p, (old, old))
    cache = HashCache()
    m = build_manifest(root, rules=IgnoreRules(), cache=cache)
    assert m.file_count() == 20_000 and len(m.entries) == 20_100
    again = build_manifest(root, rules=IgnoreRules(), cache=cache)
    assert cache.hits == 19_999  # d000/f000.py is empty: it needs no hash at all
    assert again.digest() == m.digest()
