"""Publishing a received tree before the disk has it, without trusting it after a crash.

A copy's bytes are verified (sha256) as they arrive; waiting for the disk before the tree
is renamed into place made a 1 GiB copy wait seconds more on a slow disk (a flush of the
whole file system, others' dirty data included), where ``cp`` and ``rsync`` leave the
writing to the kernel. A :class:`SettleBook` lets the receiver do the same safely:

1. before the rename, a *settle record* is written and made durable: the tree's path, this
   boot's id, and every file's path, size and sha256 (:meth:`SettleBook.publishing`);
2. the tree is renamed into place (no flush), and the copy is reported done;
3. in the background the file system is flushed (``syncfs``), then the record removed
   (:meth:`SettleBook.settle_later`).

An agent that starts and finds a record (:meth:`SettleBook.recover`):

- written on this boot (the agent was restarted, the machine was not): the kernel still
  holds every byte, so the flush is made again and the record removed;
- written on another boot (the machine went down before the flush was done): the tree is
  checked against the record, each file opened without following links and hashed; a
  tree that is not whole (a file missing, short, or of other bytes) is removed, so no
  damaged copy is ever listed, and the log says why. A whole tree stays.

A record is only written when the receiver knows every file's sha256 (otherwise it
flushes before the rename as before: :meth:`mlsm.bulk.Sink.finish`).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import queue
import stat
import threading
import time
from pathlib import Path

import msgspec

from mlsm.atomicfile import write_atomic

from .fstree import DirFds, open_dir, remove_tree, sync_fs
from .journal import boot_id

__all__ = ["SettleBook", "SettleRecord"]

log = logging.getLogger("mlsm.bulk.settle")

_serial = itertools.count()


class SettleRecord(msgspec.Struct, kw_only=True):
    dest: str  # the published tree (absolute)
    boot: str  # hex of the boot id it was published on
    files: list[tuple[str, int, str]]  # (path in the tree, size, sha256 hex)


class SettleBook:
    """Settle records in ``directory`` (an agent's ``<data dir>/bulk-settling``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._queue: queue.Queue[tuple[Path, Path]] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ publishing
    def publishing(self, dest: Path, files: list[tuple[str, int, str]]) -> Path:
        """Write ``dest``'s record durably (before its rename); the record's path."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        record = SettleRecord(dest=os.fspath(dest), boot=boot_id().hex(), files=files)
        path = self.directory / f"{time.time_ns()}-{os.getpid()}-{next(_serial)}.settle"
        write_atomic(path, msgspec.json.encode(record), durable=True)
        return path

    def settle(self, record: Path, dest: Path) -> None:
        """Flush ``dest``'s file system, then drop its record."""
        try:
            fd = open_dir(os.fspath(dest))
        except FileNotFoundError:
            pass  # removed meanwhile: nothing of it to flush
        else:
            try:
                sync_fs(fd)
            finally:
                os.close(fd)
        record.unlink(missing_ok=True)

    def settle_later(self, record: Path, dest: Path) -> None:
        """:meth:`settle` in the book's background thread (one flush at a time)."""
        self._queue.put((record, dest))
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="mlsm-settle", daemon=True)
                self._worker.start()

    def wait_settled(self, timeout: float) -> bool:
        """Whether every record handed to :meth:`settle_later` was settled in time."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def _work(self) -> None:
        while True:
            try:
                record, dest = self._queue.get(timeout=5.0)
            except queue.Empty:
                return
            try:
                self.settle(record, dest)
            except OSError as exc:  # the record stays: the next start settles it
                log.warning("could not flush %s to disk: %s", dest, exc)
            finally:
                self._queue.task_done()

    # ------------------------------------------------------------ after a restart
    def recover(self) -> list[str]:
        """Deal with the records an earlier run left (see the module docstring); one line
        for each tree checked after a reboot."""
        lines: list[str] = []
        if not self.directory.is_dir():
            return lines
        now = boot_id().hex()
        for path in sorted(self.directory.glob("*.settle")):
            try:
                record = msgspec.json.decode(path.read_bytes(), type=SettleRecord)
            except (OSError, msgspec.DecodeError, msgspec.ValidationError):
                path.unlink(missing_ok=True)  # torn before it was whole: its rename never ran
                continue
            dest = Path(record.dest)
            if record.boot == now or int(record.boot or "0", 16) == 0 or int(now, 16) == 0:
                self.settle(path, dest)
                continue
            why = damage(dest, record.files)
            if why is None:
                lines.append(f"{dest}: whole after the restart of the machine")
            elif why:
                remove_tree(dest)
                lines.append(f"{dest}: removed, not whole after the restart of the machine ({why})")
            path.unlink(missing_ok=True)
        return lines


def damage(dest: Path, files: list[tuple[str, int, str]]) -> str | None:
    """What is wrong with the tree at ``dest`` against ``files`` (None: it is whole; ""
    when there is no tree there at all). Nothing is followed through a link."""
    try:
        fds = DirFds(dest)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        return f"its root cannot be opened: {exc.strerror or exc}"
    try:
        for rel, size, sha256 in files:
            parent, _, name = rel.rpartition("/")
            try:
                fd = os.open(
                    name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fds.get(parent)
                )
            except OSError as exc:
                return f"{rel}: {exc.strerror or exc}"
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                    return f"{rel}: {st.st_size} bytes, not {size}"
                if hashlib.file_digest(fh, "sha256").hexdigest() != sha256:
                    return f"{rel}: other bytes than were received"
    finally:
        with contextlib.suppress(OSError):
            fds.close()
    return None
