"""Receiving into a directory that already exists, file by file: a project pushed again,
``mlsm outputs get -o DIR`` resumed on a person's machine.

An :class:`InPlaceSink` brings ``dest`` up to a manifest without a second copy of the tree:

- a file of ``dest`` whose size and sha256 already match the manifest's is kept (its mode
  and mtime set to the manifest's when they differ); a :class:`~mlsm.bulk.hashing.HashCache`
  saves re-reading unchanged files;
- every other file is received into the private work dir (``<index>.part``, see
  :mod:`mlsm.bulk._receiver` for receiving, verifying and the journal) and, once verified,
  renamed over its place in ``dest``: a reader of ``dest`` sees the old file or the new
  one, never a mix;
- a missing directory is made (0700 until :meth:`InPlaceSink.finish` gives it its mode);
  a file, link or other non-directory where the manifest has a directory is removed (never
  followed) first;
- symlinks are made by :meth:`InPlaceSink.finish` (a temp name, renamed over), which then
  sets directory modes and mtimes and removes the work dir.

Nothing in ``dest`` that the manifest does not name is touched. A directory in the way of a
file or link is removed when it is empty and otherwise refused
(:class:`~mlsm.errors.DestinationExists`): a person's files are never deleted behind their
back. Files already renamed into place stay there after :meth:`InPlaceSink.abort` (they
are complete and verified); the work dir goes.

``dest`` is walked by directory descriptor (``O_NOFOLLOW`` at every level: a path given as
a string is not followed at its last component either, so resolve it first where a person
names a link on purpose). ``work`` must be on ``dest``'s file system; it may be inside
``dest`` (``DIR/.mlsm-get-...``) as long as the manifest has no entry of that name.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat

from mlsm.errors import DestinationExists, SourceChanged, TransferFailed, UnsafeTree

from ._receiver import MAX_ATTEMPTS, SYNC_BYTES, SYNC_INTERVAL_S, Receiver, remove_entry
from .fstree import DirFds, remove_tree
from .hashing import FileKey, HashCache, sha256_fd
from .journal import JournalState, Record
from .manifest import Entry, Manifest, show_path
from .sink import set_dir_attrs, utime_link

__all__ = ["InPlaceSink"]

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class InPlaceSink(Receiver):
    """Brings the existing directory ``dest`` up to ``manifest`` (see the module docstring)."""

    def __init__(
        self,
        manifest: Manifest,
        dest: int | str | os.PathLike[str],
        work: str | os.PathLike[str],
        *,
        owner: tuple[int, int] | None = None,
        cache: HashCache | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        durable: bool = True,
        sync_bytes: int = SYNC_BYTES,
        sync_interval_s: float = SYNC_INTERVAL_S,
    ) -> None:
        self.dest = DirFds(dest)
        self.cache = cache
        self.kept = 0  # files that were already right
        try:
            super().__init__(
                manifest,
                work,
                owner=owner,
                max_attempts=max_attempts,
                durable=durable,
                sync_bytes=sync_bytes,
                sync_interval_s=sync_interval_s,
            )
        except BaseException:
            self.dest.close()
            raise

    # ------------------------------------------------------------ hooks
    def prepare(self, fresh: bool, state: JournalState) -> None:
        self._check_work_name()
        for entry in self.entries:
            if entry.kind == "d":
                self._ensure_dir(entry)
        for index, entry in enumerate(self.entries):
            if entry.kind != "f":
                continue
            if index in state.gone:
                self.classify(index, state, held=False)
            elif index in state.done and self._already(index, hash_it=False):
                self.classify(index, state, held=True)
            elif self._already(index, hash_it=True):
                self.journal.add(Record.DONE, index)
                self.kept += 1
                self._stats.files_done += 1
                self._stats.bytes_done += entry.size
            else:
                state.done.discard(index)
                self.classify(index, state, held=False)

    def part_location(self, index: int) -> tuple[int, str]:
        return self.work_fd, f"{index}.part"

    def commit(self, index: int, fd: int) -> None:
        entry = self.entries[index]
        os.fchmod(fd, entry.mode & 0o777)
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        parent, _, name = entry.path.rpartition("/")
        dir_fd = self.dest.get(parent)
        self._clear_dir(entry, dir_fd, name)
        os.rename(f"{index}.part", name, src_dir_fd=self.work_fd, dst_dir_fd=dir_fd)

    # ------------------------------------------------------------ what is there
    def _check_work_name(self) -> None:
        try:
            here = os.stat(self.work.parent)
        except OSError:
            return
        top = os.fstat(self.dest.root_fd)
        if (here.st_dev, here.st_ino) != (top.st_dev, top.st_ino):
            return
        if any(e.path == self.work.name for e in self.entries):
            raise UnsafeTree(
                f"the work dir {self.work.name!r} inside the destination has the name of an "
                "entry of the tree; choose another"
            )

    def _ensure_dir(self, entry: Entry) -> None:
        parent, _, name = entry.path.rpartition("/")
        dir_fd = self.dest.get(parent)
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            return
        if st is not None:
            os.unlink(name, dir_fd=dir_fd)  # a file or link where a directory goes
        os.mkdir(name, 0o700, dir_fd=dir_fd)
        if self.owner is not None:
            os.chown(name, *self.owner, dir_fd=dir_fd, follow_symlinks=False)

    def _already(self, index: int, *, hash_it: bool) -> bool:
        """Whether ``dest`` holds file ``index`` already (size, and with ``hash_it`` the
        sha256 too); a kept file gets the manifest's mode and mtime."""
        entry = self.entries[index]
        parent, _, name = entry.path.rpartition("/")
        try:
            fd = os.open(name, _READ, dir_fd=self.dest.get(parent))
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size:
                return False
            if hash_it:
                key = FileKey.of(entry.path, st)
                sha = self.cache.get(key) if self.cache is not None else None
                if sha is None:
                    sha, _ = sha256_fd(fd)
                    if self.cache is not None:
                        self.cache.put(key, sha)
                if sha != entry.sha256:
                    return False
            _fix_attrs(fd, st, entry)
            return True
        finally:
            os.close(fd)

    def _clear_dir(self, entry: Entry, dir_fd: int, name: str) -> None:
        """Make room for a file or link: an empty directory in the way goes, a full one
        is refused."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            return
        try:
            os.rmdir(name, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise DestinationExists(
                    f"{show_path(entry.path)} is a directory with files in it where the "
                    "transfer has a file or link; move it away first",
                    details={"path": entry.path},
                ) from None
            raise

    # ------------------------------------------------------------ finishing
    def finish(self, *, allow_gone: bool = False) -> None:
        """Make the links, set the directories' modes and mtimes, remove the work dir."""
        if self._closed:
            raise TransferFailed("finish() on a closed sink")
        if self._pending:
            raise TransferFailed(
                f"the transfer is not complete: {len(self._pending)} file(s) still missing"
            )
        if self.gone and not allow_gone:
            paths = [self.entries[i].path for i in self.gone]
            raise SourceChanged(
                f"{len(paths)} file(s) changed at the source during the transfer: "
                + ", ".join(show_path(p) for p in paths[:5]),
                details={"paths": paths[:100]},
            )
        self.close_parts()
        for entry in self.entries:
            if entry.kind == "l":
                self._link(entry)
        set_dir_attrs(self.dest, self.entries)
        if self.durable:
            self.journal.sync(self.work_fd)
        self.close()
        remove_tree(self.work)

    def _link(self, entry: Entry) -> None:
        parent, _, name = entry.path.rpartition("/")
        dir_fd = self.dest.get(parent)
        try:
            if os.readlink(name, dir_fd=dir_fd) == entry.target:
                return
        except OSError:
            pass
        self._clear_dir(entry, dir_fd, name)
        temp = f".mlsm-link-{secrets.token_hex(6)}"
        os.symlink(entry.target, temp, dir_fd=dir_fd)
        try:
            if self.owner is not None:
                os.chown(temp, *self.owner, dir_fd=dir_fd, follow_symlinks=False)
            utime_link(dir_fd, temp, entry.mtime_ns)
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            remove_entry(dir_fd, temp)
            raise

    def abort(self) -> None:
        """Remove the work dir; files already in place stay (they are verified)."""
        self.close()
        remove_tree(self.work)

    def close(self) -> None:
        self.dest.close()
        super().close()


def _fix_attrs(fd: int, st: os.stat_result, entry: Entry) -> None:
    """Best effort: a kept file someone else owns keeps its attributes."""
    try:
        if stat.S_IMODE(st.st_mode) != entry.mode & 0o777:
            os.fchmod(fd, entry.mode & 0o777)
        if st.st_mtime_ns != entry.mtime_ns:
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
    except PermissionError:
        pass
