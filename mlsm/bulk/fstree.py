"""Walking, removing and renaming directory trees of any depth, without recursion or
following links.

The agent works in trees that others made (datasets, job directories, projects), the CLI
in a person's own, and a tree can be thousands of levels deep. Python's own tools break there: ``shutil.rmtree``
(3.11) recurses once per level and dies with RecursionError near depth 1000, and any
path-based call fails once a path passes PATH_MAX (4096 bytes). So every walk here:

- is a loop over an explicit stack, never recursion;
- works through directory file descriptors: each level is opened relative to its parent
  with ``O_DIRECTORY | O_NOFOLLOW`` (a symlink is never entered, whatever was swapped in
  after it was listed), entries are removed or statted relative to that descriptor, so no
  path ever grows past one name;
- holds a fixed handful of descriptors (never one per level): going back up opens ``..``
  and checks it is the very directory it came from (device and inode), so a tree moved
  mid-walk stops the walk (:class:`TreeChangedError`) instead of leading it elsewhere;
- keeps memory to the names on the current path (and, for :func:`walk`, the
  not-yet-visited subdirectories of the directories on it).

:func:`remove_tree` removes a file or tree; :func:`walk` yields every entry of a tree,
parents before children, each with its directory's descriptor for ``*at`` calls (a
consumer sets ``entry.descend = False`` to keep the walk out of a directory);
:class:`DirFds` hands out descriptors of a tree's directories to a writer (an unpacker, a
sink); :func:`rename_noreplace` moves a finished tree into place without ever replacing
what is there; :func:`sync_fs` flushes the file system a descriptor lives on.

Over 400 lines, as one piece: the walker, the remover and :class:`DirFds` share the
descriptor-stepping rules above (``..`` checked against where it came from); apart, each
would restate them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DIR_FDS_KEPT",
    "DIR_FLAGS",
    "DirFds",
    "TreeChangedError",
    "WalkEntry",
    "open_dir",
    "remove_at",
    "remove_tree",
    "rename_noreplace",
    "sync_fs",
    "walk",
]

#: How a directory of a walked tree is opened: never through a symlink.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PARENT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class TreeChangedError(OSError):
    """A directory was moved while it was being walked (its ``..`` is not where it was)."""

    def __init__(self, what: str) -> None:
        super().__init__(errno.ESTALE, f"{what} was moved while it was being walked")


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def open_dir(name: str, dir_fd: int | None = None) -> int:
    """Open directory ``name`` (relative to ``dir_fd``) for reading; never through a link."""
    return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def _open_parent(fd: int, want: tuple[int, int], what: str) -> int:
    """The directory above ``fd``, which must be the one whose identity is ``want``."""
    parent = os.open("..", _PARENT_FLAGS, dir_fd=fd)
    if _identity(os.fstat(parent)) != want:
        os.close(parent)
        raise TreeChangedError(what)
    return parent


def _split(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(parent directory, last name) of ``path``; the parent may be followed, the name not."""
    p = os.path.normpath(os.fspath(path))
    parent, name = os.path.split(p)
    if name in ("", ".", ".."):
        raise ValueError(f"cannot name the tree {os.fspath(path)!r} by its last component")
    return parent or ".", name


# ------------------------------------------------------------------ removing
def _retry_writable(fd: int, op: Callable[[], None]) -> None:
    """Run ``op`` (an unlink or rmdir in directory ``fd``); on EACCES/EPERM make ``fd``
    writable by its owner and try once more (a read-only directory in the tree)."""
    try:
        op()
    except PermissionError:
        os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) | stat.S_IRWXU)
        op()


def _unlink_at(fd: int, name: str) -> None:
    try:
        _retry_writable(fd, lambda: os.unlink(name, dir_fd=fd))
    except FileNotFoundError:
        pass


def _rmdir_at(fd: int, name: str) -> None:
    try:
        _retry_writable(fd, lambda: os.rmdir(name, dir_fd=fd))
    except FileNotFoundError:
        pass


def _empty_files(fd: int) -> tuple[str, tuple[int, int]] | None:
    """Unlink every non-directory in ``fd`` up to the first subdirectory; return that one's
    (name, identity), or None once ``fd`` is empty. A pass that unlinked something is
    followed by another, so an entry a directory stream skipped while it changed is caught.
    """
    while True:
        unlinked = False
        with os.scandir(fd) as it:
            for e in it:
                try:
                    if e.is_dir(follow_symlinks=False):
                        return e.name, _identity(e.stat(follow_symlinks=False))
                except FileNotFoundError:
                    continue
                _unlink_at(fd, e.name)
                unlinked = True
        if not unlinked:
            return None


def _enter(fd: int, name: str, listed: tuple[int, int]) -> int:
    """Open subdirectory ``name`` of ``fd``; it must still be the directory that was listed."""
    child = open_dir(name, fd)
    if _identity(os.fstat(child)) != listed:
        os.close(child)
        raise TreeChangedError(f"directory {name!r}")
    return child


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove the file, link or directory tree at ``path``; quiet if it is already gone.

    Links inside (and ``path`` itself, when it is one) are unlinked, never followed; the
    directories above ``path`` are taken as given. Any depth, four descriptors at most,
    memory for the names on the current path only. Raises OSError when something cannot
    be removed (what was removed stays removed; a second call carries on).
    """
    parent, name = _split(path)
    try:
        top_parent = os.open(parent, _PARENT_FLAGS)
    except FileNotFoundError:
        return
    try:
        remove_at(top_parent, name)
    finally:
        os.close(top_parent)


def remove_at(dir_fd: int, name: str) -> None:
    """:func:`remove_tree` of the entry ``name`` of directory ``dir_fd``."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        _unlink_at(dir_fd, name)
        return
    try:
        fd = _enter(dir_fd, name, _identity(st))
    except FileNotFoundError:
        return
    names = [name]  # from the top down to fd's directory
    ids = [_identity(st)]
    try:
        while names:
            sub = _empty_files(fd)
            if sub is not None:
                child = _enter(fd, *sub)
                os.close(fd)
                fd = child
                names.append(sub[0])
                ids.append(sub[1])
                continue
            done = names.pop()
            ids.pop()
            above = _open_parent(fd, ids[-1], f"directory {done!r}") if ids else -1
            os.close(fd)
            fd = above
            _rmdir_at(fd if fd >= 0 else dir_fd, done)
    finally:
        if fd >= 0:
            os.close(fd)


# ------------------------------------------------------------------ walking
@dataclass(slots=True)
class WalkEntry:
    """One entry of a walked tree. ``dir_fd`` (its directory) and ``entry`` (whose
    ``stat()`` and ``is_*()`` use that descriptor) are valid only until the walk resumes."""

    rel: str  # path below the top, "/"-separated
    depth: int  # 1 for the top's own entries
    entry: os.DirEntry[str]
    dir_fd: int
    descend: bool = True  # a consumer sets False to keep the walk out of this directory

    @property
    def name(self) -> str:
        return self.entry.name


@dataclass(slots=True)
class _Level:
    name: str  # this directory's name in its parent ("" for the top)
    ident: tuple[int, int]
    pending: list[tuple[str, tuple[int, int]]] = field(default_factory=list)  # subdirs left


def _listing(fd: int, sort: bool) -> list[os.DirEntry[str]]:
    with os.scandir(fd) as it:
        entries = list(it)
    if sort:
        entries.sort(key=lambda e: e.name)
    return entries


def walk(
    top: int | str | os.PathLike[str],
    *,
    sort: bool = False,
    on_error: Callable[[OSError], None] | None = None,
) -> Iterator[WalkEntry]:
    """Every entry below directory ``top``, each directory's entries before its subtrees.

    Symlinks are yielded (as entries) but never entered; ``top`` itself must be a real
    directory (O_NOFOLLOW), or a descriptor of one (duplicated: the caller's stays open).
    A directory whose entry the consumer marked ``descend = False`` (ignored by its rules,
    say) is not entered. ``sort`` orders each directory's entries by name (subtrees
    follow in the same order). A subdirectory that cannot be read (vanished, no
    permission) is passed to ``on_error`` and skipped, or raised when there is none; a
    tree moved during the walk raises :class:`TreeChangedError` either way.
    """
    fd = os.dup(top) if isinstance(top, int) else open_dir(os.fspath(top))
    try:
        stack = [_Level("", _identity(os.fstat(fd)))]
        prefix = ""  # rel of fd's directory + "/" (one string, not one per level)
        listed = _listing(fd, sort)
        while True:
            level = stack[-1]
            depth = len(stack)
            subdirs: list[tuple[str, tuple[int, int]]] = []
            for e in listed:
                we = WalkEntry(prefix + e.name, depth, e, fd)
                yield we
                try:
                    if we.descend and e.is_dir(follow_symlinks=False):
                        subdirs.append((e.name, _identity(e.stat(follow_symlinks=False))))
                except OSError as exc:
                    if on_error is None:
                        raise
                    on_error(exc)
            subdirs.reverse()  # popped from the end: visited in listing order
            level.pending = subdirs
            listed = []
            # next: the first subdirectory still to visit, climbing up as levels run dry
            while True:
                level = stack[-1]
                if level.pending:
                    name, ident = level.pending.pop()
                    try:
                        child = _enter(fd, name, ident)
                    except OSError as exc:
                        if on_error is None:
                            raise
                        on_error(exc)
                        continue
                    try:
                        child_listing = _listing(child, sort)
                    except OSError as exc:
                        os.close(child)
                        if on_error is None:
                            raise
                        on_error(exc)
                        continue
                    os.close(fd)
                    fd = child
                    stack.append(_Level(name, ident))
                    prefix = f"{prefix}{name}/"
                    listed = child_listing
                    break
                if len(stack) == 1:
                    return
                done = stack.pop()
                above = _open_parent(fd, stack[-1].ident, f"directory {done.name!r}")
                os.close(fd)
                fd = above
                prefix = prefix[: -len(done.name) - 1]
    finally:
        os.close(fd)


# ------------------------------------------------------------------ writing into a tree
#: Directory descriptors a :class:`DirFds` keeps open (the most recently used ones).
DIR_FDS_KEPT = 16


class DirFds:
    """Descriptors of directories below ``root``, for ``*at`` calls at any depth.

    ``get("a/b/c")`` opens each level from the nearest directory already open, never
    through a link (``O_NOFOLLOW``), and keeps the last :data:`DIR_FDS_KEPT` open, so a
    writer that goes through a tree in order (an archive being unpacked) opens about one
    directory per entry, however deep, and no path it uses is longer than one name.
    A descriptor from ``get`` is valid until the next ``get``'s eviction could close it:
    fetch at most ``DIR_FDS_KEPT - 1`` others while using one. ``root`` may be a
    descriptor (duplicated: the caller's stays open).
    """

    def __init__(self, root: int | str | os.PathLike[str], kept: int = DIR_FDS_KEPT) -> None:
        self.kept = max(2, kept)
        self.root_fd = os.dup(root) if isinstance(root, int) else open_dir(os.fspath(root))
        self._open: dict[str, int] = {}  # rel -> fd, least recently used first

    def get(self, rel: str) -> int:
        """The descriptor of directory ``rel`` ("" for the root; "/"-separated)."""
        if not rel:
            return self.root_fd
        fd = self._open.pop(rel, None)
        if fd is not None:
            self._open[rel] = fd  # now the most recently used
            return fd
        names: list[str] = []
        anc = rel
        base = self.root_fd
        while anc:
            anc, _, name = anc.rpartition("/")
            names.append(name)
            if anc in self._open:
                base = self._open.pop(anc)
                self._open[anc] = base
                break
        fd = base
        try:
            for name in reversed(names):
                child = open_dir(name, fd)
                if fd != base:
                    os.close(fd)
                fd = child
        except BaseException:
            if fd != base:
                os.close(fd)
            raise
        self._open[rel] = fd
        if len(self._open) > self.kept:
            oldest = next(iter(self._open))
            os.close(self._open.pop(oldest))
        return fd

    def close(self) -> None:
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    def __enter__(self) -> DirFds:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------ renaming, syncing
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1

_libc: Any
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - no C library to load (not a Unix)
    _libc = None


def _c_function(name: str, argtypes: list[Any]) -> Any:
    fn = getattr(_libc, name, None) if _libc is not None else None
    if fn is not None:
        fn.argtypes = argtypes
        fn.restype = ctypes.c_int
    return fn


_renameat2 = _c_function(  # glibc >= 2.28
    "renameat2", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
)
_syncfs = _c_function("syncfs", [ctypes.c_int])  # Linux
_sync_file_range = _c_function(  # Linux
    "sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
)
_SYNC_FILE_RANGE_WRITE = 2


def rename_noreplace(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    src_dir_fd: int | None = None,
    dst_dir_fd: int | None = None,
) -> None:
    """Rename ``src`` to ``dst`` atomically; FileExistsError if ``dst`` exists.

    Plain ``os.rename`` silently replaces an empty directory, so Linux's
    ``renameat2(RENAME_NOREPLACE)`` is used; where the kernel or file system lacks it, a
    check-then-rename is the fallback (callers run one operation per name at a time).
    Either path may be relative to a directory descriptor.
    """
    sfd = _AT_FDCWD if src_dir_fd is None else src_dir_fd
    dfd = _AT_FDCWD if dst_dir_fd is None else dst_dir_fd
    if _renameat2 is not None:
        rc = _renameat2(sfd, os.fsencode(src), dfd, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), os.fspath(dst))
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), os.fspath(src), None, os.fspath(dst))
    try:
        os.stat(dst, dir_fd=dst_dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        return
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(dst))


def sync_fs(fd: int) -> None:
    """Flush everything written to the file system that ``fd`` lives on (``syncfs``), so
    a journal record written after this call never claims bytes a power loss could lose;
    ``os.sync`` (every file system) where ``syncfs`` is missing."""
    if _syncfs is not None and _syncfs(fd) == 0:
        return
    os.sync()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``fd``'s bytes [offset, offset+length) to disk now,
    without waiting (``sync_file_range(SYNC_FILE_RANGE_WRITE)``): a later :func:`sync_fs`
    then finds little left to write, instead of all of a large file at once. Durability
    still comes only from :func:`sync_fs`; where the call is missing this does nothing."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)
