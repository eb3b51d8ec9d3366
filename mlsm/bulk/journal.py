"""The sink's journal: what a receiver verified, so a new receiver over the same work dir
resumes exactly where the last one stopped (a process killed, a network cut, a reboot).

One file in the sink's private work dir: a 56-byte header (magic, the manifest's digest,
the boot id) and then 16-byte records ``(kind, entry index, value)``:

- ``DONE i``: file *i* was verified (its sha256 matched) and is complete on disk;
- ``FAILED i n``: file *i* failed verification for the *n*-th time;
- ``GONE i``: the source said file *i* changed or vanished;
- ``SYNC``: every byte and record before this one is on stable storage.

Partial files are not journaled: their bytes are on disk, and a resuming sink re-hashes
them (the file's length is how far it got). Records are appended with ``write`` as they
happen (:meth:`Journal.flush` at the end of each piece of input), which is enough to
survive the death of the process: the kernel has them. Surviving a power loss needs data
on disk *before* the records that claim it, so :meth:`Journal.sync` flushes the file system
(``syncfs``), then appends ``SYNC`` and fsyncs the journal. A reader that finds it runs
on another boot than the one that wrote (the boot id differs) trusts only the records up
to the last ``SYNC``; on the same boot it trusts them all. Where the boot id cannot be
read (not Linux) every boot counts as the same, and the final sha256 check still keeps a
damaged file out.

A torn last record (the process died mid-``write``) is ignored. A journal that is not
this transfer's (cut short before its header was whole, another manifest's, not a journal,
records of no known kind) raises :class:`JournalUnusable`: its records are never trusted,
and the receiver starts the transfer over in that work dir.
"""

from __future__ import annotations

import enum
import os
import struct
import uuid
from dataclasses import dataclass, field

from mlsm.errors import TransferFailed

from .fstree import sync_fs

__all__ = [
    "JOURNAL_NAME",
    "Journal",
    "JournalState",
    "JournalUnusable",
    "Record",
    "journal_digest",
]

JOURNAL_NAME = "journal"
_MAGIC = b"MLSMJNL1"
_HEADER = struct.Struct("<8s32s16s")
_RECORD = struct.Struct("<BxxxIQ")
_BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


class JournalUnusable(TransferFailed):
    """The work dir's journal cannot be trusted (damaged, or another transfer's)."""


class Record(enum.IntEnum):
    DONE = 1
    FAILED = 2
    GONE = 3
    SYNC = 4


def boot_id() -> bytes:
    """This boot's id (16 bytes), or 16 zero bytes where it cannot be read."""
    try:
        with open(_BOOT_ID_FILE) as f:
            return uuid.UUID(f.read().strip()).bytes
    except (OSError, ValueError):
        return bytes(16)


@dataclass
class JournalState:
    """What a journal says, as trusted by the reader (see the module docstring)."""

    done: set[int] = field(default_factory=set)
    failures: dict[int, int] = field(default_factory=dict)
    gone: set[int] = field(default_factory=set)
    rebooted: bool = False  # written on another boot: only synced records were kept


class Journal:
    """An open journal; records go to a buffer until :meth:`flush`."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()

    @classmethod
    def create(cls, dir_fd: int, digest: str) -> Journal:
        """A new journal in ``dir_fd`` for the manifest whose digest is ``digest``."""
        fd = os.open(JOURNAL_NAME, _FLAGS | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd)
        os.write(fd, _HEADER.pack(_MAGIC, bytes.fromhex(digest), boot_id()))
        return cls(fd)

    @classmethod
    def open(cls, dir_fd: int, digest: str) -> tuple[Journal, JournalState]:
        """Open the journal in ``dir_fd`` (which must be for ``digest``) and read it."""
        try:
            fd = os.open(JOURNAL_NAME, _FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            raise TransferFailed("the work dir holds no journal: not a transfer's") from None
        try:
            data = _read_all(fd)
            state = _parse(data, digest)
            if state.rebooted:
                _rewrite(fd, digest, state)
            else:
                whole = _HEADER.size + (len(data) - _HEADER.size) // _RECORD.size * _RECORD.size
                if whole != len(data):
                    os.ftruncate(fd, whole)  # drop a torn record before appending
            os.lseek(fd, 0, os.SEEK_END)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd), state

    def add(self, kind: Record, index: int = 0, value: int = 0) -> None:
        self._buf += _RECORD.pack(kind, index, value)

    def flush(self) -> None:
        """Hand the buffered records to the kernel (they survive this process's death)."""
        if not self._buf:
            return
        data = bytes(self._buf)
        self._buf.clear()
        pos = 0
        while pos < len(data):
            pos += os.write(self._fd, data[pos:])

    def sync(self, data_fd: int) -> None:
        """Make every byte written so far durable, then say so with a ``SYNC`` record."""
        self.flush()
        sync_fs(data_fd)
        self.add(Record.SYNC)
        self.flush()
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _read_all(fd: int) -> bytes:
    parts = []
    while chunk := os.read(fd, 1 << 20):
        parts.append(chunk)
    return b"".join(parts)


def journal_digest(work: str | os.PathLike[str]) -> str:
    """The digest of the manifest the journal in work dir ``work`` is for; "" when there
    is none (no work dir, no journal, not an mlsm journal, a link on the way). A hint for
    asking the source again for that manifest: the journal itself is checked against the
    manifest the receiver is given (:meth:`Journal.open`)."""
    try:
        dir_fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        fd = os.open(JOURNAL_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return ""
    finally:
        os.close(dir_fd)
    try:
        head = os.pread(fd, _HEADER.size, 0)
    except OSError:
        return ""
    finally:
        os.close(fd)
    if len(head) < _HEADER.size:
        return ""
    magic, manifest, _boot = _HEADER.unpack(head)
    return manifest.hex() if magic == _MAGIC else ""


def _rewrite(fd: int, digest: str, state: JournalState) -> None:
    """After a reboot: keep only what was trusted, under this boot's id, so a later reader
    on this boot does not trust records the last boot never made durable. (A crash in the
    middle leaves fewer records: less is trusted, nothing wrong is.)"""
    out = bytearray(_HEADER.pack(_MAGIC, bytes.fromhex(digest), boot_id()))
    for index in sorted(state.done):
        out += _RECORD.pack(Record.DONE, index, 0)
    for index, count in sorted(state.failures.items()):
        out += _RECORD.pack(Record.FAILED, index, count)
    for index in sorted(state.gone):
        out += _RECORD.pack(Record.GONE, index, 0)
    out += _RECORD.pack(Record.SYNC, 0, 0)
    os.ftruncate(fd, 0)
    view = memoryview(out)
    pos = 0
    while pos < len(view):
        pos += os.pwrite(fd, view[pos:], pos)
    os.fsync(fd)


def _parse(data: bytes, digest: str) -> JournalState:
    if len(data) < _HEADER.size:
        raise JournalUnusable("the work dir's journal is damaged (no header)")
    magic, manifest, boot = _HEADER.unpack_from(data, 0)
    if magic != _MAGIC:
        raise JournalUnusable("the work dir's journal is not an mlsm journal")
    if manifest != bytes.fromhex(digest):
        raise JournalUnusable("the work dir belongs to a transfer of another manifest")
    now = boot_id()
    rebooted = boot != now and boot != bytes(16) and now != bytes(16)
    records = [
        _RECORD.unpack_from(data, off)
        for off in range(_HEADER.size, len(data) - _RECORD.size + 1, _RECORD.size)
    ]
    known = {int(k) for k in Record}
    if any(r[0] not in known for r in records):
        raise JournalUnusable("the work dir's journal is damaged (records of no known kind)")
    if rebooted:
        last_sync = max((i for i, r in enumerate(records) if r[0] == Record.SYNC), default=-1)
        kept = records[: last_sync + 1]
        records = kept + [r for r in records[last_sync + 1 :] if r[0] != Record.DONE]
    state = JournalState(rebooted=rebooted)
    for kind, index, value in records:
        if kind == Record.DONE:
            state.done.add(index)
        elif kind == Record.FAILED:
            state.failures[index] = max(state.failures.get(index, 0), value)
            state.done.discard(index)
        elif kind == Record.GONE:
            state.gone.add(index)
    return state
