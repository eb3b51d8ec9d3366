"""The dataset catalog of one node: scanning the roots, reporting deltas, digesting content.

What counts as a dataset: every entry directly under a root that is a directory or a
regular file and whose name is a valid dataset name (:func:`~.paths.validate_dataset_name`).
Skipped, and never reported: hidden entries (names starting with ``.``, which includes the
agent's own ``.mlsm-*`` temp and trash dirs), symlinks (never followed, so nothing outside
a root is ever counted), sockets/fifos/devices, and names the master could not safely show
or address (control characters, look-alike slashes ...); these are counted in
:attr:`DatasetScanner.skipped`, so an admin can be told why a folder is missing.

Within a dataset: ``size`` is the sum of regular files' sizes (``lstat``, symlinks are
neither followed nor counted), ``files`` counts regular files, ``modified`` is the latest
mtime of any directory or regular file in the tree, ``top`` the first 20 top-level names
in sorted order.

The scanner is meant to run in a worker thread (``asyncio.to_thread``). It walks with
:func:`agent.fsutil.walk` (a loop over directory descriptors: no recursion, no path
length limit, links never entered, so a tree of any depth scans), and every
``checkpoint_every`` entries it yields the GIL (``time.sleep(0)``) and checks its
``should_stop`` event, so a root with millions of files neither starves the agent's other
threads nor blocks its shutdown. Each scan re-walks every tree: caching by directory
mtimes would miss files that grow in place (appending does not touch the directory's
mtime), and re-walking costs about a second per few hundred thousand files
(``tests/bench/bench_dataset_scan.py`` prints the figures).
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from agent.fsutil import walk
from mlsm.wire.agent import DatasetEntry, DatasetReport

from .errors import DatasetCancelled, DatasetNotFoundError, DatasetPathError
from .paths import is_dataset_name

SAMPLE_TOP = 20  # top-level names sent per dataset
CHECKPOINT_EVERY = 1000  # entries between GIL yields / stop checks
HASH_BLOCK = 1 << 20  # bytes read at a time when hashing

_encode = msgspec.msgpack.Encoder().encode


class _Checkpoint:
    """Counts entries; every ``every`` of them yields the GIL and honours ``should_stop``."""

    __slots__ = ("count", "every", "should_stop")

    def __init__(self, every: int, should_stop: threading.Event | None) -> None:
        self.every = max(1, every)
        self.should_stop = should_stop
        self.count = 0

    def tick(self, n: int = 1) -> None:
        self.count += n
        if self.count >= self.every:
            self.count = 0
            time.sleep(0)  # let other threads take the GIL
            if self.should_stop is not None and self.should_stop.is_set():
                raise DatasetCancelled("stopped")


def _printable(name: str) -> str:
    """A name safe to show: undecodable bytes and control characters become '?'."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _walk_dir(top: str, cp: _Checkpoint) -> tuple[int, int, float, list[str], int]:
    """(size, files, latest mtime, sorted top-level sample, errors) of a directory tree."""
    size = 0
    files = 0
    errors = 0
    latest = os.lstat(top).st_mtime
    top_names: list[str] = []

    def count(_exc: OSError) -> None:  # vanished or unreadable: count, go on
        nonlocal errors
        errors += 1

    try:
        for w in walk(top, on_error=count):
            cp.tick()
            e = w.entry
            if w.depth == 1:
                top_names.append(e.name)
            try:
                if e.is_dir(follow_symlinks=False):
                    mtime = e.stat(follow_symlinks=False).st_mtime
                elif e.is_file(follow_symlinks=False):
                    st = e.stat(follow_symlinks=False)
                    size += st.st_size
                    files += 1
                    mtime = st.st_mtime
                else:  # symlink, socket, fifo, device: not counted
                    continue
            except OSError:
                errors += 1
                continue
            if mtime > latest:
                latest = mtime
    except OSError:  # the top went away or was moved mid-walk: what was seen stands
        errors += 1
    top_names.sort()
    return size, files, latest, [_printable(n) for n in top_names[:SAMPLE_TOP]], errors


def scan_entry(
    root: Path | str,
    name: str,
    *,
    checkpoint_every: int = CHECKPOINT_EVERY,
    should_stop: threading.Event | None = None,
) -> DatasetEntry:
    """Scan one dataset ``<root>/<name>`` (a directory or a regular file)."""
    root_s = os.path.abspath(root)
    path = os.path.join(root_s, name)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise DatasetNotFoundError(f"no dataset {name!r} in {root_s}") from None
    cp = _Checkpoint(checkpoint_every, should_stop)
    if stat.S_ISREG(st.st_mode):
        return DatasetEntry(
            root=root_s, name=name, path=path, size=st.st_size, files=1, modified=st.st_mtime
        )
    if not stat.S_ISDIR(st.st_mode):
        raise DatasetPathError(f"{path!r} is neither a directory nor a regular file")
    size, files, modified, top, _ = _walk_dir(path, cp)
    return DatasetEntry(
        root=root_s, name=name, path=path, size=size, files=files, modified=modified, top=top
    )


def catalog_digest(entries: Sequence[DatasetEntry]) -> str:
    """A stable digest of a whole catalog (order of ``entries`` does not matter)."""
    h = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e.path):
        h.update(_encode(entry))
    return "sha256:" + h.hexdigest()


class DatasetScanner:
    """Scans the dataset roots and reports what changed since the previous report.

    Not re-entrant: one scan at a time (a lock serialises callers). ``scan()`` returns
    a :class:`DatasetReport`: the first one, and any asked with ``full=True``, lists every
    dataset (``full=True``); later ones carry only new or changed entries (``upsert``) and
    the paths of vanished ones (``removed``). ``catalog_digest`` always covers the whole
    current catalog, so the master can compare it with its own and ask for a full report.
    """

    def __init__(
        self,
        roots: Sequence[Path | str],
        *,
        should_stop: threading.Event | None = None,
        checkpoint_every: int = CHECKPOINT_EVERY,
    ) -> None:
        self.roots = [Path(os.path.abspath(r)) for r in roots]
        self.should_stop = should_stop
        self.checkpoint_every = checkpoint_every
        self.skipped: list[str] = []  # paths left out by the last scan (bad names, symlinks)
        self.errors = 0  # unreadable entries met by the last scan
        self.last_duration = 0.0  # seconds the last scan took
        self._known: dict[str, DatasetEntry] = {}
        self._digests: dict[str, tuple[tuple[int, int, float], str]] = {}
        self._reported = False
        self._lock = threading.Lock()

    # -------------------------------------------------------------- public
    @property
    def catalog(self) -> list[DatasetEntry]:
        """The catalog as of the last scan, sorted by path."""
        return [self._known[p] for p in sorted(self._known)]

    @property
    def catalog_digest(self) -> str:
        """Digest of the catalog as of the last scan ("" before the first)."""
        return catalog_digest(list(self._known.values())) if self._reported else ""

    def note_digest(self, path: str, digest: str) -> None:
        """Remember a content digest computed on request; it is sent with the entry for as
        long as the entry's size, file count and mtime stay the same."""
        entry = self._known.get(path)
        if entry is not None:
            self._digests[path] = ((entry.size, entry.files, entry.modified), digest)

    def scan(self, full: bool = False) -> DatasetReport:
        """Walk every root; return the delta since the last report (or all of it)."""
        with self._lock:
            t0 = time.perf_counter()
            current = self._scan_all()
            full = full or not self._reported
            if full:
                upsert = [current[p] for p in sorted(current)]
                removed: list[str] = []
            else:
                upsert = [current[p] for p in sorted(current) if self._known.get(p) != current[p]]
                removed = sorted(p for p in self._known if p not in current)
            self._known = current
            self._digests = {p: v for p, v in self._digests.items() if p in current}
            self._reported = True
            self.last_duration = time.perf_counter() - t0
            return DatasetReport(
                full=full,
                upsert=upsert,
                removed=removed,
                catalog_digest=catalog_digest(list(current.values())),
            )

    # -------------------------------------------------------------- internals
    def _scan_all(self) -> dict[str, DatasetEntry]:
        cp = _Checkpoint(self.checkpoint_every, self.should_stop)
        current: dict[str, DatasetEntry] = {}
        skipped: list[str] = []
        errors = 0
        for root in self.roots:
            root_s = str(root)
            try:
                it = os.scandir(root_s)
            except OSError:  # root missing or unreadable: its datasets count as removed
                errors += 1
                continue
            with it:
                top_entries = sorted(it, key=lambda e: e.name)
            for e in top_entries:
                cp.tick()
                if e.name.startswith("."):
                    continue
                try:
                    is_dir = e.is_dir(follow_symlinks=False)
                    is_file = e.is_file(follow_symlinks=False)
                except OSError:
                    errors += 1
                    continue
                if not (is_dir or is_file) or not is_dataset_name(e.name):
                    skipped.append(e.path)
                    continue
                try:
                    entry = self._scan_one(root_s, e, is_dir, cp)
                except FileNotFoundError:  # vanished while scanning
                    continue
                except PermissionError:
                    errors += 1
                    continue
                errors += entry[1]
                current[entry[0].path] = entry[0]
        self.skipped = skipped
        self.errors = errors
        return current

    def _scan_one(
        self, root_s: str, e: os.DirEntry[str], is_dir: bool, cp: _Checkpoint
    ) -> tuple[DatasetEntry, int]:
        errors = 0
        if is_dir:
            size, files, modified, top, errors = _walk_dir(e.path, cp)
        else:
            st = e.stat(follow_symlinks=False)
            size, files, modified, top = st.st_size, 1, st.st_mtime, []
        digest = None
        known = self._digests.get(e.path)
        if known is not None and known[0] == (size, files, modified):
            digest = known[1]
        entry = DatasetEntry(
            root=root_s,
            name=e.name,
            path=e.path,
            size=size,
            files=files,
            modified=modified,
            digest=digest,
            top=top,
        )
        return entry, errors


# ------------------------------------------------------------------ content digest
def _sha256_file(
    path: str, buf: bytearray, cp: _Checkpoint | None, dir_fd: int | None = None
) -> str:
    h = hashlib.sha256()
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    with open(fd, "rb", buffering=0) as f:
        while True:
            n = f.readinto(view)
            if not n:
                break
            h.update(view[:n])
            if cp is not None:
                cp.tick()
    return h.hexdigest()


def manifest_digest(manifest: dict[str, str]) -> str:
    """``"sha256:<hex>"`` over a sorted ``relative path -> sha256`` manifest."""
    h = hashlib.sha256()
    for rel in sorted(manifest):
        h.update(rel.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
        h.update(manifest[rel].encode("ascii"))
        h.update(b"\n")
    return "sha256:" + h.hexdigest()


def digest(
    path: Path | str,
    *,
    should_stop: threading.Event | None = None,
    on_file: Callable[[str], None] | None = None,
) -> tuple[str, dict[str, str]]:
    """Content digest of a dataset, and its manifest (relative path -> sha256 hex).

    Regular files only; symlinks are neither followed nor listed; files are read in
    1 MiB blocks. A single-file dataset's manifest has one entry, its own name, so a
    file and a directory holding just that file have the same digest (a copy of a file
    dataset arrives as such a directory). Relative paths use ``/``.
    """
    p = os.fspath(path)
    st = os.lstat(p)
    buf = bytearray(HASH_BLOCK)
    cp = _Checkpoint(64, should_stop)
    manifest: dict[str, str] = {}
    if stat.S_ISREG(st.st_mode):
        manifest[os.path.basename(p)] = _sha256_file(p, buf, cp)
        return manifest_digest(manifest), manifest
    if not stat.S_ISDIR(st.st_mode):
        raise DatasetPathError(f"{p!r} is neither a directory nor a regular file")
    for w in walk(p):
        cp.tick()
        if w.entry.is_file(follow_symlinks=False):
            if on_file is not None:
                on_file(w.rel)
            manifest[w.rel] = _sha256_file(w.name, buf, cp, dir_fd=w.dir_fd)
    return manifest_digest(manifest), manifest
