"""The frame stream: file bytes by (entry index, offset), the one format every transfer speaks.

A frame is a fixed 20-byte little-endian header, then ``length`` bytes::

    u32 index   entry of the manifest (NO_INDEX: about the whole response)
    u64 offset  where the bytes go in that file
    u32 length  bytes that follow
    u32 flags   0 = file data; END, ERROR, GONE, HASH (below); other bits are refused

- data (flags 0): ``length`` bytes of entry ``index`` starting at ``offset``;
- ``END``: this response is complete (index NO_INDEX, no bytes);
- ``ERROR``: the bytes are a UTF-8 message about ``index``, or about the whole response
  when ``index == NO_INDEX``;
- ``GONE``: entry ``index`` changed or vanished at the source since the manifest was made;
- ``HASH``: the bytes are the 32-byte sha256 of entry ``index``'s whole file, sent right
  after its last byte when the manifest left that hash to come (a *streamed* file: the
  source hashed it while it sent it). Only such entries get one, and only receivers that
  asked for such a manifest ever see one (an older reader refuses the flag).

:class:`FrameReader` takes the stream in chunks split anywhere (an async body, a socket)
and returns :class:`Frame` s. File data is handed on *as it arrives*: a data frame whose
bytes span several chunks comes out as several pieces (each a :class:`Frame` with its own
offset), every piece a zero-copy ``memoryview`` of the chunk it came in, so nothing is
buffered and memory stays bounded whatever the frame size. Control frames (END, ERROR,
GONE, HASH) come out whole, their bytes bounded by :data:`MAX_CONTROL_BYTES`. A stream that
breaks the format raises :class:`FrameError`.

:class:`FrameWriter` builds a stream for a ``write`` callable: small frames are coalesced
into writes of about :data:`CHUNK` bytes, and a large data block goes through as its own
write, never copied.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass

from mlsm.errors import TransferFailed

__all__ = [
    "CHUNK",
    "HASH_BYTES",
    "HEADER",
    "HEADER_SIZE",
    "MAX_CONTROL_BYTES",
    "MAX_FRAME_BYTES",
    "NO_INDEX",
    "PASS_THROUGH",
    "Flag",
    "Frame",
    "FrameError",
    "FrameReader",
    "FrameWriter",
    "encode_frame",
]

HEADER = struct.Struct("<IQII")
HEADER_SIZE = HEADER.size  # 20
NO_INDEX = 0xFFFFFFFF
CHUNK = 1 << 20  # bytes per coalesced write
PASS_THROUGH = 64 << 10  # data blocks at least this large are written on their own
MAX_FRAME_BYTES = 16 << 20  # bytes in one data frame
MAX_CONTROL_BYTES = 64 << 10  # bytes of an ERROR message


class Flag(enum.IntFlag):
    END = 1
    ERROR = 2
    GONE = 4
    HASH = 8


_KNOWN_FLAGS = int(Flag.END | Flag.ERROR | Flag.GONE | Flag.HASH)
HASH_BYTES = 32  # a HASH frame's bytes: a raw sha256


class FrameError(TransferFailed):
    """The byte stream is not a valid frame stream (a bug or a hostile peer)."""


@dataclass(slots=True)
class Frame:
    """One frame, or one piece of a data frame (see the module docstring)."""

    index: int
    offset: int
    flags: int
    data: memoryview

    def message(self) -> str:
        """An ERROR frame's text."""
        return bytes(self.data).decode("utf-8", "replace")


def encode_frame(index: int, offset: int, data: bytes = b"", flags: int = 0) -> bytes:
    """One frame as bytes (header and data copied together: for small frames and tests)."""
    return HEADER.pack(index, offset, len(data), flags) + data


_EMPTY = memoryview(b"")


class FrameReader:
    """Incremental decoder: :meth:`feed` chunks split anywhere, get frames back.

    The data views point into the chunks fed: a caller must not change a chunk (a reused
    ``bytearray``) before it has used the frames that came out of it.
    """

    def __init__(
        self, *, max_frame: int = MAX_FRAME_BYTES, max_control: int = MAX_CONTROL_BYTES
    ) -> None:
        self.max_frame = max_frame
        self.max_control = max_control
        self._head = bytearray()  # a header split across chunks
        self._index = 0
        self._offset = 0
        self._flags = 0
        self._left = 0  # bytes of the current frame still to come
        self._in_frame = False
        self._control = bytearray()

    @property
    def at_boundary(self) -> bool:
        """No frame is partly read (a stream may end here)."""
        return not self._in_frame and not self._head

    def _start(self, index: int, offset: int, length: int, flags: int, out: list[Frame]) -> None:
        if flags & ~_KNOWN_FLAGS:
            raise FrameError(f"malformed frame stream: unknown flags {flags:#x}")
        limit = self.max_control if flags else self.max_frame
        if length > limit:
            raise FrameError(f"malformed frame stream: a frame of {length} bytes (at most {limit})")
        if offset + length >= 1 << 64:
            raise FrameError("malformed frame stream: a frame past the largest offset")
        if length == 0:
            out.append(Frame(index, offset, flags, _EMPTY))
            return
        self._index, self._offset, self._flags, self._left = index, offset, flags, length
        self._in_frame = True

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[Frame]:
        """Decode what ``chunk`` completes; return the frames (and data pieces) in order."""
        view = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        out: list[Frame] = []
        pos = 0
        end = len(view)
        unpack = HEADER.unpack_from
        while pos < end:
            if not self._in_frame:
                if self._head or end - pos < HEADER_SIZE:
                    need = HEADER_SIZE - len(self._head)
                    self._head += view[pos : pos + need]
                    pos += min(need, end - pos)
                    if len(self._head) < HEADER_SIZE:
                        break
                    index, offset, length, flags = unpack(self._head)
                    self._head.clear()
                else:
                    index, offset, length, flags = unpack(view, pos)
                    pos += HEADER_SIZE
                self._start(index, offset, length, flags, out)
                continue
            take = min(self._left, end - pos)
            piece = view[pos : pos + take]
            pos += take
            self._left -= take
            if self._flags:  # control frames come out whole
                self._control += piece
                if not self._left:
                    data = memoryview(bytes(self._control))
                    self._control.clear()
                    out.append(Frame(self._index, self._offset, self._flags, data))
                    self._in_frame = False
                continue
            out.append(Frame(self._index, self._offset, 0, piece))
            self._offset += take
            if not self._left:
                self._in_frame = False
        return out


class FrameWriter:
    """Writes frames through ``write``, coalescing small ones into ~:data:`CHUNK` writes.

    Call :meth:`flush` (or :meth:`end`, which flushes) when the response is done; until
    then up to a chunk of small frames may wait in the buffer.
    """

    def __init__(self, write: Callable[[bytes], object], *, chunk: int = CHUNK) -> None:
        self._write = write
        self._chunk = chunk
        self._buf = bytearray()

    def data(self, index: int, offset: int, data: bytes | memoryview) -> None:
        """A data frame; a block of :data:`PASS_THROUGH` bytes or more is passed to
        ``write`` as it is (``bytes`` untouched), after the buffer and its header."""
        n = len(data)
        if n > MAX_FRAME_BYTES:
            raise ValueError(f"a data frame of {n} bytes is over {MAX_FRAME_BYTES}")
        self._buf += HEADER.pack(index, offset, n, 0)
        if n >= PASS_THROUGH:
            self.flush()
            self._write(data if isinstance(data, bytes) else bytes(data))
            return
        self._buf += data
        if len(self._buf) >= self._chunk:
            self.flush()

    def control(self, index: int, flags: int, message: bytes = b"") -> None:
        self._buf += HEADER.pack(index, 0, len(message), flags)
        self._buf += message
        if len(self._buf) >= self._chunk:
            self.flush()

    def gone(self, index: int) -> None:
        self.control(index, Flag.GONE)

    def hash(self, index: int, digest: bytes) -> None:
        """A HASH frame: ``digest`` (raw sha256) of the whole file ``index``."""
        self.control(index, Flag.HASH, digest)

    def error(self, index: int, message: str) -> None:
        """An ERROR frame about ``index`` (:data:`NO_INDEX`: the whole response)."""
        text = message.encode("utf-8", "replace")[:MAX_CONTROL_BYTES]
        self.control(index, Flag.ERROR, text)

    def end(self) -> None:
        """The END frame, then flush."""
        self.control(NO_INDEX, Flag.END)
        self.flush()

    def flush(self) -> None:
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            self._write(data)
