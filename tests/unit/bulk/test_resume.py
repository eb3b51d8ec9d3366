"""mlsm.bulk's journal: a receiving process killed (SIGKILL) between any two frames, or in
the middle of one, is resumed by a new Sink over the same work dir that asks only for what
was not verified, re-hashes what a partial file holds, and ends byte-exact; a journal that
is damaged, cut short or another transfer's is never trusted (the transfer starts over)."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mlsm.bulk import Sink, Source, Want, apump, build_manifest, encode_manifest, pump
from mlsm.bulk.frames import HEADER
from mlsm.bulk.fstree import remove_tree
from mlsm.bulk.journal import JOURNAL_NAME, journal_digest
from mlsm.bulk.sink import TREE_NAME
from mlsm.errors import TransferFailed
from tests.unit.bulk.support import copy, tree_digest, write

# The receiving process: a Sink fed length-prefixed chunks on stdin, one ack byte each.
_CHILD = """
import struct, sys
from pathlib import Path
from mlsm.bulk import Sink, decode_manifest
m = decode_manifest(Path(sys.argv[1]).read_bytes())
sink = Sink(m, sys.argv[2], durable=False)
sink.next_want()
out = sys.stdout.buffer
out.write(b"r"); out.flush()
inp = sys.stdin.buffer
while head := inp.read(4):
    (n,) = struct.unpack("<I", head)
    sink.feed(inp.read(n))
    out.write(b"."); out.flush()
"""


def _tree(root: Path) -> Path:
    write(root / "a.txt", b"a" * 1000)
    write(root / "b" / "big.bin", os.urandom((3 << 20) + 12345))
    write(root / "b" / "c.txt", b"c" * 10)
    write(root / "e", b"")
    write(root / "z" / "last.bin", os.urandom(200_000), 0o700)
    os.symlink("b/c.txt", root / "to-c")
    return root


def _receive_then_kill(manifest_file: Path, work: Path, chunks: list[bytes]) -> None:
    """Feed ``chunks`` to a receiving process, wait until it took them, SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(manifest_file), str(work)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.read(1) == b"r"
        for chunk in chunks:
            proc.stdin.write(struct.pack("<I", len(chunk)) + chunk)
            proc.stdin.flush()
            assert proc.stdout.read(1) == b"."
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _expected_want(m_sizes: list[int | None], fed: bytes) -> list[tuple[int, int, int]]:
    """What a receiver that got the whole frames in ``fed`` still lacks."""
    from mlsm.bulk import FrameReader

    got: dict[int, int] = {}
    reader = FrameReader()
    for f in reader.feed(fed):
        if f.flags == 0:
            got[f.index] = max(got.get(f.index, 0), f.offset + len(f.data))
    out = []
    for index, size in enumerate(m_sizes):
        if size is None or size == 0:
            continue
        have = got.get(index, 0)
        if have < size:
            out.append((index, have, size - have))
    return out


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, list[bytes]]:
    src = _tree(tmp_path / "src")
    m = build_manifest(src)
    manifest_file = tmp_path / "manifest"
    manifest_file.write_bytes(encode_manifest(m))
    with Source.from_tree(src, m) as source, Sink(m, tmp_path / "probe", durable=False) as probe:
        want = probe.next_want()
        assert want is not None
        stream = b"".join(source.chunks(want))
    return src, manifest_file, _whole_frames(stream)


def _whole_frames(stream: bytes) -> list[bytes]:
    """``stream`` cut at every frame boundary (support.split_frames, a byte at a time, is
    too slow for megabytes)."""
    out = []
    pos = 0
    while pos < len(stream):
        length = HEADER.unpack_from(stream, pos)[2]
        out.append(stream[pos : pos + HEADER.size + length])
        pos += HEADER.size + length
    return out


def test_a_receiver_killed_between_any_two_frames_resumes_with_only_what_is_missing(
    tmp_path: Path, setup: tuple[Path, Path, list[bytes]]
) -> None:
    src, manifest_file, frames = setup
    m = build_manifest(src)
    sizes = [e.size if e.kind == "f" else None for e in m.entries]
    assert len(frames) >= 8
    big = [e.path for e in m.entries].index("b/big.bin")
    cuts = sorted({1, 2, 3, len(frames) // 2, len(frames) - 2, len(frames) - 1})
    for cut in cuts:
        work = tmp_path / f"work-{cut}"
        fed = b"".join(frames[:cut])
        _receive_then_kill(manifest_file, work, frames[:cut])
        sink = Sink(m, work, durable=False)
        want = sink.next_want()
        expected = _expected_want(sizes, fed)
        assert (want.items if want else []) == expected, cut
        partial = [off for i, off, _ in expected if off > 0]
        assert sink.progress().bytes_rehashed == sum(partial)
        if cut == 3:
            assert expected[0][0] == big and expected[0][1] > 0  # cut mid-file
        copy(src, m, sink)
        sink.finish(tmp_path / f"dest-{cut}")
        assert tree_digest(tmp_path / f"dest-{cut}") == m.digest(), cut


def test_a_receiver_killed_in_the_middle_of_a_frame_resumes(
    tmp_path: Path, setup: tuple[Path, Path, list[bytes]]
) -> None:
    src, manifest_file, frames = setup
    m = build_manifest(src)
    stream = b"".join(frames)
    for cut in (7, 20 + 1000 + 10, len(stream) // 2 + 3):
        work = tmp_path / f"work-{cut}"
        _receive_then_kill(manifest_file, work, [stream[:cut]])
        sink = Sink(m, work, durable=False)
        copy(src, m, sink)
        assert sink.progress().bytes_received < m.total_bytes() or cut < 100
        sink.finish(tmp_path / f"dest-{cut}")
        assert tree_digest(tmp_path / f"dest-{cut}") == m.digest()


def test_a_partial_file_is_re_hashed_from_disk_not_trusted(
    tmp_path: Path, setup: tuple[Path, Path, list[bytes]]
) -> None:
    src, manifest_file, frames = setup
    m = build_manifest(src)
    work = tmp_path / "work"
    _receive_then_kill(manifest_file, work, frames[:3])  # big.bin partly written
    part = work / TREE_NAME / "b" / "big.bin"
    held = part.stat().st_size
    assert 0 < held < (3 << 20)
    with open(part, "r+b") as f:  # damage what the killed receiver wrote
        f.seek(held // 2)
        byte = f.read(1)
        f.seek(held // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    sink = Sink(m, work, durable=False)
    copy(src, m, sink)
    progress = sink.progress()
    assert progress.bytes_rehashed == held
    assert (
        progress.bytes_discarded >= m.entries[[e.path for e in m.entries].index("b/big.bin")].size
    )
    sink.finish(tmp_path / "dest")
    assert tree_digest(tmp_path / "dest") == m.digest()


def test_a_verified_file_removed_from_the_work_dir_is_wanted_again(
    tmp_path: Path, setup: tuple[Path, Path, list[bytes]]
) -> None:
    src, manifest_file, frames = setup
    m = build_manifest(src)
    work = tmp_path / "work"
    _receive_then_kill(manifest_file, work, frames[:2])  # a.txt is done
    os.unlink(work / TREE_NAME / "a.txt")
    sink = Sink(m, work, durable=False)
    want = sink.next_want()
    assert want is not None and want.items[0] == (0, 0, 1000)
    copy(src, m, sink)
    sink.finish(tmp_path / "dest")
    assert tree_digest(tmp_path / "dest") == m.digest()


def _journal_cases(journal: Path, other_digest: str) -> dict[str, bytes]:
    data = journal.read_bytes()
    return {
        "empty": b"",  # killed between creating the journal and writing its header
        "torn header": data[:30],
        "bad magic": b"NOTMLSM!" + data[8:],
        "another manifest": data[:8] + bytes.fromhex(other_digest) + data[40:],
        "garbage records": data + struct.pack("<BxxxIQ", 0x7F, 1, 2) * 3,
    }


@pytest.mark.parametrize(
    "case", ["empty", "torn header", "bad magic", "another manifest", "garbage records"]
)
def test_a_damaged_or_foreign_journal_is_discarded_never_trusted(
    tmp_path: Path, setup: tuple[Path, Path, list[bytes]], case: str
) -> None:
    src, manifest_file, frames = setup
    m = build_manifest(src)
    work = tmp_path / "work"
    _receive_then_kill(manifest_file, work, frames[:3])
    journal = work / JOURNAL_NAME
    journal.write_bytes(_journal_cases(journal, "ab" * 32)[case])
    for p in (work / TREE_NAME).rglob("*"):  # what the old transfer left may be anything
        if p.is_file() and p.stat().st_size:
            p.write_bytes(b"\0" * p.stat().st_size)
    sink = Sink(m, work, durable=False)
    want = sink.next_want()
    assert want is not None
    copy(src, m, sink)
    sink.finish(tmp_path / "dest")
    assert tree_digest(tmp_path / "dest") == m.digest()


def test_a_work_dir_that_is_not_a_transfers_is_refused_not_emptied(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    m = build_manifest(src)
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    (work / "notes.txt").write_text("mine")
    with pytest.raises(TransferFailed):
        Sink(m, work)
    assert (work / "notes.txt").read_text() == "mine"


def test_a_work_dir_killed_before_its_tree_was_made_resumes(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    m = build_manifest(src)
    work = tmp_path / "work"
    Sink(m, work, durable=False).close()
    remove_tree(work / TREE_NAME)  # as if killed between the journal and the tree
    with open(work / JOURNAL_NAME, "r+b") as f:
        f.truncate(56)  # its header only
    sink = Sink(m, work, durable=False)
    copy(src, m, sink)
    sink.finish(tmp_path / "dest")
    assert tree_digest(tmp_path / "dest") == m.digest()


def test_responses_cut_anywhere_are_followed_by_the_next_want(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    m = build_manifest(src)
    sink = Sink(m, tmp_path / "work", durable=False)
    cuts = iter([25, 1000, 50_000, 1 << 20, 77, 3 << 20, 10**9] * 10)
    responses = 0

    def fetch(want: Want) -> list[bytes]:
        nonlocal responses
        responses += 1
        with Source.from_tree(src, m) as source:
            stream = b"".join(source.chunks(want))
        cut = next(cuts)
        return [stream[i : i + 4093] for i in range(0, min(cut, len(stream)), 4093)]

    pump(sink, fetch)
    assert responses > 3
    sink.finish(tmp_path / "dest")
    assert tree_digest(tmp_path / "dest") == m.digest()
    assert sink.progress().bytes_received == m.total_bytes()  # nothing fetched twice


def test_apump_drives_a_receiver_from_an_async_source(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    m = build_manifest(src)
    sink = Sink(m, tmp_path / "work", durable=False)

    async def fetch(want: Want) -> AsyncIterator[bytes]:
        async def body() -> AsyncIterator[bytes]:
            with Source.from_tree(src, m) as source:
                for chunk in source.chunks(want):
                    yield chunk
                    await asyncio.sleep(0)

        return body()

    async def main() -> None:
        await apump(sink, fetch, feed=lambda c: asyncio.to_thread(sink.feed, c))

    asyncio.run(main())
    sink.finish(tmp_path / "dest")
    assert tree_digest(tmp_path / "dest") == m.digest()


def test_after_a_reboot_only_records_made_durable_are_trusted(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    m = build_manifest(src)
    work = tmp_path / "work"
    first = Sink(m, work, durable=True, sync_bytes=1 << 40)  # no sync point mid-way
    copy(src, m, first)
    first.close()
    data = bytearray((work / JOURNAL_NAME).read_bytes())
    data[40:56] = bytes(range(1, 17))  # written on another boot
    (work / JOURNAL_NAME).write_bytes(bytes(data))
    big = work / TREE_NAME / "b" / "big.bin"
    with open(big, "r+b") as f:  # the power loss took the last bytes of big.bin
        f.truncate(big.stat().st_size - 5)
    sink = Sink(m, work, durable=False)
    want = sink.next_want()
    assert want is not None  # nothing after the last SYNC (none) is trusted
    big_index = [e.path for e in m.entries].index("b/big.bin")
    assert (big_index, 0, m.entries[big_index].size) in want.items  # a partial: from 0
    copy(src, m, sink)
    sink.finish(tmp_path / "dest")
    assert tree_digest(tmp_path / "dest") == m.digest()


def _sync_records(work: Path) -> int:
    data = (work / JOURNAL_NAME).read_bytes()
    return sum(1 for off in range(56, len(data) - 15, 16) if data[off] == 4)  # Record.SYNC


def test_a_durable_sink_syncs_by_time_and_amount_not_every_few_mib(tmp_path: Path) -> None:
    """A sync point waits for the disk: a 40 MiB file makes none until the interval or the
    amount is reached (once every 16 MiB held the receive to the disk in steps)."""
    src = tmp_path / "src"
    write(src / "big.bin", os.urandom(40 << 20))
    m = build_manifest(src)
    work = tmp_path / "work"
    sink = Sink(m, work, durable=True)
    copy(src, m, sink)
    assert _sync_records(work) == 0
    sink.close()

    often = tmp_path / "often"
    sink = Sink(m, often, durable=True, sync_interval_s=0.0)  # every piece of input
    copy(src, m, sink)
    assert _sync_records(often) >= 10
    sink.close()

    by_amount = tmp_path / "by-amount"
    sink = Sink(m, by_amount, durable=True, sync_bytes=16 << 20)
    copy(src, m, sink)
    assert _sync_records(by_amount) == 2
    sink.finish(tmp_path / "dest")
    assert tree_digest(tmp_path / "dest") == m.digest()


def test_the_digest_a_work_dirs_journal_is_for_is_read_without_following_links(
    tmp_path: Path, setup: tuple[Path, Path, list[bytes]]
) -> None:
    """What a restarted target names when it asks the source for its manifest again."""
    src, manifest_file, frames = setup
    m = build_manifest(src)
    work = tmp_path / "work"
    assert journal_digest(work) == ""  # no work dir yet: a fresh transfer
    _receive_then_kill(manifest_file, work, frames[:3])
    assert journal_digest(work) == m.digest()
    journal = work / JOURNAL_NAME
    good = journal.read_bytes()
    cases = _journal_cases(journal, "ab" * 32)
    for case, data in cases.items():
        journal.write_bytes(data)
        expected = "ab" * 32 if case == "another manifest" else m.digest()
        assert journal_digest(work) == (
            "" if case in ("empty", "torn header", "bad magic") else expected
        ), case
    journal.unlink()
    assert journal_digest(work) == ""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(good)
    journal.symlink_to(elsewhere)  # a planted link is not read through
    assert journal_digest(work) == ""
    linked = tmp_path / "linked-work"
    linked.symlink_to(work)
    journal.unlink()
    journal.write_bytes(good)
    assert journal_digest(linked) == ""
    assert journal_digest(work) == m.digest()
