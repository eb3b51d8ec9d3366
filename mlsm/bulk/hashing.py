"""sha256 of files read in 1 MiB blocks, and a cache of file hashes between snapshots.

Every file that moves is named by the sha256 of its bytes (hex). :func:`sha256_fd` reads
through a descriptor into one reused 1 MiB buffer, so hashing a 100 GiB file costs no more
memory than a small one.

:class:`HashCache` keeps hashes between runs (the CLI between submits, an agent between
copies of a dataset it serves): a file whose (path, size, mtime_ns, inode, ctime_ns) are
unchanged is not read again, so a resubmit of a 20,000-file tree reads only what changed.
The ctime is in the key because a file can be rewritten with its old size and mtime put
back (``touch -d``, ``cp -p``, ``rsync -t``); the kernel sets the ctime on every such
change, and no one can set it back. A file modified within :data:`RACY_NS` of the moment
it was hashed is not cached ("racily clean", as git calls it): a second write in the same timestamp tick
would otherwise leave a stale hash behind an unchanged key. The cache is one small
MessagePack file per tree (the caller picks its path, e.g. by the tree's real path), written
atomically, mode 0600; one it cannot read is treated as empty (it is only a cache).

:class:`HashingThread` hashes a receiver's pieces beside their writing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

__all__ = [
    "BLOCK",
    "EMPTY_SHA256",
    "RACY_NS",
    "FileKey",
    "HashCache",
    "HashingThread",
    "sha256_fd",
]

BLOCK = 1 << 20  # bytes read (and sent) at a time
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
RACY_NS = 2_000_000_000  # a file changed this close to its hashing is hashed again next time
HASH_THREAD_MIN = 64 << 10  # pieces this large are hashed in a thread beside their writing
_CACHE_VERSION = 2  # 2: the key has the ctime


def sha256_fd(fd: int, *, start: int = 0, limit: int | None = None) -> tuple[str, int]:
    """(hex sha256, bytes read) of what ``fd`` holds from ``start`` to its end, or to
    ``limit`` bytes at most; reads 1 MiB blocks with ``preadv`` into one buffer."""
    h = hashlib.sha256()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    pos = start
    end = None if limit is None else start + limit
    while end is None or pos < end:
        want = BLOCK if end is None else min(BLOCK, end - pos)
        n = os.preadv(fd, [view[:want]], pos)
        if n <= 0:
            break
        h.update(view[:n])
        pos += n
    return h.hexdigest(), pos - start


class FileKey(NamedTuple):
    """What identifies one state of a file without reading it."""

    path: str  # relative to the tree's root, "/"-separated
    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int

    @classmethod
    def of(cls, path: str, st: os.stat_result) -> FileKey:
        return cls(path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


class _Stored(msgspec.Struct, array_like=True):
    version: int
    rows: list[tuple[str, int, int, int, int, str]]


class HashCache:
    """sha256 of files by :class:`FileKey`, kept between runs in one file.

    ``get`` and ``put`` are what :func:`mlsm.bulk.build.build_manifest` calls; ``save``
    keeps only the keys used since ``load`` (files gone or changed drop out), so the file
    stays the size of the tree.
    """

    def __init__(self) -> None:
        self._rows: dict[FileKey, str] = {}
        self._used: dict[FileKey, str] = {}
        self.hits = 0
        self.misses = 0

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> HashCache:
        """The cache stored at ``path``; an empty one when it is missing or unreadable."""
        cache = cls()
        try:
            data = Path(path).read_bytes()
            stored = msgspec.msgpack.decode(data, type=_Stored)
        except (OSError, msgspec.DecodeError):
            return cache
        if stored.version == _CACHE_VERSION:
            cache._rows = {FileKey(p, s, m, i, c): h for p, s, m, i, c, h in stored.rows}
        return cache

    def get(self, key: FileKey) -> str | None:
        sha = self._rows.get(key)
        if sha is None:
            self.misses += 1
            return None
        self.hits += 1
        self._used[key] = sha
        return sha

    def put(self, key: FileKey, sha256: str, *, hashed_at_ns: int | None = None) -> None:
        """Remember ``sha256`` for ``key`` unless the file was modified within
        :data:`RACY_NS` of ``hashed_at_ns`` (default: now; git's rule, by mtime)."""
        at = time.time_ns() if hashed_at_ns is None else hashed_at_ns
        if key.mtime_ns >= at - RACY_NS:
            return
        self._rows[key] = sha256
        self._used[key] = sha256

    def keep_all(self) -> None:
        """Keep every loaded key at the next :meth:`save` (a caller that adds hashes
        without walking the whole tree)."""
        self._used = {**self._rows, **self._used}

    def __len__(self) -> int:
        return len(self._rows)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the keys used since loading to ``path`` (atomically, mode 0600)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        rows = [(*k, h) for k, h in self._used.items()]
        data = msgspec.msgpack.encode(_Stored(_CACHE_VERSION, rows))
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with open(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


class HashingThread:
    """sha256 updates in one helper thread, beside the writing of the same bytes: a piece
    is handed to the thread, then written, so writing and hashing (both let go of the GIL
    for large buffers) use two cores and a piece costs the slower of the two, not their
    sum. Updates run in order. The pieces are views of the chunk being fed, so
    :meth:`wait` is called before ``feed`` returns (the caller may then reuse the chunk):
    nothing is copied, and memory is the chunk. Small pieces are hashed inline while
    nothing is queued (a hand-over costs more than hashing them)."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._queued: deque[Future[None]] = deque()

    def update(self, hasher: Any, data: memoryview) -> None:
        if not self._queued and len(data) < HASH_THREAD_MIN:
            hasher.update(data)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="mlsm-bulk-hash")
        self._queued.append(self._pool.submit(hasher.update, data))

    def wait(self) -> None:
        """Every update handed over so far is done (its error, if any, raised)."""
        while self._queued:
            self._queued.popleft().result()

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the error was raised to the feeder already
            self.wait()
        self._queued.clear()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
