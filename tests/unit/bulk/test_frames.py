"""mlsm.bulk.frames: a stream split anywhere decodes to the same frames; a stream that
breaks the format (bad header, oversized frame, unknown flags) is refused; control frames
come out whole."""

from __future__ import annotations

import pytest

from mlsm.bulk import Flag, FrameError, FrameReader, FrameWriter, encode_frame
from mlsm.bulk.frames import HEADER, MAX_CONTROL_BYTES, MAX_FRAME_BYTES, NO_INDEX, PASS_THROUGH


def _stream() -> tuple[bytes, list[tuple[int, int, int, bytes]]]:
    """A frame stream of every kind, and what it holds: (index, offset, flags, bytes)."""
    frames = [
        (0, 0, 0, b"hello"),
        (0, 5, 0, b""),  # an empty data frame
        (1, 0, 0, bytes(range(256)) * 3),
        (2, 0, int(Flag.GONE), b""),
        (3, 7, int(Flag.ERROR), "cannot read 'x' ✗".encode()),
        (1, 768, 0, b"tail"),
        (NO_INDEX, 0, int(Flag.ERROR), b"the whole response failed"),
        (NO_INDEX, 0, int(Flag.END), b""),
    ]
    return b"".join(encode_frame(i, o, d, f) for i, o, f, d in frames), frames


def _merge(pieces: list[tuple[int, int, int, bytes]]) -> list[tuple[int, int, int, bytes]]:
    """Data pieces joined back into frames (a data frame may come out in several pieces,
    each with its own offset; they must be contiguous)."""
    out: list[tuple[int, int, int, bytes]] = []
    for index, offset, flags, data in pieces:
        if out and flags == 0 and out[-1][2] == 0 and data:
            last = out[-1]
            if last[0] == index and last[1] + len(last[3]) == offset:
                out[-1] = (index, last[1], 0, last[3] + data)
                continue
        out.append((index, offset, flags, data))
    return out


def _decode(chunks: list[bytes]) -> list[tuple[int, int, int, bytes]]:
    reader = FrameReader()
    pieces = []
    for chunk in chunks:
        for f in reader.feed(chunk):
            pieces.append((f.index, f.offset, f.flags, bytes(f.data)))
    assert reader.at_boundary
    return pieces


def test_a_stream_split_at_every_byte_boundary_decodes_to_the_same_frames() -> None:
    stream, frames = _stream()
    whole = _decode([stream])
    assert whole == frames
    assert _merge(_decode([stream[i : i + 1] for i in range(len(stream))])) == _merge(frames)
    for cut in range(len(stream) + 1):  # every two-piece split
        assert _merge(_decode([stream[:cut], stream[cut:]])) == _merge(frames), cut
    for size in (2, 3, 7, 19, 20, 21, 64):
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        assert _merge(_decode(chunks)) == _merge(frames), size


def test_control_frames_come_out_whole_and_data_pieces_are_views_of_the_chunk() -> None:
    msg = "é" * 300
    stream = encode_frame(4, 0, msg.encode(), Flag.ERROR)
    reader = FrameReader()
    out = []
    for i in range(len(stream)):
        out += reader.feed(stream[i : i + 1])
    assert len(out) == 1 and out[0].flags == Flag.ERROR and out[0].message() == msg
    chunk = bytearray(encode_frame(9, 100, b"abcdef"))
    [piece] = FrameReader().feed(chunk)
    chunk[-6:] = b"ZZZZZZ"  # zero-copy: the view sees the chunk it came from
    assert bytes(piece.data) == b"ZZZZZZ" and piece.offset == 100


def test_a_stream_cut_mid_header_or_mid_frame_is_not_at_a_boundary() -> None:
    stream = encode_frame(0, 0, b"x" * 50) + encode_frame(NO_INDEX, 0, b"", Flag.END)
    for cut in range(1, len(stream)):
        reader = FrameReader()
        reader.feed(stream[:cut])
        assert reader.at_boundary == (cut in (HEADER.size + 50,)), cut


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (HEADER.pack(0, 0, 10, 16), "unknown flags"),
        (HEADER.pack(0, 0, 10, 0xFFFFFFFF), "unknown flags"),
        (HEADER.pack(0, 0, MAX_FRAME_BYTES + 1, 0), "bytes"),
        (HEADER.pack(0, 0, 0xFFFFFFFF, 0), "bytes"),
        (HEADER.pack(0, 0, MAX_CONTROL_BYTES + 1, Flag.ERROR), "bytes"),
        (HEADER.pack(0, 0, MAX_CONTROL_BYTES + 1, Flag.GONE), "bytes"),
        (HEADER.pack(0, (1 << 64) - 5, 10, 0), "largest offset"),
    ],
)
def test_bad_headers_are_refused_even_when_they_arrive_a_byte_at_a_time(
    header: bytes, why: str
) -> None:
    with pytest.raises(FrameError, match=why):
        FrameReader().feed(header)
    reader = FrameReader()
    with pytest.raises(FrameError, match=why):
        for i in range(len(header)):
            reader.feed(header[i : i + 1])


def test_an_oversized_frame_is_refused_before_its_bytes_are_buffered() -> None:
    reader = FrameReader(max_frame=1024, max_control=16)
    reader.feed(HEADER.pack(0, 0, 1024, 0))  # at the bound: fine
    with pytest.raises(FrameError):
        FrameReader(max_frame=1024).feed(HEADER.pack(0, 0, 1025, 0))
    with pytest.raises(FrameError):
        FrameReader(max_control=16).feed(HEADER.pack(0, 0, 17, Flag.ERROR))


def test_the_writer_coalesces_small_frames_and_passes_large_blocks_through() -> None:
    writes: list[bytes] = []
    w = FrameWriter(writes.append, chunk=1 << 12)
    for i in range(100):
        w.data(i, 0, b"s" * 10)
    big = b"B" * PASS_THROUGH
    w.data(200, 5, big)
    w.gone(7)
    w.error(8, "x" * (MAX_CONTROL_BYTES + 10))
    w.end()
    assert big in writes and writes[writes.index(big)] is big  # never copied
    assert len(writes) < 20
    frames = _merge(_decode(writes))
    assert frames[0] == (0, 0, 0, b"s" * 10) and frames[99] == (99, 0, 0, b"s" * 10)
    assert frames[100] == (200, 5, 0, big)
    assert frames[101] == (7, 0, int(Flag.GONE), b"")
    assert frames[102][2] == Flag.ERROR and len(frames[102][3]) == MAX_CONTROL_BYTES
    assert frames[103] == (NO_INDEX, 0, int(Flag.END), b"")
    with pytest.raises(ValueError):
        w.data(0, 0, b"x" * (MAX_FRAME_BYTES + 1))
