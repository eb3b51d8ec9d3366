"""Receiving a tree that must appear whole or not at all: a dataset copy, a job's code.

A :class:`Sink` writes a manifest's tree into ``<work>/tree`` (``work`` being its private
work dir, see :mod:`mlsm.bulk._receiver` for how bytes are received, verified and
journaled), and :meth:`Sink.finish` puts it in place:

1. every file is verified (or gone, when the caller accepts that: ``allow_gone``);
2. the written tree is checked against the manifest without following anything (each
   directory still a directory, each file a regular file of its size), so an entry
   swapped in the work dir is refused instead of published;
3. symlinks are created, last (their targets were validated with the manifest: they stay
   inside the tree);
4. directories get their modes and mtimes (permission bits only: never setuid, setgid or
   sticky; files got theirs when verified);
5. with ``durable`` the file system is flushed (so the rename never publishes bytes a power
   loss could take back);
6. the tree is renamed to ``dest`` with ``RENAME_NOREPLACE``
   (:class:`~mlsm.errors.DestinationExists` when the name is taken: the sink stays as it
   was, so the caller may abort or finish elsewhere), and the work dir is removed.

:meth:`Sink.abort` removes the work dir and everything in it (iteratively, without
following links: :func:`mlsm.bulk.fstree.remove_tree`).

Directories are made 0700 when the sink starts (all of them: a 5,000-deep tree too), files
0600 while they are written; ``owner=(uid, gid)`` chowns each of them (and the tree's root)
by descriptor as it is created, so a tree written by root for a job belongs to the job's
account, and the job cannot reach it before the rename (the work dir is root's, 0700).
``dest`` must be on the work dir's file system.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from mlsm.errors import DestinationExists, SourceChanged, TransferFailed, UnsafeTree

from ._receiver import MAX_ATTEMPTS, SYNC_BYTES, SYNC_INTERVAL_S, Receiver, remove_entry
from .fstree import DirFds, open_dir, remove_tree, rename_noreplace, sync_fs
from .journal import JournalState
from .manifest import Entry, Manifest, show_path

__all__ = ["TREE_NAME", "Sink"]

TREE_NAME = "tree"  # the tree's name inside the work dir
DIR_ACCESS = stat.S_IRUSR | stat.S_IXUSR  # a directory whose mode keeps these is set early


def _mode(entry: Entry) -> int:
    """The mode a writer gives an entry: permission bits only."""
    return entry.mode & 0o777


class Sink(Receiver):
    """Receives ``manifest`` into ``work``; :meth:`finish` moves the tree to its place.

    ``root_mode`` is the mode of the tree's top directory (the manifest has no entry for
    it). See the module docstring and :class:`~mlsm.bulk._receiver.Receiver`.
    """

    HASHES_LATER = True

    def __init__(
        self,
        manifest: Manifest,
        work: str | os.PathLike[str],
        *,
        owner: tuple[int, int] | None = None,
        root_mode: int = 0o755,
        max_attempts: int = MAX_ATTEMPTS,
        durable: bool = True,
        sync_bytes: int = SYNC_BYTES,
        sync_interval_s: float = SYNC_INTERVAL_S,
    ) -> None:
        self.root_mode = root_mode & 0o777
        self.tree_fd = -1
        self._fds: DirFds | None = None
        super().__init__(
            manifest,
            work,
            owner=owner,
            max_attempts=max_attempts,
            durable=durable,
            sync_bytes=sync_bytes,
            sync_interval_s=sync_interval_s,
        )

    # ------------------------------------------------------------ hooks
    def prepare(self, fresh: bool, state: JournalState) -> None:
        if not fresh and not (state.done or state.failures or state.gone):
            # a receiver killed between its journal and its tree: nothing was received yet
            with contextlib.suppress(FileExistsError):
                os.mkdir(TREE_NAME, 0o700, dir_fd=self.work_fd)
        if fresh:
            os.mkdir(TREE_NAME, 0o700, dir_fd=self.work_fd)
        try:
            self.tree_fd = open_dir(TREE_NAME, self.work_fd)
        except FileNotFoundError:
            raise TransferFailed(
                f"the tree in {str(self.work)!r} is gone (finished or removed already)"
            ) from None
        self.chown(self.tree_fd)
        self._fds = DirFds(self.tree_fd)
        for entry in self.entries:
            if entry.kind == "d":
                self._mkdir(entry, fresh)
        for index, entry in enumerate(self.entries):
            if entry.kind == "f":
                self.classify(index, state, held=index in state.done and self._held(index))

    def part_location(self, index: int) -> tuple[int, str]:
        parent, _, name = self.entries[index].path.rpartition("/")
        assert self._fds is not None
        try:  # each level O_NOFOLLOW: a link swapped in for a directory stops here
            return self._fds.get(parent), name
        except OSError as exc:
            raise self._tampered(self.entries[index], exc.strerror) from None

    def commit(self, index: int, fd: int) -> None:
        entry = self.entries[index]
        os.fchmod(fd, _mode(entry))
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))

    # ------------------------------------------------------------ skeleton
    def _mkdir(self, entry: Entry, fresh: bool) -> None:
        parent, _, name = entry.path.rpartition("/")
        assert self._fds is not None
        dir_fd = self._fds.get(parent)
        try:
            os.mkdir(name, 0o700, dir_fd=dir_fd)
        except FileExistsError:
            if fresh:
                raise
            # made by the receiver before this one (it is opened O_NOFOLLOW later), which
            # may have been killed before its chown: chown again (never through a link)
        if self.owner is not None:
            os.chown(name, *self.owner, dir_fd=dir_fd, follow_symlinks=False)

    def _held(self, index: int) -> bool:
        """A file the journal says is done: is it still there, a regular file of its size?"""
        dir_fd, name = self.part_location(index)
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size == self.entries[index].size

    # ------------------------------------------------------------ finishing
    def finish(
        self,
        dest: str | os.PathLike[str],
        *,
        dest_dir_fd: int | None = None,
        allow_gone: bool = False,
    ) -> None:
        """Put the verified tree at ``dest`` (relative to ``dest_dir_fd`` when given); see
        the module docstring for the steps. ``allow_gone`` publishes the tree without the
        files the source said changed; otherwise they fail it
        (:class:`~mlsm.errors.SourceChanged`)."""
        if self._closed:
            raise TransferFailed("finish() on a closed sink")
        if self._pending:
            raise TransferFailed(
                f"the transfer is not complete: {len(self._pending)} file(s) still missing"
            )
        if self.gone and not allow_gone:
            paths = [self.entries[i].path for i in self.gone]
            shown = ", ".join(show_path(p) for p in paths[:5])
            more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
            raise SourceChanged(
                f"{len(paths)} file(s) changed at the source during the transfer: {shown}{more}",
                details={"paths": paths[:100]},
            )
        self.close_parts()
        gone = set(self.gone)
        self._check_shape(gone)
        self._make_links()
        self._set_dir_attrs()
        if self.durable:
            self.journal.sync(self.work_fd)
        try:
            rename_noreplace(TREE_NAME, dest, src_dir_fd=self.work_fd, dst_dir_fd=dest_dir_fd)
        except FileExistsError:
            raise DestinationExists(f"{os.fspath(dest)} already exists") from None
        os.fchmod(self.tree_fd, self.root_mode)
        if self.durable:
            sync_fs(self.tree_fd)
        self.close()
        remove_tree(self.work)

    def abort(self) -> None:
        """Remove the work dir and all it holds; the sink is closed."""
        self.close()
        remove_tree(self.work)

    def close(self) -> None:
        if self._fds is not None:
            self._fds.close()
            self._fds = None
        if self.tree_fd >= 0:
            os.close(self.tree_fd)
            self.tree_fd = -1
        super().close()

    def _check_shape(self, gone: set[int]) -> None:
        assert self._fds is not None
        for index, entry in enumerate(self.entries):
            if entry.kind == "l" or index in gone:
                continue
            parent, _, name = entry.path.rpartition("/")
            try:  # get() opens each directory O_NOFOLLOW: a link in the way fails here too
                st = os.stat(name, dir_fd=self._fds.get(parent), follow_symlinks=False)
            except OSError as exc:
                raise self._tampered(entry, exc.strerror) from None
            if entry.kind == "d":
                ok = stat.S_ISDIR(st.st_mode)
            else:
                ok = stat.S_ISREG(st.st_mode) and st.st_size == entry.size and st.st_nlink == 1
            if not ok:
                raise self._tampered(entry, "not what was written")

    def _tampered(self, entry: Entry, why: str | None) -> UnsafeTree:
        return UnsafeTree(
            f"{show_path(entry.path)} in the work dir {str(self.work)!r} was changed behind "
            f"the transfer ({why}); refused",
            details={"entries": [entry.path]},
        )

    def _make_links(self) -> None:
        assert self._fds is not None
        for entry in self.entries:
            if entry.kind != "l":
                continue
            parent, _, name = entry.path.rpartition("/")
            dir_fd = self._fds.get(parent)
            try:
                os.symlink(entry.target, name, dir_fd=dir_fd)
            except FileExistsError:  # made by a finish that was cut short
                remove_entry(dir_fd, name)
                os.symlink(entry.target, name, dir_fd=dir_fd)
            if self.owner is not None:
                os.chown(name, *self.owner, dir_fd=dir_fd, follow_symlinks=False)
            utime_link(dir_fd, name, entry.mtime_ns)

    def _set_dir_attrs(self) -> None:
        assert self._fds is not None
        set_dir_attrs(self._fds, self.entries)


def set_dir_attrs(fds: DirFds, entries: list[Entry]) -> None:
    """Modes and mtimes of the directories among ``entries`` (below ``fds``' root): in
    order where the mode leaves the owner able to enter; the rest afterwards, deepest
    first (so none locks out what is below it)."""
    late: list[Entry] = []
    for entry in entries:
        if entry.kind == "d":
            if _mode(entry) & DIR_ACCESS == DIR_ACCESS:
                _dir_attrs(fds, entry)
            else:
                late.append(entry)
    for entry in reversed(late):
        _dir_attrs(fds, entry)


def _dir_attrs(fds: DirFds, entry: Entry) -> None:
    parent, _, name = entry.path.rpartition("/")
    fd = open_dir(name, fds.get(parent))
    try:
        os.fchmod(fd, _mode(entry))
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
    finally:
        os.close(fd)


def utime_link(dir_fd: int, name: str, mtime_ns: int) -> None:
    try:
        os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:  # a file system without link times: not worth failing for
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL):
            raise
