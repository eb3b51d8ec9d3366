"""Serving a want: the frames of a manifest's files, read from a tree or a content store.

:class:`Source` answers a :class:`~mlsm.bulk.want.Want` with a frame stream
(:mod:`mlsm.bulk.frames`) that ends in END, as ``bytes`` chunks of about 1 MiB
(:meth:`Source.chunks`, lazily: a block is read when the chunk before it was taken) or as
lists of them (:meth:`Source.batches`, for an async sender that runs the source in a
thread: one hop per ~1 MiB list, not per chunk). A large file's block is a chunk of its
own, exactly as ``pread`` returned it (never copied); its 20-byte header travels with the
chunk before it.

From a tree (:meth:`Source.from_tree`) the agent may be root and the tree someone else's,
so every entry is opened relative to its parent directory's descriptor
(:class:`~mlsm.bulk.fstree.DirFds`: ``O_NOFOLLOW`` at every level; ``O_NONBLOCK`` so a FIFO
swapped in never blocks the open): a link is never followed, and what is opened must be a
regular file of the manifest's size (and mtime, when the manifest has one). Anything else
(vanished, replaced by a link, a directory or a FIFO, grown, shrunk, touched, also while
it was being read) is answered with a GONE frame for that entry, and the rest of the want
is still served. A file that cannot be read for another reason (permissions) gets an
ERROR frame naming it. Files are read 1 MiB at a time with ``pread``, so memory is one
block per chunk in flight, whatever the file's size.

**Hashes to come.** An entry without a sha256 (a manifest made with hashes to come, see
:mod:`mlsm.bulk.manifest`) is hashed while it is read, from its first byte (a want that
starts inside the file has the part before read and hashed, not sent), and its HASH frame
follows its last byte, unless the file changed while it was read (then GONE, as above).
A block is hashed in a helper thread while the caller sends it (the sha256 and the TLS
encryption of the sending thread use two cores, not one in turns).
:attr:`Source.on_hashed` hears of each such hash, so the caller can keep it, and
:class:`HashStates` keeps the running hash of a file sent in parts between its wants.

From a content store (:meth:`Source.from_store`) entry *i* is the blob named by its
sha256; a missing blob is GONE.

A Source is not thread-safe: give each thread (each response in flight) its own. It holds
a few directory descriptors until :meth:`close` (or the end of its ``with`` block).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .frames import CHUNK, FrameWriter
from .fstree import DirFds
from .hashing import BLOCK, HashingThread
from .manifest import Entry, Manifest, show_path
from .want import Want

if TYPE_CHECKING:
    from .cas import Store

__all__ = ["Gone", "HashStates", "Source"]

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# what opening an entry fails with when it is no longer what the manifest says
_GONE_ERRNOS = (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.EISDIR)


class Gone(Exception):
    """The entry is not (any more) what the manifest describes."""


def _changed(st: os.stat_result, entry: Entry) -> bool:
    return (
        not stat.S_ISREG(st.st_mode)
        or st.st_size != entry.size
        or (entry.mtime_ns != 0 and st.st_mtime_ns != entry.mtime_ns)
    )


class Source:
    """Frames for wants of one manifest (see the module docstring).

    ``opener(entry)`` returns a descriptor open for reading on the entry's bytes, or raises
    :class:`Gone` (or ``OSError``: reported as an ERROR frame).
    """

    def __init__(
        self,
        manifest: Manifest,
        opener: Callable[[Entry], int],
        *,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.manifest = manifest
        self._open = opener
        self._on_close = on_close
        self.bytes_sent = 0  # file bytes put into frames, over all responses
        #: Called with (entry, its fstat after the read, hex sha256, when the read began
        #: in ns) for each streamed file sent whole and unchanged (a hash cache fills).
        self.on_hashed: Callable[[Entry, os.stat_result, str, int], None] | None = None
        #: Where the running hash of a streamed file cut between wants (a large file is
        #: asked for in parts) is kept for the next want, under (hash_key, entry index).
        self.hash_states: HashStates | None = None
        self.hash_key = ""
        self._hashing = HashingThread()

    @classmethod
    def from_tree(cls, root: int | str | os.PathLike[str], manifest: Manifest) -> Source:
        """Serve ``manifest`` from the tree at ``root``: a directory descriptor (the
        caller's, left open) or a path (its last component is not followed either)."""
        fds = DirFds(root)

        def opener(entry: Entry) -> int:
            parent, _, name = entry.path.rpartition("/")
            try:
                fd = os.open(name, _OPEN_FLAGS, dir_fd=fds.get(parent))
            except OSError as exc:
                if exc.errno in _GONE_ERRNOS:
                    raise Gone from None
                raise
            try:
                if _changed(os.fstat(fd), entry):
                    raise Gone
            except BaseException:
                os.close(fd)
                raise
            return fd

        return cls(manifest, opener, on_close=fds.close)

    @classmethod
    def from_store(cls, store: Store, manifest: Manifest) -> Source:
        """Serve ``manifest``'s files from the blobs of ``store`` (by sha256)."""

        def opener(entry: Entry) -> int:
            fd = store.open_blob(entry.sha256)
            if fd is None:
                raise Gone
            return fd

        return cls(manifest, opener)

    def close(self) -> None:
        self._hashing.close()
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ serving
    def chunks(self, want: Want) -> Iterator[bytes]:
        """The response to ``want``: frame stream chunks in order, ending with END."""
        out: list[bytes] = []
        writer = FrameWriter(out.append)
        entries = self.manifest.entries
        for index, offset, length in want.items:
            if index >= len(entries) or entries[index].kind != "f":
                writer.error(index, f"entry {index} is not a file of this manifest")
                continue
            entry = entries[index]
            if offset > entry.size:
                writer.error(index, f"{show_path(entry.path)}: offset {offset} is past its end")
                continue
            for _ in self._file(writer, index, entry, offset, min(entry.size, offset + length)):
                yield from out
                out.clear()
        writer.end()
        yield from out

    def batches(self, want: Want, *, size: int = CHUNK) -> Iterator[list[bytes]]:
        """The response to ``want`` as lists of chunks of about ``size`` bytes each."""
        batch: list[bytes] = []
        n = 0
        for chunk in self.chunks(want):
            batch.append(chunk)
            n += len(chunk)
            if n >= size:
                yield batch
                batch = []
                n = 0
        if batch:
            yield batch

    def serve(self, want: Want, write: Callable[[bytes], object]) -> None:
        """Write the response to ``want`` through ``write`` (a socket's ``sendall``)."""
        for chunk in self.chunks(want):
            write(chunk)

    def _file(
        self, out: FrameWriter, index: int, entry: Entry, start: int, end: int
    ) -> Iterator[None]:
        """Frames of ``entry``'s bytes [start, end); yields after each block is written
        to ``out`` (so the caller can pass the chunks on before the next read). A file whose
        hash is to come (``sha256`` empty) is hashed from its first byte as it is read (a
        prefix not asked for is read and hashed first), and its HASH frame follows its
        last byte."""
        streamed = not entry.sha256
        if start == end and not (streamed and end == entry.size):
            return
        states = self.hash_states if streamed else None
        key = (self.hash_key, index)
        try:
            fd = self._open(entry)
        except Gone:
            out.gone(index)
            return
        except OSError as exc:
            out.error(index, f"{show_path(entry.path)}: {exc.strerror or exc}")
            return
        try:
            hashed_at = time.time_ns()
            hasher = hashlib.sha256() if streamed else None
            if hasher is not None and start:
                kept = states.take(key, start) if states is not None else None
                if kept is not None:  # the response before this one stopped at start
                    hasher = kept
                elif not _hash_prefix(fd, hasher, start):
                    out.gone(index)  # shrunk since it was opened
                    return
            pos = start
            while pos < end:
                data = os.pread(fd, min(BLOCK, end - pos), pos)
                if not data:  # shrunk since it was opened
                    out.gone(index)
                    return
                if hasher is not None:  # hashed in a thread while the caller sends it
                    self._hashing.wait()
                    self._hashing.update(hasher, memoryview(data))
                out.data(index, pos, data)
                pos += len(data)
                self.bytes_sent += len(data)
                yield None
            self._hashing.wait()
            if end < entry.size and states is not None and hasher is not None:
                states.put(key, end, hasher)  # the next want of this file goes on from here
            if end == entry.size:
                st = os.fstat(fd)
                if _changed(st, entry):
                    out.gone(index)  # written to while it was read: the bytes sent are void
                elif hasher is not None:
                    digest = hasher.digest()
                    out.hash(index, digest)
                    if self.on_hashed is not None:
                        self.on_hashed(entry, st, digest.hex(), hashed_at)
        except OSError as exc:
            out.error(index, f"{show_path(entry.path)}: {exc.strerror or exc}")
        finally:
            with contextlib.suppress(Exception):  # nothing of this file's hash is used
                self._hashing.wait()
            os.close(fd)


class HashStates:
    """Running sha256 of streamed files whose bytes were sent only in part (a large file
    comes in several wants), by (key, entry index) and the offset reached: the next want
    of the file goes on from it instead of hashing what was sent again (a want that starts
    elsewhere, or after this process restarted, hashes its file's start). Bounded to
    ``limit`` files, oldest dropped; shared by the threads serving one agent's responses."""

    def __init__(self, limit: int = 64) -> None:
        self._limit = limit
        self._states: OrderedDict[tuple[tuple[str, int], int], Any] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: tuple[str, int], offset: int) -> Any:
        with self._lock:
            return self._states.pop((key, offset), None)

    def put(self, key: tuple[str, int], offset: int, hasher: Any) -> None:
        with self._lock:
            self._states[(key, offset)] = hasher
            while len(self._states) > self._limit:
                self._states.popitem(last=False)


def _hash_prefix(fd: int, hasher: Any, length: int) -> bool:
    """Hash ``fd``'s first ``length`` bytes (a resumed file's, not sent again); False when
    the file holds fewer."""
    pos = 0
    while pos < length:
        data = os.pread(fd, min(BLOCK, length - pos), pos)
        if not data:
            return False
        hasher.update(data)
        pos += len(data)
    return True
