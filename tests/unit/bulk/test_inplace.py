"""mlsm.bulk.InPlaceSink: an existing directory is brought to a manifest (files added and
changed, kinds replaced, modes and links fixed) fetching only the files that differ, without
following a link planted in it, and resumably."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
from pathlib import Path

import pytest

from mlsm.bulk import HashCache, InPlaceSink, Source, build_manifest, pump
from mlsm.errors import DestinationExists
from tests.unit.bulk.support import sample_tree, tree_digest, write


def _fetch(src: Path, dest: Path, work: Path, **kw: object) -> tuple[InPlaceSink, set[str]]:
    """Bring ``dest`` to ``src``'s manifest; return the sink and the paths fetched."""
    m = build_manifest(src)
    sink = InPlaceSink(m, dest, work, durable=False, **kw)  # type: ignore[arg-type]
    fetched: set[str] = set()
    with Source.from_tree(src, m) as source:

        def fetch(want):  # type: ignore[no-untyped-def]
            fetched.update(m.entries[i].path for i, _, _ in want.items)
            return source.chunks(want)

        pump(sink, fetch)
    sink.finish()
    return sink, fetched


def test_an_existing_tree_is_brought_to_the_manifest_fetching_only_changes(
    tmp_path: Path, outside: Path
) -> None:
    src = sample_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    shutil.copytree(src, dest, symlinks=True)
    os.chmod(dest / "ro", 0o755)
    # the source moves on
    write(src / "src" / "pkg" / "mod.py", b"x = 2\n" * 1000)  # changed, same size
    write(src / "new" / "added.txt", b"new file")
    os.chmod(src / "run.sh", 0o700)  # mode only
    os.unlink(src / "src" / "link-to-mod")
    os.symlink("pkg/data.bin", src / "src" / "link-to-mod")  # link retargeted
    os.unlink(src / "README.md")
    (src / "README.md").mkdir()  # a file becomes a directory
    write(src / "README.md" / "index.md", b"# now a dir\n")
    shutil.rmtree(src / "empty-dir")
    write(src / "empty-dir", b"a file now")  # an empty directory becomes a file
    # the destination has things of its own
    write(dest / "mine.txt", b"not in the manifest")
    os.symlink(outside, dest / "new")  # a link where the manifest has a directory
    sink, fetched = _fetch(src, dest, tmp_path / "work")
    assert fetched == {"src/pkg/mod.py", "new/added.txt", "README.md/index.md", "empty-dir"}
    assert sink.kept >= 5
    assert (dest / "mine.txt").read_bytes() == b"not in the manifest"  # untouched
    os.unlink(dest / "mine.txt")
    assert tree_digest(dest) == build_manifest(src).digest()
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o700
    assert stat.S_IMODE((dest / "ro").stat().st_mode) == 0o555
    assert os.readlink(dest / "src" / "link-to-mod") == "pkg/data.bin"
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
    assert not (tmp_path / "work").exists()
    _, again = _fetch(src, dest, tmp_path / "work")  # nothing left to fetch
    assert again == set()


def test_a_changed_file_is_replaced_whole_not_written_into(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "f", b"new bytes")
    dest = tmp_path / "dest"
    write(dest / "f", b"old")
    os.link(dest / "f", tmp_path / "hardlink-elsewhere")  # another name of the old inode
    _fetch(src, dest, tmp_path / "work")
    assert (dest / "f").read_bytes() == b"new bytes"
    assert (tmp_path / "hardlink-elsewhere").read_bytes() == b"old"


def test_a_full_directory_in_the_way_of_a_file_is_refused_not_deleted(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "x", b"file")
    dest = tmp_path / "dest"
    write(dest / "x" / "keep.txt", b"a person's file")
    with pytest.raises(DestinationExists):
        _fetch(src, dest, tmp_path / "work")
    assert (dest / "x" / "keep.txt").read_bytes() == b"a person's file"


def test_the_hash_cache_spares_reading_unchanged_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a", os.urandom(100_000))
    os.utime(src / "a", ns=(1_600_000_000_000_000_000,) * 2)  # long unchanged
    dest = tmp_path / "dest"
    shutil.copytree(src, dest)
    cache = HashCache()
    sink, fetched = _fetch(src, dest, tmp_path / "work", cache=cache)
    assert fetched == set() and sink.kept == 1 and len(cache) == 1
    [(key, _)] = list(cache._rows.items())  # the cache is what is believed:
    cache.put(key, "0" * 64, hashed_at_ns=key.mtime_ns + 10**10)  # a stale answer...
    _, fetched = _fetch(src, dest, tmp_path / "work", cache=cache)
    assert fetched == {"a"}  # ...is only ever a reason to fetch, never to keep


def test_an_in_place_transfer_cut_short_resumes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a.txt", b"a" * 10)
    write(src / "big.bin", os.urandom(3 << 20))
    write(src / "z.txt", b"z" * 10)
    dest = tmp_path / "dest"
    dest.mkdir()
    m = build_manifest(src)
    work = tmp_path / "work"
    first = InPlaceSink(m, dest, work, durable=False)
    want = first.next_want()
    assert want is not None
    with Source.from_tree(src, m) as source:
        chunks = source.chunks(want)
        first.feed(next(chunks))  # a.txt and big.bin's header
        first.feed(next(chunks))  # big.bin's first block
    first.close()
    assert (dest / "a.txt").read_bytes() == b"a" * 10  # verified files are in place
    sink = InPlaceSink(m, dest, work, durable=False)
    want = sink.next_want()
    assert want is not None and want.items[0] == (1, 1 << 20, (3 << 20) - (1 << 20))
    assert sink.progress().bytes_rehashed == 1 << 20
    with Source.from_tree(src, m) as source:
        pump(sink, source.chunks)
    sink.finish()
    assert tree_digest(dest) == m.digest()


def test_links_in_the_destination_are_replaced_never_written_through(
    tmp_path: Path, outside: Path
) -> None:
    src = tmp_path / "src"
    write(src / "f", b"keep me")  # the same bytes as the link's target: still not kept
    write(src / "sub" / "g", b"g")
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside / "precious.txt", dest / "f")
    os.symlink(outside, dest / "sub")
    _fetch(src, dest, tmp_path / "work")
    assert not (dest / "f").is_symlink() and (dest / "f").read_bytes() == b"keep me"
    assert not (dest / "sub").is_symlink() and (dest / "sub" / "g").read_bytes() == b"g"
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
    assert (outside / "precious.txt").read_text() == "keep me"


def test_owner_owns_what_an_in_place_transfer_creates(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another account needs root")
    nobody = pwd.getpwnam("nobody")
    owner = (nobody.pw_uid, nobody.pw_gid)
    src = sample_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    write(dest / "README.md", (src / "README.md").read_bytes())  # kept: stays root's
    _fetch(src, dest, tmp_path / "work", owner=owner)
    for p in dest.rglob("*"):
        st = p.lstat()
        expected = (0, 0) if p.name == "README.md" else owner
        assert (st.st_uid, st.st_gid) == expected, p
