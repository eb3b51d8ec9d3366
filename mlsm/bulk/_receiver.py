"""The receiving core that :class:`~mlsm.bulk.sink.Sink` and
:class:`~mlsm.bulk.inplace.InPlaceSink` share: frames in, files verified, journal kept.

Per file: bytes are written where they belong at the offset the file has reached (a frame
must start at or before it: bytes already held are skipped and counted as redundant, a
gap is a malformed stream), hashed as they come, and verified when the file reaches the
manifest's size, or, for a file whose hash the manifest left to come (a
:class:`~mlsm.bulk.sink.Sink` accepts such manifests: :attr:`Receiver.HASHES_LATER`),
when the HASH frame that follows its bytes comes (until then it is whole but pending: the
next want asks for its hash alone, ``(index, size, 0)``). A mismatch discards the file; it is wanted again from 0, and after
``max_attempts`` failures the transfer fails naming the file
(:class:`~mlsm.errors.TransferFailed`). GONE from the source drops the entry (the finish
decides whether that is acceptable). ERROR from the source fails the transfer with the
source's message.

A work dir belongs to one receiver at a time: it is created 0700 (or, when it exists, must
be a real directory owned by this user and closed to everyone else), and holds the
journal (:mod:`mlsm.bulk.journal`). A new receiver over an existing work dir resumes: what
the journal says was verified is kept (after a cheap check that it is still there), a
partial file is re-hashed from disk and continued from its length. A journal that cannot
be trusted (damaged, cut short, another manifest's) empties the work dir and the transfer
starts over; a work dir holding things but no journal is refused (it is not a
transfer's, and nothing in it is removed). Everything is created
relative to directory descriptors, with ``O_NOFOLLOW`` (and ``O_EXCL`` for new files), so
a link planted in the work dir is never followed; with ``owner`` each created entry is
chowned by descriptor.

Not thread-safe; one response at a time (the contract of :mod:`mlsm.bulk.want`).

This module is one piece: the frame handling, the partial files, verification and the
journal share one state (what is pending, held, done or gone), and every rule above is a
rule about that state.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mlsm.errors import TransferFailed, UnsafeTree

from .frames import Flag, Frame, FrameError, FrameReader
from .fstree import remove_at, start_writeback
from .hashing import BLOCK, HashingThread
from .journal import JOURNAL_NAME, Journal, JournalState, JournalUnusable, Record
from .manifest import Entry, Manifest, show_path, validate_manifest
from .want import WANT_BYTES, WANT_ITEMS, Want, batch_wants

MAX_ATTEMPTS = 3  # deliveries of one file before a mismatch fails the transfer
#: With ``durable``, a sync point (file system flushed, then a SYNC record) is made after
#: this many seconds of receiving or this many bytes, whichever comes first, and always
#: before the rename: a sync waits for the disk, so making one every few MiB held the
#: receive to the disk's pace in steps (and a reboot costs at most this much again).
SYNC_INTERVAL_S = 10.0
SYNC_BYTES = 1 << 30
#: Bytes of a file written between two requests to the kernel to start writing them out
#: (:func:`~mlsm.bulk.fstree.start_writeback`): the disk works while data still comes, so
#: the sync points (and the last one, before the rename) find little left to write.
WRITEBACK_BYTES = 8 << 20
_ERROR, _GONE, _HASH, _END = int(Flag.ERROR), int(Flag.GONE), int(Flag.HASH), int(Flag.END)
OPEN_PARTS = 8  # partial files kept open at once
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_EXISTING = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Progress:
    """Counters of a receiver (a snapshot from :meth:`Receiver.progress`)."""

    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0  # verified files plus what partial files hold
    bytes_received: int = 0  # file bytes accepted from frames, this receiver
    bytes_redundant: int = 0  # bytes in frames that were already held (re-sent)
    bytes_discarded: int = 0  # bytes thrown away: failed verification, GONE
    bytes_rehashed: int = 0  # partial bytes read back from disk on resume
    gone: int = 0


class _Part:
    """A file being received: descriptor (-1 while closed), length so far, running hash."""

    __slots__ = ("digest", "fd", "hasher", "ident", "received", "written_back")

    def __init__(self, fd: int, received: int, hasher: Any, ident: tuple[int, int]) -> None:
        self.fd = fd
        self.received = received
        self.hasher = hasher
        self.ident = ident
        self.written_back = received  # bytes handed to start_writeback (or adopted)
        self.digest: str | None = None  # a whole streamed file's hash, until its HASH comes


def open_work(work: Path) -> tuple[int, bool]:
    """(descriptor, created) of the private work dir ``work`` (see the module docstring)."""
    created = False
    try:
        os.mkdir(work, 0o700)
        created = True
    except FileExistsError:
        pass
    try:
        fd = os.open(work, _DIR)
    except OSError as exc:
        raise UnsafeTree(f"work dir {str(work)!r} is not a directory ({exc.strerror})") from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        os.close(fd)
        raise UnsafeTree(f"work dir {str(work)!r} is not private to this user (mode 0700)")
    if not created and not os.listdir(fd):
        created = True  # made empty by the caller (a temp dir of its own)
    return fd, created


class Receiver:
    """Base of the sinks; subclasses say where a file's bytes are written and how a
    verified file is put in place (see the module docstring)."""

    #: The manifest may leave files' hashes to come (each checked against its HASH frame).
    HASHES_LATER = False

    def __init__(
        self,
        manifest: Manifest,
        work: str | os.PathLike[str],
        *,
        owner: tuple[int, int] | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        durable: bool = True,
        sync_bytes: int = SYNC_BYTES,
        sync_interval_s: float = SYNC_INTERVAL_S,
    ) -> None:
        validate_manifest(manifest, hashes_later=self.HASHES_LATER)
        self.manifest = manifest
        self.entries: list[Entry] = manifest.entries
        self.work = Path(work)
        self.owner = owner
        self.max_attempts = max(1, max_attempts)
        self.durable = durable
        self.sync_bytes = sync_bytes
        self.sync_interval_s = sync_interval_s
        self._synced_at = time.monotonic()
        self.gone: list[int] = []  # entries the source said changed, in arrival order
        self._reader = FrameReader()
        self._hashing = HashingThread()
        self._parts: dict[int, _Part] = {}
        self._open: dict[int, None] = {}  # parts with an open descriptor, oldest first
        self._pending: dict[int, None] = {}  # files still wanted, in manifest order
        self._failures: dict[int, int] = {}
        self._mark = 0
        self._unsynced = 0
        self._stats = Progress()
        self._closed = False
        self.work_fd, fresh = open_work(self.work)
        try:
            digest = manifest.digest()
            state = JournalState()
            if not fresh:
                try:
                    self.journal, state = Journal.open(self.work_fd, digest)
                except JournalUnusable:  # never trusted: what the work dir holds goes
                    self._clear_work()
                    fresh = True
            if fresh:
                self.journal = Journal.create(self.work_fd, digest)
            self._failures = dict(state.failures)
            self._stats.files_total = sum(1 for e in self.entries if e.kind == "f")
            self._stats.bytes_total = manifest.total_bytes()
            self._fresh = fresh  # an empty work dir: no partial file to adopt
            self.prepare(fresh, state)
            self.journal.flush()
        except BaseException:
            self.close()
            raise

    def _clear_work(self) -> None:
        """Empty the work dir (never following a link): its journal was unusable."""
        for name in os.listdir(self.work_fd):
            remove_at(self.work_fd, name)

    # ------------------------------------------------------------ subclass hooks
    def prepare(self, fresh: bool, state: JournalState) -> None:
        """Make the skeleton; sort the files into done and pending (see the subclasses)."""
        raise NotImplementedError

    def part_location(self, index: int) -> tuple[int, str]:
        """(directory descriptor, name) where file ``index``'s bytes are written."""
        raise NotImplementedError

    def commit(self, index: int, fd: int) -> None:
        """File ``index`` (open as ``fd``) was verified: give it its mode and mtime and put
        it in place."""
        raise NotImplementedError

    # ------------------------------------------------------------ helpers for prepare
    def classify(self, index: int, state: JournalState, held: bool) -> None:
        """Put file ``index`` into done (journal says so and ``held``), gone, or pending
        (adopting a partial file from a previous receiver)."""
        entry = self.entries[index]
        if index in state.gone:
            self._gone_entry(index, journal=False)
        elif index in state.done and held:
            self._stats.files_done += 1
            self._stats.bytes_done += entry.size
        else:
            self._pending[index] = None
            if not self._fresh:
                self._adopt(index, state.rebooted)
            if entry.size == 0 and index in self._pending:  # nothing to ask a source for
                self._complete(index, self._parts.get(index) or self._begin(index))

    def _adopt(self, index: int, rebooted: bool) -> None:
        """Continue a partial file left by an earlier receiver: re-hash what it holds."""
        entry = self.entries[index]
        dir_fd, name = self.part_location(index)
        try:
            fd = os.open(name, _EXISTING, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        except OSError:  # a link, a FIFO, a directory: not ours
            remove_entry(dir_fd, name)
            return
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            self.chown(fd)  # its creator may have been killed before its chown
        partial_after_reboot = rebooted and st.st_size < entry.size
        if (
            not stat.S_ISREG(st.st_mode)
            or st.st_nlink != 1
            or st.st_size > entry.size
            or partial_after_reboot
        ):
            os.close(fd)
            remove_entry(dir_fd, name)
            return
        hasher = hashlib.sha256()
        buf = bytearray(BLOCK)
        view = memoryview(buf)
        pos = 0
        while pos < st.st_size:
            n = os.preadv(fd, [view[: min(BLOCK, st.st_size - pos)]], pos)
            if n <= 0:
                break
            hasher.update(view[:n])
            pos += n
        part = _Part(fd, pos, hasher, (st.st_dev, st.st_ino))
        self._parts[index] = part
        self._track_open(index)
        self._stats.bytes_rehashed += pos
        self._stats.bytes_done += pos
        if pos == entry.size:
            self._complete(index, part)

    def chown(self, fd: int) -> None:
        if self.owner is not None:
            os.fchown(fd, *self.owner)

    # ------------------------------------------------------------ the receiving API
    def next_want(self, *, budget: int = WANT_BYTES, max_items: int = WANT_ITEMS) -> Want | None:
        """What to ask for next (None: nothing is missing). Starts a new response: a frame
        half-read from the last one is forgotten."""
        self._reader = FrameReader()

        def missing() -> Any:
            for index in self._pending:
                part = self._parts.get(index)
                start = part.received if part is not None else 0
                yield index, start, self.entries[index].size - start

        return next(batch_wants(missing(), budget=budget, max_items=max_items), None)

    def feed(self, chunk: bytes | bytearray | memoryview) -> bool:
        """Take bytes of the current response; True once its END frame came (what follows
        END in the chunk is ignored)."""
        try:
            for frame in self._reader.feed(chunk):
                if frame.flags == 0:
                    self._data(frame)
                elif self._control(frame):
                    return True
            return False
        finally:
            self._hashing.wait()  # the pieces are views of ``chunk``: done with them here
            self.journal.flush()
            if self.durable and self._unsynced and self._sync_due():
                self.journal.sync(self.work_fd)
                self._unsynced = 0
                self._synced_at = time.monotonic()

    def _sync_due(self) -> bool:
        return (
            self._unsynced >= self.sync_bytes
            or time.monotonic() - self._synced_at >= self.sync_interval_s
        )

    def progress_mark(self) -> int:
        return self._mark

    def progress(self) -> Progress:
        return replace(self._stats)

    @property
    def complete(self) -> bool:
        """Every file is verified (or gone)."""
        return not self._pending

    # ------------------------------------------------------------ frames
    def _control(self, frame: Frame) -> bool:
        flags = frame.flags  # tested as plain ints: IntFlag operators cost a call each
        if flags & _ERROR:
            if frame.index < len(self.entries):
                what = show_path(self.entries[frame.index].path)
                raise TransferFailed(f"the source could not send {what}: {frame.message()}")
            raise TransferFailed(f"the source failed: {frame.message()}")
        if flags & _GONE:
            if frame.index >= len(self.entries):
                raise FrameError(f"malformed frame stream: GONE for entry {frame.index}")
            if frame.index in self._pending:
                self._gone_entry(frame.index, journal=True)
        if flags & _HASH:
            self._hash_came(frame.index, frame.data)
        return bool(flags & _END)

    def _hash_came(self, index: int, data: memoryview) -> None:
        """A streamed file's sha256, after its bytes: verify the file against it."""
        if index >= len(self.entries) or self.entries[index].kind != "f" or len(data) != 32:
            raise FrameError(f"malformed frame stream: a HASH frame for entry {index}")
        entry = self.entries[index]
        if index not in self._pending or entry.sha256:  # done, gone, or known from the start
            return
        part = self._parts.get(index)
        if part is None or part.digest is None:
            raise FrameError(
                f"malformed frame stream: the hash of {show_path(entry.path)} before its bytes"
            )
        self._verify(index, part, part.digest, bytes(data).hex())

    def _data(self, frame: Frame) -> None:
        index = frame.index
        if index >= len(self.entries) or self.entries[index].kind != "f":
            raise FrameError(f"malformed frame stream: data for entry {index}, not a file")
        data = frame.data
        if index not in self._pending:  # done, or gone: nothing more is needed
            self._stats.bytes_redundant += len(data)
            return
        entry = self.entries[index]
        part = self._parts.get(index)
        if part is None:
            part = self._begin(index)
        if frame.offset > part.received:
            raise FrameError(
                f"malformed frame stream: bytes of {show_path(entry.path)} at offset "
                f"{frame.offset}, but only {part.received} have come"
            )
        skip = part.received - frame.offset
        if skip >= len(data):
            self._stats.bytes_redundant += len(data)
            return
        if skip:
            data = data[skip:]
            self._stats.bytes_redundant += skip
        n = len(data)
        if part.received + n > entry.size:
            raise FrameError(
                f"malformed frame stream: more bytes of {show_path(entry.path)} than its "
                f"{entry.size}"
            )
        fd = self._fd_of(index, part)
        self._hashing.update(part.hasher, data)  # hashed while it is written
        pos = 0
        try:
            while pos < n:
                pos += os.pwrite(fd, data[pos:], part.received + pos)
        except BaseException:  # the hash has bytes the file lacks: start the file again
            with contextlib.suppress(Exception):
                self._hashing.wait()
            self._drop_part(index, remove=True)
            raise
        part.received += n
        if self.durable and part.received - part.written_back >= WRITEBACK_BYTES:
            start_writeback(fd, part.written_back, part.received - part.written_back)
            part.written_back = part.received
        self._unsynced += n
        self._mark += n
        self._stats.bytes_received += n
        self._stats.bytes_done += n
        if part.received == entry.size:
            self._complete(index, part)

    def _begin(self, index: int) -> _Part:
        dir_fd, name = self.part_location(index)
        try:
            fd = os.open(name, NEW_FILE, 0o600, dir_fd=dir_fd)
        except FileExistsError:  # left by a receiver that died before its journal: replace
            remove_entry(dir_fd, name)
            fd = os.open(name, NEW_FILE, 0o600, dir_fd=dir_fd)
        try:
            self.chown(fd)
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        part = _Part(fd, 0, hashlib.sha256(), (st.st_dev, st.st_ino))
        self._parts[index] = part
        self._track_open(index)
        return part

    def _track_open(self, index: int) -> None:
        self._open[index] = None
        while len(self._open) > OPEN_PARTS:
            oldest = next(iter(self._open))
            del self._open[oldest]
            part = self._parts[oldest]
            os.close(part.fd)
            part.fd = -1

    def _fd_of(self, index: int, part: _Part) -> int:
        if part.fd >= 0:
            self._open.pop(index, None)
            self._open[index] = None
            return part.fd
        dir_fd, name = self.part_location(index)
        try:
            fd = os.open(name, _EXISTING, dir_fd=dir_fd)
        except OSError:
            fd = -1
        if fd < 0 or _ident(os.fstat(fd)) != part.ident:
            if fd >= 0:
                os.close(fd)
            raise UnsafeTree(
                f"{show_path(self.entries[index].path)} was replaced in the work dir while "
                "it was being received; refused"
            )
        part.fd = fd
        self._track_open(index)
        return fd

    def _drop_part(self, index: int, *, remove: bool) -> None:
        part = self._parts.pop(index, None)
        self._open.pop(index, None)
        if part is None:
            return
        if part.fd >= 0:
            os.close(part.fd)
        self._stats.bytes_done -= part.received
        if remove:
            dir_fd, name = self.part_location(index)
            remove_entry(dir_fd, name)

    def _complete(self, index: int, part: _Part) -> None:
        self._hashing.wait()
        got = part.hasher.hexdigest()
        expected = self.entries[index].sha256
        if not expected:  # streamed: verified when its HASH frame comes
            part.digest = got
            return
        self._verify(index, part, got, expected)

    def _verify(self, index: int, part: _Part, got: str, expected: str) -> None:
        entry = self.entries[index]
        if got != expected:
            self._drop_part(index, remove=True)
            count = self._failures.get(index, 0) + 1
            self._failures[index] = count
            self.journal.add(Record.FAILED, index, count)
            self._stats.bytes_discarded += entry.size
            self._mark += 1
            if count >= self.max_attempts:
                self.journal.flush()
                raise TransferFailed(
                    f"{show_path(entry.path)} arrived damaged {count} times (sha256 {got}, "
                    f"expected {expected}); giving up",
                    details={"path": entry.path, "expected": expected, "got": got},
                )
            return
        fd = self._fd_of(index, part)
        self.commit(index, fd)
        self._parts.pop(index)
        self._open.pop(index, None)
        os.close(fd)
        del self._pending[index]
        self.journal.add(Record.DONE, index)
        self._stats.files_done += 1
        self._mark += 1

    def _gone_entry(self, index: int, *, journal: bool) -> None:
        self._pending.pop(index, None)
        if index in self._parts:
            self._stats.bytes_discarded += self._parts[index].received
            self._drop_part(index, remove=True)
        self.gone.append(index)
        self._stats.gone += 1
        self._mark += 1
        if journal:
            self.journal.add(Record.GONE, index)

    # ------------------------------------------------------------ closing
    def close_parts(self) -> None:
        for index in list(self._open):
            part = self._parts[index]
            if part.fd >= 0:
                os.close(part.fd)
                part.fd = -1
        self._open.clear()

    def close(self) -> None:
        """Release descriptors and leave the work dir as it is (a later receiver resumes)."""
        if self._closed:
            return
        self._closed = True
        self._hashing.close()
        self.close_parts()
        journal = getattr(self, "journal", None)
        if journal is not None:
            journal.flush()
            journal.close()
        if self.work_fd >= 0:
            os.close(self.work_fd)
            self.work_fd = -1

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ident(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def remove_entry(dir_fd: int, name: str) -> None:
    """Remove whatever ``name`` is in ``dir_fd`` (a tree too), never following a link."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno not in (errno.EISDIR, errno.EPERM):
            raise
        remove_at(dir_fd, name)


__all__ = [
    "JOURNAL_NAME",
    "MAX_ATTEMPTS",
    "SYNC_BYTES",
    "SYNC_INTERVAL_S",
    "Progress",
    "Receiver",
    "open_work",
]
