"""Settle records: a received tree published before the disk has it, checked after a
crash of the machine (mlsm.bulk.settle), with real files and a real sink.

"Another boot" is a record whose boot id is not this machine's: the one thing a test
cannot do for real is restart the machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from mlsm.bulk import Manifest, Sink, Source, build_manifest, pump
from mlsm.bulk.journal import boot_id
from mlsm.bulk.settle import SettleBook, SettleRecord
from tests.unit.bulk.support import copy, sample_tree, tree_digest, write

OTHER_BOOT = bytes(range(1, 17)).hex()


def _received(tmp_path: Path) -> tuple[Path, list[tuple[str, int, str]]]:
    """A tree received by a real sink and published with ``flush=False``; its files."""
    src = sample_tree(tmp_path / "src")
    m = build_manifest(src)
    sink = Sink(m, tmp_path / "work", writeback=False)
    copy(src, m, sink)
    files = sink.digests()
    assert files is not None
    dest = tmp_path / "root" / "ds"
    dest.parent.mkdir()
    sink.finish(dest, flush=False)
    assert tree_digest(dest) == m.digest()
    return dest, files


def _records(book: SettleBook) -> list[Path]:
    return sorted(book.directory.glob("*.settle"))


def _as_if_from(record: Path, boot: str) -> None:
    r = msgspec.json.decode(record.read_bytes(), type=SettleRecord)
    record.write_bytes(msgspec.json.encode(msgspec.structs.replace(r, boot=boot)))


def test_a_record_is_durable_before_the_rename_and_gone_once_settled(tmp_path: Path) -> None:
    dest, files = _received(tmp_path)
    book = SettleBook(tmp_path / "settling")
    record = book.publishing(dest, files)
    r = msgspec.json.decode(record.read_bytes(), type=SettleRecord)
    assert (r.dest, r.boot) == (os.fspath(dest), boot_id().hex())
    assert sorted(p for p, _, _ in r.files) == sorted(p for p, _, _ in files)
    assert all(len(sha) == 64 for _, _, sha in r.files)
    book.settle_later(record, dest)
    assert book.wait_settled(30.0)
    assert _records(book) == []
    assert dest.is_dir()


def test_after_an_agent_restart_on_the_same_boot_the_record_is_settled(tmp_path: Path) -> None:
    dest, files = _received(tmp_path)
    book = SettleBook(tmp_path / "settling")
    book.publishing(dest, files)  # the agent died before its flush
    digest = tree_digest(dest)
    assert SettleBook(book.directory).recover() == []
    assert _records(book) == []
    assert tree_digest(dest) == digest


def test_after_a_reboot_a_whole_tree_stays(tmp_path: Path) -> None:
    dest, files = _received(tmp_path)
    book = SettleBook(tmp_path / "settling")
    _as_if_from(book.publishing(dest, files), OTHER_BOOT)
    digest = tree_digest(dest)
    lines = SettleBook(book.directory).recover()
    assert lines == [f"{dest}: whole after the restart of the machine"]
    assert tree_digest(dest) == digest and _records(book) == []


@pytest.mark.parametrize("harm", ["truncated", "zeroed", "missing", "a link"])
def test_after_a_reboot_a_tree_that_is_not_whole_is_removed(tmp_path: Path, harm: str) -> None:
    dest, files = _received(tmp_path)
    book = SettleBook(tmp_path / "settling")
    _as_if_from(book.publishing(dest, files), OTHER_BOOT)
    rel, size, _ = max(files, key=lambda f: f[1])
    victim = dest / rel
    outside = tmp_path / "outside.bin"
    write(outside, victim.read_bytes())  # the same bytes, but not in the tree
    if harm == "truncated":  # what a power loss leaves of a file not yet written back
        os.truncate(victim, size // 2)
    elif harm == "zeroed":  # allocated but never written: reads as zeros, size intact
        victim.write_bytes(bytes(size))
    elif harm == "missing":
        victim.unlink()
    else:
        victim.unlink()
        victim.symlink_to(outside)  # never followed, so never taken for the file
    lines = SettleBook(book.directory).recover()
    assert len(lines) == 1 and lines[0].startswith(f"{dest}: removed, not whole")
    assert rel in lines[0]
    assert not dest.exists() and outside.exists()
    assert _records(book) == []


def test_a_torn_record_or_a_tree_that_never_appeared_leaves_everything(tmp_path: Path) -> None:
    book = SettleBook(tmp_path / "settling")
    never = tmp_path / "root" / "never"
    _as_if_from(book.publishing(never, [("f", 1, "0" * 64)]), OTHER_BOOT)
    (book.directory / "1-2-3.settle").write_bytes(b'{"dest": "/x", "bo')  # torn
    assert SettleBook(book.directory).recover() == []
    assert _records(book) == []


def test_a_resumed_sink_without_the_hashes_of_earlier_files_cannot_vouch(
    tmp_path: Path,
) -> None:
    """digests() is None when a file verified by an earlier receiver has no sha256 in the
    manifest (hashes to come): such a tree is flushed before its rename, not settled."""
    src = tmp_path / "src"
    write(src / "a.bin", b"a" * 1000)
    full = build_manifest(src)
    streamed = Manifest(
        [msgspec.structs.replace(e, sha256="") if e.kind == "f" else e for e in full.entries]
    )
    with Source.from_tree(src, streamed) as source:
        first = Sink(streamed, tmp_path / "work")
        pump(first, source.chunks)
    got = first.digests()  # verified here, against the HASH frame
    assert got == [("a.bin", 1000, full.entries[-1].sha256)]
    first.close()
    again = Sink(streamed, tmp_path / "work")  # resumed: a.bin is done per the journal
    assert again.next_want() is None
    assert again.digests() is None
    again.finish(tmp_path / "dest")  # flushed before the rename instead
    assert tree_digest(tmp_path / "dest") == tree_digest(src)
