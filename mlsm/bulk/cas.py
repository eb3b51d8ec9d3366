"""A content-addressed blob store on disk: the master's code store, each agent's node cache.

Blobs live at ``<root>/<aa>/<sha256>`` (``aa``: the hash's first two hex digits), named by
the sha256 of their bytes. The rules:

- **Verify on write.** A :class:`BlobWriter` hashes what it writes; a blob whose bytes do
  not hash to its name is refused (:class:`~mlsm.errors.TransferFailed`), never published.
- **Atomic publish.** A blob is written under ``<root>/tmp/`` and renamed into place, so a
  reader sees the whole blob or none.
- **Bounded.** The bytes of all blobs stay under ``max_bytes``: making room evicts the
  least recently used blobs (last use = written, found by :meth:`Store.has`, opened by
  :meth:`Store.open_blob`), except pinned ones. When only pinned blobs are left and the
  new one does not fit, :class:`~mlsm.errors.StoreFull`.
- **Pins.** :meth:`Store.pin` marks blobs an owner (a job, a snapshot being uploaded) still
  needs, whether they are present yet or not; :meth:`Store.unpin` drops all of that
  owner's pins. Pin *before* asking :meth:`Store.has`, so nothing found present is evicted
  before it is used.
- **Bookkeeping** is a small SQLite index (``<root>/index.sqlite``, stdlib ``sqlite3``):
  size, a logical last-use clock, pins. An owner's pins are one row (its hashes packed,
  32 bytes each): pinning a 2,000-file snapshot writes one row, not 2,000, and only
  eviction (rare: the store is full) needs the union of all pins. A blob is published
  (rename + row) and evicted (row + unlink) inside one write transaction, so two
  processes or threads sharing a store never publish and evict the same blob at once. One ``Store`` object may be shared by
  threads (a lock guards its connection). A blob file the index does not know (a crash
  between rename and commit) is simply written again by whoever needs it; a row whose file
  is gone is dropped when it is opened. A store whose index is new adopts the blobs
  already on disk whose bytes hash to their names (:meth:`Store.rebuild_index`).

:class:`~mlsm.bulk.storesink.StoreSink` fills a store from a frame stream;
:meth:`mlsm.bulk.source.Source.from_store` serves blobs.

Over 400 lines, as one piece: the index, the writer and the eviction rules are one
transactional whole (publish and evict under one write transaction); split, each part
would have to restate when the others may run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mlsm.errors import StoreFull, TransferFailed

from .hashing import sha256_fd

__all__ = ["PUBLISH_BATCH_BLOBS", "PUBLISH_BATCH_BYTES", "BlobWriter", "Store", "StoreUsage"]

INDEX_NAME = "index.sqlite"
TMP_DIR = "tmp"
STALE_TMP_S = 24 * 3600  # a temp blob this old is a crashed writer's
BUSY_TIMEOUT_S = 30.0  # waiting for another process's write transaction
_QUERY_CHUNK = 500  # hashes per IN (...) query
PUBLISH_BATCH_BLOBS = 256  # verified blobs a StoreSink publishes in one transaction
PUBLISH_BATCH_BYTES = 64 << 20  # ... or this many of their bytes, whichever comes first
_SHA = re.compile(r"^[0-9a-f]{64}$")
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    sha TEXT PRIMARY KEY, size INTEGER NOT NULL, last_used INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS blobs_lru ON blobs (last_used);
CREATE TABLE IF NOT EXISTS pinsets (owner TEXT PRIMARY KEY, shas BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 0),
    bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO totals (id, bytes) SELECT 0, COALESCE(SUM(size), 0) FROM blobs;
CREATE TRIGGER IF NOT EXISTS blobs_in AFTER INSERT ON blobs
    BEGIN UPDATE totals SET bytes = bytes + new.size WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS blobs_out AFTER DELETE ON blobs
    BEGIN UPDATE totals SET bytes = bytes - old.size WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS blobs_resize AFTER UPDATE OF size ON blobs
    BEGIN UPDATE totals SET bytes = bytes - old.size + new.size WHERE id = 0; END;
"""


def _check_sha(sha: str) -> str:
    if not _SHA.match(sha):
        raise ValueError(f"not a sha256 in hex: {sha[:80]!r}")
    return sha


@dataclass(frozen=True)
class StoreUsage:
    blobs: int
    bytes: int
    pinned_bytes: int
    max_bytes: int


class Store:
    """The blob store at ``root`` holding at most ``max_bytes`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str], max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.root / TMP_DIR).mkdir(mode=0o700, exist_ok=True)
        new = not (self.root / INDEX_NAME).exists()
        self._lock = threading.RLock()
        self._evicted: list[str] = []  # blobs this object dropped since drain_evicted()
        self._db = sqlite3.connect(
            self.root / INDEX_NAME,
            timeout=BUSY_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # the totals row and its triggers at once
            for statement in _SCHEMA.split(";\n"):
                if statement.strip():
                    self._db.execute(statement)
            _fold_old_pins(self._db)
            self._db.execute("COMMIT")
        if new:
            self.rebuild_index()
        self._sweep_tmp()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ paths, transactions
    def blob_path(self, sha: str) -> Path:
        return self.root / sha[:2] / _check_sha(sha)

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``: other writers wait)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _next_clock(self, db: sqlite3.Connection) -> int:
        row = db.execute("SELECT COALESCE(MAX(last_used), 0) FROM blobs").fetchone()
        return int(row[0]) + 1

    # ------------------------------------------------------------ reading
    def has(
        self, hashes: Iterable[str], *, touch: bool = True, pin: str | None = None
    ) -> list[str]:
        """The hashes of ``hashes`` the store lacks (in order, each once); those it holds
        count as used now (unless ``touch`` is False: a second look in one request).
        ``pin`` names an owner to pin all of them for first, in the same transaction
        (pin before looking: nothing found present is evicted before it is used)."""
        wanted = list(dict.fromkeys(_check_sha(h) for h in hashes))
        present: set[str] = set()
        with contextlib.ExitStack() as stack:
            if pin is not None or touch:
                db = stack.enter_context(self._write())
            else:
                stack.enter_context(self._lock)
                db = self._db
            if pin is not None:
                self._pin_in(db, pin, _pack(wanted))
            for i in range(0, len(wanted), _QUERY_CHUNK):
                part = wanted[i : i + _QUERY_CHUNK]
                marks = ",".join("?" * len(part))
                rows = db.execute(f"SELECT sha FROM blobs WHERE sha IN ({marks})", part)  # noqa: S608
                present.update(r[0] for r in rows)
            if present and touch:
                self._touch_in(db, list(present))
        return [h for h in wanted if h not in present]

    def _touch_in(self, db: sqlite3.Connection, hashes: list[str]) -> None:
        """Mark ``hashes`` used now: one statement per chunk, not one per blob (blobs used
        together share one tick of the clock)."""
        clock = self._next_clock(db)
        for i in range(0, len(hashes), _QUERY_CHUNK):
            part = hashes[i : i + _QUERY_CHUNK]
            marks = ",".join("?" * len(part))
            db.execute(
                f"UPDATE blobs SET last_used = ? WHERE sha IN ({marks})",  # noqa: S608
                [clock, *part],
            )

    def contains(self, sha: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM blobs WHERE sha = ?", (_check_sha(sha),))
            return row.fetchone() is not None

    def open_blob(self, sha: str) -> int | None:
        """A read-only descriptor of blob ``sha`` (the caller closes it), or None when the
        store lacks it. Counts as a use. A blob file that is not a regular file of the size
        it was published with (cut short by a power loss, say) is dropped: None."""
        path = self.blob_path(sha)
        with self._lock:
            row = self._db.execute("SELECT size FROM blobs WHERE sha = ?", (sha,)).fetchone()
            try:
                fd = os.open(path, _READ)
            except FileNotFoundError:
                fd = -1
            if fd >= 0 and row is not None:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_size != int(row[0]):
                    os.close(fd)
                    fd = -1
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
            if fd < 0 or row is None:
                if fd >= 0:
                    os.close(fd)
                with self._write() as db:
                    db.execute("DELETE FROM blobs WHERE sha = ?", (sha,))
                    self._evicted.append(sha)
                return None
            with self._write() as db:
                db.execute(
                    "UPDATE blobs SET last_used = ? WHERE sha = ?", (self._next_clock(db), sha)
                )
            return fd

    def read_blob(self, sha: str) -> bytes | None:
        """A small blob's bytes (tests, manifests stored as blobs)."""
        fd = self.open_blob(sha)
        if fd is None:
            return None
        with open(fd, "rb") as f:
            return f.read()

    def usage(self) -> StoreUsage:
        with self._lock:
            (blobs,) = self._db.execute("SELECT COUNT(*) FROM blobs").fetchone()
            total = self._total(self._db)
            pinned = 0
            held = sorted(_all_pinned(self._db))
            for i in range(0, len(held), _QUERY_CHUNK):
                part = held[i : i + _QUERY_CHUNK]
                marks = ",".join("?" * len(part))
                (size,) = self._db.execute(
                    f"SELECT COALESCE(SUM(size), 0) FROM blobs WHERE sha IN ({marks})",  # noqa: S608
                    part,
                ).fetchone()
                pinned += int(size)
        return StoreUsage(int(blobs), int(total), int(pinned), self.max_bytes)

    # ------------------------------------------------------------ pins
    def pin(self, owner: str, hashes: Iterable[str]) -> None:
        """Add ``hashes`` to what ``owner`` holds (present yet or not)."""
        new = _pack(hashes)
        with self._write() as db:
            self._pin_in(db, owner, new)

    @staticmethod
    def _pin_in(db: sqlite3.Connection, owner: str, new: bytes) -> None:
        row = db.execute("SELECT shas FROM pinsets WHERE owner = ?", (owner,)).fetchone()
        if row is not None:
            held = set(_unpack_raw(row[0]))
            extra = [d for d in _unpack_raw(new) if d not in held]
            if not extra:
                return
            new = bytes(row[0]) + b"".join(dict.fromkeys(extra))
        db.execute(
            "INSERT INTO pinsets (owner, shas) VALUES (?, ?)"
            " ON CONFLICT (owner) DO UPDATE SET shas = excluded.shas",
            (owner, new),
        )

    def unpin(self, owner: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM pinsets WHERE owner = ?", (owner,))

    def pin_owners(self) -> set[str]:
        """Every owner that holds pins (to drop those of owners that are gone)."""
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT owner FROM pinsets")}

    def drain_evicted(self) -> list[str]:
        """The blobs this ``Store`` object evicted or dropped since the last call (for a
        caller that keeps facts about blobs, such as who sent them, to forget them)."""
        with self._lock:
            out, self._evicted = self._evicted, []
        return out

    def pinned(self, owner: str) -> set[str]:
        with self._lock:
            row = self._db.execute("SELECT shas FROM pinsets WHERE owner = ?", (owner,)).fetchone()
        return {d.hex() for d in _unpack_raw(row[0])} if row is not None else set()

    # ------------------------------------------------------------ writing
    def writer(self, sha: str, size: int | None = None) -> BlobWriter:
        """A writer for blob ``sha``; with ``size``, room is made first (StoreFull now,
        not after the bytes came)."""
        _check_sha(sha)
        if size is not None:
            self.make_room({sha: size})
        return BlobWriter(self, sha)

    def make_room(self, blobs: dict[str, int]) -> None:
        """Evict what must go so that ``blobs`` (sha -> size) all fit, in one transaction;
        StoreFull now, before any of their bytes are sent."""
        with self._write() as db:
            self._make_room(db, blobs)

    def put_stream(self, sha: str, chunks: Iterable[bytes]) -> bool:
        """Store the blob whose bytes ``chunks`` are; False (nothing read) if it is there."""
        if not self.has([sha]):
            return False
        with self.writer(sha) as w:
            for chunk in chunks:
                w.write(chunk)
            w.commit()
        return True

    def put_bytes(self, sha: str, data: bytes) -> bool:
        return self.put_stream(sha, [data])

    @staticmethod
    def _total(db: sqlite3.Connection) -> int:
        """The bytes of all blobs (kept by triggers: no scan of the index per blob)."""
        row = db.execute("SELECT bytes FROM totals WHERE id = 0").fetchone()
        return int(row[0]) if row is not None else 0

    def _make_room(self, db: sqlite3.Connection, blobs: dict[str, int]) -> None:
        """Evict least recently used unpinned blobs until ``blobs`` (sha -> size) fit
        (one that is there already needs only its growth: a second writer of one blob
        replaces it, and must not evict others or find the store full)."""
        size = sum(blobs.values())
        for one in blobs.values():
            if one > self.max_bytes:
                raise StoreFull(
                    f"a blob of {one} bytes is larger than the store ({self.max_bytes})"
                )
        excess = self._total(db) + size - self.max_bytes
        if excess <= 0:
            return
        keep = list(blobs)
        for i in range(0, len(keep), _QUERY_CHUNK):
            part = keep[i : i + _QUERY_CHUNK]
            marks = ",".join("?" * len(part))
            (held,) = db.execute(
                f"SELECT COALESCE(SUM(size), 0) FROM blobs WHERE sha IN ({marks})",  # noqa: S608
                part,
            ).fetchone()
            excess -= int(held)
        if excess <= 0:
            return
        held = _all_pinned(db)
        victims = db.execute("SELECT sha, size FROM blobs ORDER BY last_used, rowid").fetchall()
        for sha, vsize in victims:
            if excess <= 0:
                break
            if sha in blobs or sha in held:
                continue
            db.execute("DELETE FROM blobs WHERE sha = ?", (sha,))
            self._evicted.append(sha)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.blob_path(sha))
            excess -= int(vsize)
        if excess > 0:
            raise StoreFull(
                f"the store at {self.root} is full of pinned blobs ({self.max_bytes} bytes); "
                f"{size} more do not fit"
            )

    def publish_verified(self, blobs: list[tuple[Path, str, int]]) -> None:
        """Publish verified blobs ((temp file, sha, size), from :meth:`BlobWriter.verify`)
        in one transaction: room for all of them, each renamed into place, one row each.
        On StoreFull nothing is published and the temp files are removed."""
        if not blobs:
            return
        try:
            with self._write() as db:
                self._make_room(db, {sha: size for _, sha, size in blobs})
                clock = self._next_clock(db)
                rows = []
                for tmp, sha, size in blobs:
                    target = self.blob_path(sha)
                    if not target.parent.is_dir():
                        target.parent.mkdir(mode=0o700, exist_ok=True)
                    os.replace(tmp, target)
                    rows.append((sha, size, clock))
                db.executemany(
                    "INSERT INTO blobs (sha, size, last_used) VALUES (?, ?, ?) ON CONFLICT (sha)"
                    " DO UPDATE SET size = excluded.size, last_used = excluded.last_used",
                    rows,
                )
        except BaseException:
            for tmp, _, _ in blobs:
                tmp.unlink(missing_ok=True)
            raise

    def evict(self, sha: str) -> bool:
        """Remove blob ``sha`` unless it is pinned; True when it is gone."""
        with self._write() as db:
            if sha in _all_pinned(db):
                return False
            db.execute("DELETE FROM blobs WHERE sha = ?", (sha,))
            self._evicted.append(sha)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.blob_path(sha))
        return True

    # ------------------------------------------------------------ upkeep
    def rebuild_index(self) -> int:
        """Adopt the blob files on disk that the index lacks (size from the file, oldest
        use); return how many. Each is hashed first: a file whose bytes do not match its
        name (damaged, or a crash's leftover) is removed, never adopted."""
        with self._lock:
            known = {r[0] for r in self._db.execute("SELECT sha FROM blobs")}
        found: list[tuple[str, int]] = []
        for sub in sorted(self.root.iterdir()):
            if len(sub.name) != 2 or sub.is_symlink() or not sub.is_dir():
                continue
            for blob in sub.iterdir():
                name = blob.name
                if not (_SHA.match(name) and name.startswith(sub.name)) or name in known:
                    continue
                try:
                    fd = os.open(blob, _READ)
                except OSError:  # a link or something unreadable: not a blob
                    continue
                try:
                    st = os.fstat(fd)
                    ok = stat.S_ISREG(st.st_mode) and sha256_fd(fd)[0] == name
                finally:
                    os.close(fd)
                if ok:
                    found.append((name, st.st_size))
                else:
                    blob.unlink(missing_ok=True)
        with self._write() as db:
            db.executemany(
                "INSERT OR IGNORE INTO blobs (sha, size, last_used) VALUES (?, ?, 0)", found
            )
        return len(found)

    def _sweep_tmp(self) -> None:
        cutoff = time.time() - STALE_TMP_S
        for entry in (self.root / TMP_DIR).iterdir():
            with contextlib.suppress(FileNotFoundError):
                if entry.lstat().st_mtime < cutoff:
                    entry.unlink()


class BlobWriter:
    """Writes one blob: :meth:`write` in order, :meth:`commit` verifies and publishes; a
    writer left without commit (an exception, :meth:`abort`) leaves nothing behind."""

    def __init__(self, store: Store, sha: str) -> None:
        self.store = store
        self.sha = sha
        self.size = 0
        self._hasher = hashlib.sha256()
        self._tmp = store.root / TMP_DIR / f"{sha[:16]}-{secrets.token_hex(6)}.part"
        self._fd = os.open(self._tmp, _NEW, 0o600)

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            pos += os.write(self._fd, view[pos:])
        self._hasher.update(view)
        self.size += len(view)

    def commit(self) -> None:
        """Publish the blob; :class:`~mlsm.errors.TransferFailed` (and nothing published)
        when its bytes do not hash to its name."""
        self.store.publish_verified([self.verify()])

    def verify(self) -> tuple[Path, str, int]:
        """Check the bytes against the name and close the file: (temp file, sha, size)
        for :meth:`Store.publish_verified` (batched publishes); TransferFailed (and the
        temp file removed) when they do not match."""
        got = self._hasher.hexdigest()
        if got != self.sha:
            self.abort()
            raise TransferFailed(
                f"blob {self.sha} refused: its bytes hash to {got}",
                details={"expected": self.sha, "got": got},
            )
        os.close(self._fd)
        self._fd = -1
        return self._tmp, self.sha, self.size

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            self.abort()


def _pack(hashes: Iterable[str]) -> bytes:
    """Hex hashes as one value of 32-byte digests (each once, in order)."""
    return b"".join(dict.fromkeys(bytes.fromhex(_check_sha(h)) for h in hashes))


def _unpack_raw(packed: bytes) -> list[bytes]:
    return [packed[i : i + 32] for i in range(0, len(packed), 32)]


def _all_pinned(db: sqlite3.Connection) -> set[str]:
    """Every hash some owner holds (eviction and usage only)."""
    held: set[str] = set()
    for (packed,) in db.execute("SELECT shas FROM pinsets"):
        held.update(d.hex() for d in _unpack_raw(packed))
    return held


def _fold_old_pins(db: sqlite3.Connection) -> None:
    """An index made before pin sets kept one row per (owner, hash): fold those into
    pin sets and drop the old table (inside the opening transaction)."""
    old = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'pins'")
    if old.fetchone() is None:
        return
    owners: dict[str, list[str]] = {}
    for owner, sha in db.execute("SELECT owner, sha FROM pins ORDER BY rowid"):
        owners.setdefault(owner, []).append(sha)
    db.executemany(
        "INSERT OR REPLACE INTO pinsets (owner, shas) VALUES (?, ?)",
        [(owner, _pack(shas)) for owner, shas in owners.items()],
    )
    db.execute("DROP TABLE pins")
