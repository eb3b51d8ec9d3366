"""mlsm.bulk.want: many small files batched into bounded requests, huge lists and large
files split, and hostile wants refused (at decode, or by the source against its
manifest) instead of served."""

from __future__ import annotations

import itertools
from pathlib import Path

import msgspec
import pytest

from mlsm.bulk import Flag, FrameReader, Want, batch_wants, build_manifest, decode_want, encode_want
from mlsm.bulk.want import MAX_WANT_ITEMS
from mlsm.errors import TransferFailed
from tests.unit.bulk.support import frames_for, write


def _ranges(wants: list[Want]) -> dict[int, list[tuple[int, int]]]:
    out: dict[int, list[tuple[int, int]]] = {}
    for w in wants:
        for index, offset, length in w.items:
            out.setdefault(index, []).append((offset, length))
    return out


def test_many_small_files_go_into_few_bounded_requests() -> None:
    missing = [(i, 0, 100) for i in range(10_000)]
    wants = list(batch_wants(missing, budget=64 << 10, max_items=1000))
    assert all(len(w.items) <= 1000 and w.total_bytes() <= 64 << 10 for w in wants)
    assert len(wants) == 16  # 655 files of 100 bytes fill 64 KiB; 10,000 / 655 -> 16
    assert [item for w in wants for item in w.items][:3] == [(0, 0, 100), (1, 0, 100), (2, 0, 100)]
    ranges = _ranges(wants)
    assert sorted(ranges) == list(range(10_000))
    for parts in ranges.values():  # a file cut at a budget's edge is continued, not lost
        assert parts[0][0] == 0 and sum(n for _, n in parts) == 100
        assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(parts))


def test_the_item_bound_holds_for_a_huge_list_and_empty_files_count() -> None:
    missing = [(i, 0, 0) for i in range(200_000)]
    wants = list(batch_wants(missing, max_items=10**9))
    assert all(len(w.items) <= MAX_WANT_ITEMS for w in wants)
    assert sum(len(w.items) for w in wants) == 200_000
    assert len(wants) == -(-200_000 // MAX_WANT_ITEMS)
    for w in wants:  # each is decodable by the other side
        assert decode_want(encode_want(w)) == w


def test_a_large_file_is_split_into_budget_sized_ranges_from_its_offset() -> None:
    wants = list(batch_wants([(0, 10, 1000), (1, 0, 5)], budget=300))
    assert [w.items for w in wants] == [
        [(0, 10, 300)],
        [(0, 310, 300)],
        [(0, 610, 300)],
        [(0, 910, 100), (1, 0, 5)],
    ]


@pytest.mark.parametrize(
    "items",
    [
        [(-1, 0, 10)],
        [(0, -5, 10)],
        [(0, 0, -1)],
        [(0xFFFFFFFF, 0, 1)],
        [(1 << 40, 0, 1)],
        [(0, 1 << 63, 1)],
        [(0, 0)],
        [("a", 0, 1)],
    ],
)
def test_hostile_wants_are_refused_at_decode(items: list[tuple[object, ...]]) -> None:
    data = msgspec.msgpack.encode({"items": items})
    with pytest.raises(TransferFailed, match="not a valid want"):
        decode_want(data)


def test_a_want_over_the_item_bound_and_garbage_are_refused() -> None:
    with pytest.raises(TransferFailed):
        decode_want(msgspec.msgpack.encode({"items": [[0, 0, 0]] * (MAX_WANT_ITEMS + 1)}))
    for junk in (b"", b"\xff\xfe", b"\x93\x01\x02\x03", msgspec.msgpack.encode([1, 2])):
        with pytest.raises(TransferFailed):
            decode_want(junk)


def test_the_source_answers_wants_outside_its_manifest_with_errors_not_bytes(
    tmp_path: Path,
) -> None:
    write(tmp_path / "t" / "a.txt", b"A" * 100)
    (tmp_path / "t" / "d").mkdir()
    m = build_manifest(tmp_path / "t")
    d_index = [e.path for e in m.entries].index("d")
    want = Want([(99, 0, 10), (d_index, 0, 10), (0, 101, 5), (0, 90, 1 << 40)])
    reader = FrameReader()
    frames = [f for c in frames_for(tmp_path / "t", m, want) for f in reader.feed(c)]
    kinds = [(f.index, f.flags, bytes(f.data)) for f in frames]
    assert kinds[0][:2] == (99, Flag.ERROR) and kinds[1][:2] == (d_index, Flag.ERROR)
    assert kinds[2][:2] == (0, Flag.ERROR) and b"past its end" in kinds[2][2]
    assert kinds[3] == (0, 0, b"A" * 10)  # a length past the end stops at the end
    assert kinds[4][1] == Flag.END and len(kinds) == 5
