"""mlsm.bulk Source -> Sink: trees arrive byte-exact with their modes, links and mtimes;
a source that changes mid-transfer, hostile manifests, a taken destination and a link
planted in the work dir are refused without writing or following anything; ``owner``
owns every created entry."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from mlsm.bulk import Entry, Manifest, Sink, Source, build_manifest, pump
from mlsm.bulk.frames import FrameReader
from mlsm.bulk.hashing import EMPTY_SHA256
from mlsm.bulk.sink import TREE_NAME
from mlsm.errors import DestinationExists, SourceChanged, TransferFailed, UnsafeTree
from tests.support.deep_trees import DEEP, deepest_rel, make_deep
from tests.unit.bulk.support import (
    BIG,
    copy,
    file_entry,
    manifest_of,
    sample_tree,
    tree_digest,
    write,
)


def _d(path: str, mode: int = 0o755) -> Entry:
    return Entry(path, "d", 0, mode, 1_600_000_000_000_000_000)


def _link(path: str, target: str) -> Entry:
    return Entry(path, "l", 0, 0o777, 0, "", target)


def _transfer(src: Path, dest: Path, work: Path, **kw: object) -> Manifest:
    m = build_manifest(src)
    sink = Sink(m, work, durable=False, **kw)  # type: ignore[arg-type]
    copy(src, m, sink)
    sink.finish(dest)
    return m


def _all_entries(top: Path) -> list[Path]:
    out = [top]
    for dirpath, dirnames, filenames in os.walk(top):
        out += [Path(dirpath) / n for n in dirnames + filenames]
    return out


def test_a_sample_tree_arrives_byte_exact_with_modes_links_and_mtimes(tmp_path: Path) -> None:
    src = sample_tree(tmp_path / "src")
    m = _transfer(src, tmp_path / "dest", tmp_path / "work")
    assert tree_digest(tmp_path / "dest") == m.digest()
    dest = tmp_path / "dest"
    assert os.readlink(dest / "dir-link") == "src/pkg"
    assert (dest / "dir-link" / "mod.py").read_bytes() == b"x = 1\n" * 1000
    assert stat.S_IMODE((dest / "ro").stat().st_mode) == 0o555
    assert stat.S_IMODE((dest / "secret.key").stat().st_mode) == 0o600
    assert (dest / "empty.txt").read_bytes() == b"" and (dest / "empty-dir").is_dir()
    assert not (tmp_path / "work").exists()


def test_a_64_mib_file_arrives_byte_exact(tmp_path: Path, big_file: Path) -> None:
    m = _transfer(big_file, tmp_path / "dest", tmp_path / "work")
    assert m.total_bytes() == BIG
    assert tree_digest(tmp_path / "dest") == m.digest()


def test_empty_files_and_dirs_only_and_setuid_bits_never_written(tmp_path: Path) -> None:
    m = manifest_of(
        _d("a", 0o2755), _d("a/b", 0o1777), file_entry("a/b/e", b"", 0o4755), _d("z", 0o700)
    )
    sink = Sink(m, tmp_path / "work", durable=False)
    assert sink.next_want() is None  # nothing to ask a source for
    sink.finish(tmp_path / "dest")
    assert stat.S_IMODE((tmp_path / "dest/a").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "dest/a/b").stat().st_mode) == 0o777
    assert stat.S_IMODE((tmp_path / "dest/a/b/e").stat().st_mode) == 0o755
    assert (tmp_path / "dest/z").is_dir()


def test_a_file_that_changes_at_the_source_before_it_is_read_is_gone(tmp_path: Path) -> None:
    src = sample_tree(tmp_path / "src")
    m = build_manifest(src)
    write(src / "README.md", b"# changed, longer\n")
    os.unlink(src / "run.sh")
    sink = Sink(m, tmp_path / "work", durable=False)
    copy(src, m, sink)
    assert sorted(m.entries[i].path for i in sink.gone) == ["README.md", "run.sh"]
    with pytest.raises(SourceChanged) as err:
        sink.finish(tmp_path / "dest")
    assert sorted(err.value.details["paths"]) == ["README.md", "run.sh"]
    assert not (tmp_path / "dest").exists()
    sink.finish(tmp_path / "dest", allow_gone=True)
    assert not (tmp_path / "dest/README.md").exists()
    assert (tmp_path / "dest/src/pkg/data.bin").stat().st_size == 1 << 20


def test_a_file_that_changes_while_it_is_being_read_is_gone(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "big.bin", os.urandom(3 << 20))
    m = build_manifest(src)
    sink = Sink(m, tmp_path / "work", durable=False)
    with Source.from_tree(src, m) as source:
        want = sink.next_want()
        assert want is not None
        chunks = source.chunks(want)
        sink.feed(next(chunks))  # the first block is read and sent
        with open(src / "big.bin", "r+b") as f:  # then the file is written to
            f.seek(2 << 20)
            f.write(b"changed")
        for chunk in chunks:
            if sink.feed(chunk):
                break
    assert sink.gone == [0] and sink.complete
    with pytest.raises(SourceChanged):
        sink.finish(tmp_path / "dest")


def test_a_link_swapped_in_at_the_source_is_not_followed(tmp_path: Path, outside: Path) -> None:
    src = tmp_path / "src"
    write(src / "sub" / "f.txt", b"mine")
    m = build_manifest(src)
    os.rename(src / "sub", tmp_path / "moved")
    os.symlink(outside, src / "sub")
    (outside / "f.txt").write_bytes(b"evil")
    sink = Sink(m, tmp_path / "work", durable=False)
    copy(src, m, sink)
    assert [m.entries[i].path for i in sink.gone] == ["sub/f.txt"]


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ([file_entry("../escape", b"x")], "'..'"),
        ([_d("a"), file_entry("a/../../escape", b"x")], "'..'"),
        ([file_entry("/etc/evil", b"x")], "absolute"),
        ([file_entry("a\0b", b"x")], "NUL"),
        ([_link("l", "../outside")], "outside"),
        ([_link("l", "/etc")], "absolute"),
        ([_d("a"), _link("a/l", "../..")], "outside"),
        ([_link("l1", ".."), _link("l2", "l1/x")], "outside"),
        ([file_entry("dup", b"x"), file_entry("dup", b"y")], "twice"),
        ([file_entry("f", b"x"), file_entry("f/under", b"y")], "parent is not a directory"),
        ([_link("l", "."), file_entry("l/under", b"y")], "parent is not a directory"),
        ([file_entry("a/no-parent", b"y")], "parent"),
        ([Entry("f", "f", 3, 0o644, 0, "0" * 64)], None),  # wrong hash: refused on arrival
    ],
)
def test_hostile_manifests_are_refused_before_anything_is_written(
    tmp_path: Path, entries: list[Entry], why: str | None
) -> None:
    m = Manifest(entries)
    work = tmp_path / "work"
    if why is None:  # a manifest that passes: the bytes must then match it
        src = tmp_path / "src"
        write(src / "f", b"abc")
        sink = Sink(m, work, durable=False, max_attempts=2)
        with pytest.raises(TransferFailed, match="damaged"):
            copy(src, m, sink)
        return
    with pytest.raises(UnsafeTree, match=why):
        Sink(m, work)
    assert not work.exists()


def test_a_taken_destination_is_never_replaced(tmp_path: Path) -> None:
    src = sample_tree(tmp_path / "src")
    m = build_manifest(src)
    for taken in ("empty-dir", "file", "link"):
        dest = tmp_path / f"dest-{taken}"
        if taken == "empty-dir":
            dest.mkdir()
        elif taken == "file":
            dest.write_bytes(b"keep")
        else:
            os.symlink(tmp_path / "nowhere", dest)
        sink = Sink(m, tmp_path / f"work-{taken}", durable=False)
        copy(src, m, sink)
        with pytest.raises(DestinationExists):
            sink.finish(dest)
        if taken == "empty-dir":
            assert dest.is_dir() and not any(dest.iterdir())
        elif taken == "file":
            assert dest.read_bytes() == b"keep"
        else:
            assert os.readlink(dest) == str(tmp_path / "nowhere")
        sink.finish(tmp_path / f"elsewhere-{taken}")  # the sink stayed as it was
        assert tree_digest(tmp_path / f"elsewhere-{taken}") == m.digest()


def test_owner_owns_every_created_entry(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another account needs root")
    nobody = pwd.getpwnam("nobody")
    owner = (nobody.pw_uid, nobody.pw_gid)
    src = sample_tree(tmp_path / "src")
    _transfer(src, tmp_path / "dest", tmp_path / "work", owner=owner)
    for p in _all_entries(tmp_path / "dest"):
        st = p.lstat()
        assert (st.st_uid, st.st_gid) == owner, p


def test_owner_owns_entries_a_resumed_sink_adopted(tmp_path: Path) -> None:
    """A receiver killed between creating an entry and chowning it leaves a root-owned
    entry; the next receiver must not publish it as it is."""
    if os.geteuid() != 0:
        pytest.skip("chown to another account needs root")
    nobody = pwd.getpwnam("nobody")
    owner = (nobody.pw_uid, nobody.pw_gid)
    src = sample_tree(tmp_path / "src")
    write(src / "src" / "pkg" / "data.bin", os.urandom(3 << 20))
    m = build_manifest(src)
    work = tmp_path / "work"
    first = Sink(m, work, durable=False, owner=owner)
    want = first.next_want()
    assert want is not None
    with Source.from_tree(src, m) as source:
        for n, chunk in enumerate(source.chunks(want)):
            first.feed(chunk)
            if n == 1:  # cut in data.bin, after its first block
                break
    partial = m.entries.index(next(e for e in m.entries if e.path == "src/pkg/data.bin"))
    assert first.next_want().items[0][:2] == (partial, 1 << 20)  # type: ignore[union-attr]
    first.close()
    tree = work / TREE_NAME
    for p in _all_entries(tree):  # as if the chowns of the unfinished entries were cut off
        if p.is_dir() or p.name == "data.bin":
            os.lchown(p, 0, 0)
    sink = Sink(m, work, durable=False, owner=owner)
    copy(src, m, sink)
    sink.finish(tmp_path / "dest")
    for p in _all_entries(tmp_path / "dest"):
        st = p.lstat()
        assert (st.st_uid, st.st_gid) == owner, p


def test_a_link_planted_in_the_work_dir_between_pumps_is_not_followed(
    tmp_path: Path, outside: Path
) -> None:
    src = tmp_path / "src"
    write(src / "a" / "one.bin", os.urandom(3 << 20))
    write(src / "a" / "two.txt", b"two")
    m = build_manifest(src)
    for plant in ("dir", "part"):
        work = tmp_path / f"work-{plant}"
        sink = Sink(m, work, durable=False)
        with Source.from_tree(src, m) as source:
            want = sink.next_want()
            assert want is not None
            chunks = source.chunks(want)
            sink.feed(next(chunks))  # a header
            sink.feed(next(chunks))  # one.bin's first block: it is partly written
        tree = work / TREE_NAME
        if plant == "dir":
            os.rename(tree / "a", tmp_path / f"real-a-{plant}")
            os.symlink(outside, tree / "a")
        else:
            os.unlink(tree / "a" / "one.bin")
            os.symlink(outside / "precious.txt", tree / "a" / "one.bin")
        with pytest.raises((UnsafeTree, TransferFailed)):
            sink.close_parts()  # the part's descriptor is gone: it must be opened again
            copy(src, m, sink)
            sink.finish(tmp_path / f"dest-{plant}")
        assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
        assert (outside / "precious.txt").read_text() == "keep me"
        assert not (tmp_path / f"dest-{plant}").exists()


def test_a_link_planted_for_a_file_that_stays_open_is_refused_at_finish(
    tmp_path: Path, outside: Path
) -> None:
    src = tmp_path / "src"
    write(src / "one.bin", os.urandom(3 << 20))
    m = build_manifest(src)
    sink = Sink(m, tmp_path / "work", durable=False)
    with Source.from_tree(src, m) as source:
        want = sink.next_want()
        assert want is not None
        chunks = source.chunks(want)
        sink.feed(next(chunks))  # a header
        sink.feed(next(chunks))  # one.bin's first block
        os.unlink(tmp_path / "work" / TREE_NAME / "one.bin")
        os.symlink(outside / "precious.txt", tmp_path / "work" / TREE_NAME / "one.bin")
        with pytest.raises(UnsafeTree):
            for chunk in chunks:
                sink.feed(chunk)
            sink.finish(tmp_path / "dest")
    assert (outside / "precious.txt").read_text() == "keep me"
    assert not (tmp_path / "dest").exists()


def test_frames_for_other_entries_and_gaps_are_refused(tmp_path: Path) -> None:
    from mlsm.bulk import encode_frame

    m = manifest_of(_d("d"), file_entry("f", b"abcdef"))
    sink = Sink(m, tmp_path / "work", durable=False)
    sink.next_want()
    with pytest.raises(TransferFailed, match="not a file"):
        sink.feed(encode_frame(0, 0, b"x"))  # the directory
    sink.next_want()
    with pytest.raises(TransferFailed, match="not a file"):
        sink.feed(encode_frame(7, 0, b"x"))
    sink.next_want()
    with pytest.raises(TransferFailed, match="offset"):
        sink.feed(encode_frame(1, 3, b"def"))
    sink.next_want()
    with pytest.raises(TransferFailed, match="more bytes"):
        sink.feed(encode_frame(1, 0, b"abcdefg"))
    sink.next_want()
    with pytest.raises(TransferFailed, match="the source could not send 'f'"):
        sink.feed(encode_frame(1, 0, b"oops", 2))
    sink.abort()
    assert not (tmp_path / "work").exists()


def test_a_source_that_sends_nothing_useful_fails_instead_of_looping(tmp_path: Path) -> None:
    from mlsm.bulk import Flag, encode_frame
    from mlsm.bulk.frames import NO_INDEX

    m = manifest_of(file_entry("f", b"abc"))
    sink = Sink(m, tmp_path / "work", durable=False)
    with pytest.raises(TransferFailed, match="nothing useful"):
        pump(sink, lambda want: [encode_frame(NO_INDEX, 0, b"", Flag.END)])
    assert FrameReader  # imported for the reader the sink uses


def test_a_deep_tree_goes_through_without_recursion(tmp_path: Path, deep_cleanup: None) -> None:
    src = tmp_path / "src"
    files = make_deep(src, DEEP, file_every=500)
    m = build_manifest(src)
    assert m.file_count() == files
    sink = Sink(m, tmp_path / "work", durable=False)
    copy(src, m, sink)
    sink.finish(tmp_path / "dest")
    fd = os.open(tmp_path / "dest", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in deepest_rel(DEEP).split("/")[:-1]:
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
        with open(os.open("bottom.txt", os.O_RDONLY, dir_fd=fd), "rb") as f:
            assert f.read() == b"bottom"
    finally:
        os.close(fd)
    assert build_manifest(tmp_path / "dest").digest() == m.digest()


def test_a_wide_tree_goes_through(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for d in range(200):
        os.makedirs(src / f"d{d:03}")
        for f in range(100):
            (src / f"d{d:03}" / f"f{f:03}").write_bytes(f"{d}/{f}".encode())
    m = _transfer(src, tmp_path / "dest", tmp_path / "work")
    assert m.file_count() == 20_000
    assert tree_digest(tmp_path / "dest") == m.digest()


def test_empty_file_hash_is_that_of_no_bytes() -> None:
    assert file_entry("e", b"").sha256 == EMPTY_SHA256


def test_a_fifo_or_directory_swapped_in_at_the_source_is_gone_without_blocking(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    write(src / "fifo", b"was a file")
    write(src / "dir", b"was a file too")
    write(src / "ok", b"fine")
    m = build_manifest(src)
    os.unlink(src / "fifo")
    os.mkfifo(src / "fifo")  # no writer: a blocking open would hang for ever
    os.unlink(src / "dir")
    (src / "dir").mkdir()
    sink = Sink(m, tmp_path / "work", durable=False)
    copy(src, m, sink)
    assert sorted(m.entries[i].path for i in sink.gone) == ["dir", "fifo"]
    sink.finish(tmp_path / "dest", allow_gone=True)
    assert sorted(os.listdir(tmp_path / "dest")) == ["ok"]


def test_a_sink_fed_through_one_reused_buffer_verifies_a_large_file(
    tmp_path: Path, big_file: Path
) -> None:
    """Pieces are hashed in a thread beside their writing, as views of the chunk fed: the
    hashing is done before ``feed`` returns, so the caller may overwrite the chunk."""
    m = build_manifest(big_file)
    sink = Sink(m, tmp_path / "work", durable=False)
    buf = bytearray(1 << 20)
    with Source.from_tree(big_file, m) as source:
        while (want := sink.next_want()) is not None:
            stream = b"".join(source.chunks(want))
            for pos in range(0, len(stream), len(buf)):
                n = len(stream[pos : pos + len(buf)])
                buf[:n] = stream[pos : pos + n]
                sink.feed(memoryview(buf)[:n])
                buf[:n] = b"\xff" * n  # what a reused receive buffer does next
    sink.finish(tmp_path / "dest")
    assert tree_digest(tmp_path / "dest") == m.digest()


def test_a_failed_write_starts_that_file_again_and_the_transfer_still_arrives_exact(
    tmp_path: Path, big_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlsm.bulk._receiver as receiver

    m = build_manifest(big_file)
    real = os.pwrite
    calls = 0

    def full_once(fd: int, data: bytes | memoryview, offset: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 10:
            raise OSError(28, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(receiver.os, "pwrite", full_once)
    sink = Sink(m, tmp_path / "work", durable=False)
    with pytest.raises(OSError, match="No space"):
        copy(big_file, m, sink)
    copy(big_file, m, sink)  # the same sink goes on: the file starts again from 0
    sink.finish(tmp_path / "dest")
    assert tree_digest(tmp_path / "dest") == m.digest()
