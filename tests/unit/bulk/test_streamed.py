"""Files whose hash is to come: the source hashes them while it sends them and sends each
one's sha256 (a HASH frame) right after its bytes; the sink verifies against that hash,
journals the file only once it matched, and resumes a cut transfer from what it holds."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import msgspec
import pytest

from mlsm.bulk import (
    InPlaceSink,
    Manifest,
    Sink,
    Source,
    Want,
    build_manifest,
    pump,
    validate_manifest,
)
from mlsm.bulk.frames import Flag, FrameError, encode_frame
from mlsm.bulk.source import HashStates
from mlsm.errors import TransferFailed, UnsafeTree
from tests.unit.bulk.support import tree_digest, write

BIG = (3 << 20) + 12345


def _tree(root: Path) -> Path:
    write(root / "a.bin", os.urandom(300_000))
    write(root / "b" / "big.bin", os.urandom(BIG))
    write(root / "b" / "c.txt", b"c" * 10)
    write(root / "e", b"")
    return root


def _streamed(manifest: Manifest) -> Manifest:
    """``manifest`` with every non-empty file's hash to come."""
    return Manifest(
        [
            msgspec.structs.replace(e, sha256="") if e.kind == "f" and e.size else e
            for e in manifest.entries
        ]
    )


def _index(manifest: Manifest, path: str) -> int:
    return next(i for i, e in enumerate(manifest.entries) if e.path == path)


def test_a_streamed_tree_arrives_byte_exact_and_its_hashes_are_heard(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    full = build_manifest(src)
    manifest = _streamed(full)
    assert manifest.hashes_to_come() == 3
    assert manifest.shape_digest() == full.shape_digest() != manifest.digest()
    heard: dict[str, str] = {}
    with Source.from_tree(src, manifest) as source:
        source.on_hashed = lambda e, st, digest, at: heard.setdefault(e.path, digest)
        sink = Sink(manifest, tmp_path / "work", durable=False)
        pump(sink, source.chunks)
    sink.finish(tmp_path / "dest")
    assert tree_digest(tmp_path / "dest") == tree_digest(src)
    assert heard == {e.path: e.sha256 for e in full.entries if e.kind == "f" and e.size}


def test_a_corrupted_byte_in_a_streamed_file_is_caught_by_its_trailing_hash(
    tmp_path: Path,
) -> None:
    src = _tree(tmp_path / "src")
    manifest = _streamed(build_manifest(src))
    i = _index(manifest, "a.bin")
    data = bytearray((src / "a.bin").read_bytes())
    good = encode_frame(i, 0, hashlib.sha256(data).digest(), Flag.HASH)
    data[1000] ^= 0x01
    sink = Sink(manifest, tmp_path / "work", durable=False, max_attempts=2)
    sink.next_want()
    sink.feed(encode_frame(i, 0, bytes(data)))
    want = sink.next_want()  # whole but not verified before its hash: the hash is wanted
    assert want is not None and (i, len(data), 0) in want.items
    sink.feed(good)
    p = sink.progress()
    assert p.files_done == 1 and p.bytes_discarded == len(data)  # the empty file only
    want = sink.next_want()
    assert want is not None and (i, 0, len(data)) in want.items  # wanted again from 0
    with pytest.raises(TransferFailed, match="arrived damaged 2 times"):
        sink.feed(encode_frame(i, 0, bytes(data)) + good)
    sink.close()


def test_a_hash_before_the_bytes_it_covers_is_a_malformed_stream(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    manifest = _streamed(build_manifest(src))
    i = _index(manifest, "a.bin")
    with Sink(manifest, tmp_path / "work", durable=False) as sink:
        sink.next_want()
        with pytest.raises(FrameError, match="before its bytes"):
            sink.feed(encode_frame(i, 0, b"x" * 100) + encode_frame(i, 0, bytes(32), Flag.HASH))


def test_a_cut_mid_stream_resumes_from_the_last_verified_file(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    manifest = _streamed(build_manifest(src))
    big, small = _index(manifest, "b/big.bin"), _index(manifest, "b/c.txt")
    first = Sink(manifest, tmp_path / "work", durable=False)
    want = first.next_want()
    assert want is not None
    with Source.from_tree(src, manifest) as source:
        for chunk in source.chunks(want):  # a.bin whole and verified, big.bin half
            first.feed(chunk)
            if first.progress().bytes_received >= 300_000 + (2 << 20):
                break
    first.close()  # the cut: the process or the connection goes away here

    second = Sink(manifest, tmp_path / "work", durable=False)
    p = second.progress()
    assert p.files_done == 2 and p.bytes_rehashed == 2 << 20  # a.bin and the empty file
    want = second.next_want()
    assert want is not None
    assert [item[:2] for item in want.items] == [(big, 2 << 20), (small, 0)]
    with Source.from_tree(src, manifest) as source:  # hashes big.bin's first half unsent
        pump(second, source.chunks)
    p = second.progress()
    assert p.bytes_received == BIG - (2 << 20) + 10 and p.bytes_redundant == 0
    second.finish(tmp_path / "dest")
    assert tree_digest(tmp_path / "dest") == tree_digest(src)


def test_only_a_sink_takes_a_manifest_with_hashes_to_come(tmp_path: Path) -> None:
    manifest = _streamed(build_manifest(_tree(tmp_path / "src")))
    validate_manifest(manifest, hashes_later=True)
    with pytest.raises(UnsafeTree, match="without a sha256"):
        validate_manifest(manifest)
    (tmp_path / "dest").mkdir()
    with pytest.raises(UnsafeTree, match="without a sha256"):
        InPlaceSink(manifest, tmp_path / "dest", tmp_path / "work")


def test_a_file_sent_in_parts_is_hashed_once_when_its_wants_follow_each_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _tree(tmp_path / "src")
    manifest = _streamed(build_manifest(src))
    states = HashStates()

    def source() -> Source:
        s = Source.from_tree(src, manifest)
        s.hash_states, s.hash_key = states, "m1"
        return s

    sink = Sink(manifest, tmp_path / "work", durable=False)
    monkeypatch.setattr("mlsm.bulk.source._hash_prefix", _no_prefix)
    while (want := sink.next_want(budget=1 << 20)) is not None:  # big.bin in 4 wants
        with source() as s:
            for chunk in s.chunks(want):
                sink.feed(chunk)
    sink.finish(tmp_path / "dest")
    assert tree_digest(tmp_path / "dest") == tree_digest(src)

    monkeypatch.undo()  # a want that starts where no response stopped hashes the start
    big = _index(manifest, "b/big.bin")
    with source() as s:
        stream = b"".join(s.chunks(Want([(big, 5, BIG - 5)])))
    assert hashlib.sha256((src / "b" / "big.bin").read_bytes()).digest() in stream


def _no_prefix(*args: object) -> bool:
    raise AssertionError("the start of the file was hashed again")
