"""Building the manifest of a person's tree (the CLI's side: code snapshots, project pushes).

:func:`build_manifest` walks the tree iteratively by directory descriptor
(:func:`mlsm.bulk.fstree.walk`: no recursion, no path longer than one name, so 5,000 levels
work), applies the ignore rules (:mod:`mlsm.bulk.ignore`) while it walks, and then hashes
the files that a :class:`~mlsm.bulk.hashing.HashCache` does not already know.

What a tree may hold: directories, regular files and symlinks whose target stays inside the
tree. Everything else that is not ignored (a link to an absolute path or out of the tree,
a device, a socket, a FIFO, a name that is not UTF-8) is *refused*, all of them in one
:class:`~mlsm.errors.UnsafeTree` whose message names the first few ("and N more") and
whose ``details.entries`` lists up to :data:`MAX_REFUSED_LISTED`: never silently skipped.
Limits (``max_files``, ``max_bytes``) are checked after the walk and before any file is
read, with :class:`~mlsm.errors.PayloadTooLarge`.

This is not for root on hostile trees: ``root`` itself is opened as given (the person's
own choice, it may be a symlink), and a file that changes while it is hashed is read as it
is (the receiver's verification catches a file that changed after). The agent builds its
manifests with its own descriptor walk and this package's :class:`~.manifest.Entry`.
"""

from __future__ import annotations

import os
import posixpath
import stat
import time
from dataclasses import dataclass

from mlsm.errors import PayloadTooLarge, SourceChanged, UnsafeTree

from .fstree import DirFds, walk
from .hashing import EMPTY_SHA256, FileKey, HashCache, sha256_fd
from .ignore import IgnoreRules
from .manifest import (
    MAX_TARGET_CHARS,
    Entry,
    Manifest,
    check_path,
    show_path,
    sort_entries,
    validate_manifest,
)

__all__ = ["MAX_REFUSED_LISTED", "MAX_REFUSED_SHOWN", "Refused", "build_manifest"]

MAX_REFUSED_SHOWN = 5  # offenders named in the message
MAX_REFUSED_LISTED = 100  # offenders listed in details.entries
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Refused:
    """An entry that cannot be part of a tree, and why (for the one error message)."""

    path: str
    why: str

    def __str__(self) -> str:
        return f"{show_path(self.path)} ({self.why})"


def _special(mode: int) -> str | None:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
        return "not a file, directory or link"
    return None


def _refusal_error(root: str, refused: list[Refused]) -> UnsafeTree:
    shown = ", ".join(str(r) for r in refused[:MAX_REFUSED_SHOWN])
    more = len(refused) - MAX_REFUSED_SHOWN
    tail = f", and {more} more" if more > 0 else ""
    return UnsafeTree(
        f"{root} holds {len(refused)} entr{'y' if len(refused) == 1 else 'ies'} that cannot be "
        f"sent: {shown}{tail}. Remove them or list them in .mlsmignore.",
        details={"entries": [f"{r.path}: {r.why}" for r in refused[:MAX_REFUSED_LISTED]]},
    )


@dataclass(slots=True)
class _Pending:
    """A file listed by the walk, hashed after it (so limits are checked before reading)."""

    index: int
    rel: str
    key: FileKey


def build_manifest(
    root: str | os.PathLike[str],
    *,
    rules: IgnoreRules | None = None,
    hash_files: bool = True,
    cache: HashCache | None = None,
    max_files: int | None = None,
    max_bytes: int | None = None,
) -> Manifest:
    """The manifest of the tree at ``root``, in canonical order (see the module docstring).

    ``rules`` None ignores nothing (``.git`` included); pass ``IgnoreRules()`` for git's
    rules. ``hash_files=False`` leaves ``sha256`` empty (a listing, not a manifest to send;
    it does not validate). ``cache`` supplies and keeps hashes by (path, size, mtime_ns,
    inode, ctime_ns): :class:`~mlsm.bulk.hashing.FileKey`.
    """
    top = os.fspath(root)
    root_fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # may be a link
    try:
        return _build(top, root_fd, rules, hash_files, cache, max_files, max_bytes)
    finally:
        os.close(root_fd)


def _build(
    top: str,
    root_fd: int,
    rules: IgnoreRules | None,
    hash_files: bool,
    cache: HashCache | None,
    max_files: int | None,
    max_bytes: int | None,
) -> Manifest:
    entries: list[Entry] = []
    refused: list[Refused] = []
    pending: list[_Pending] = []
    total = 0
    current_dir: str | None = None
    if rules is not None:
        rules.enter("", root_fd)
    for we in walk(root_fd, sort=True):
        rel = we.rel
        parent = rel.rpartition("/")[0]
        if rules is not None and parent != current_dir:
            current_dir = parent
            if parent:
                rules.enter(parent, we.dir_fd)
        st = we.entry.stat(follow_symlinks=False)
        mode = st.st_mode
        is_dir = stat.S_ISDIR(mode)
        if rules is not None and rules.ignored(rel, is_dir):
            we.descend = False
            continue
        try:
            check_path(rel)
        except UnsafeTree:
            refused.append(Refused(rel, "a name that is not valid UTF-8 or too long"))
            we.descend = False
            continue
        perm = stat.S_IMODE(mode) & 0o777
        if is_dir:
            entries.append(Entry(rel, "d", 0, perm, st.st_mtime_ns))
        elif stat.S_ISREG(mode):
            pending.append(_Pending(len(entries), rel, FileKey.of(rel, st)))
            entries.append(Entry(rel, "f", st.st_size, perm, st.st_mtime_ns, EMPTY_SHA256))
            total += st.st_size
        elif stat.S_ISLNK(mode):
            target = os.readlink(we.name, dir_fd=we.dir_fd)
            why = _bad_target(rel, target)
            if why:
                refused.append(Refused(rel, why))
            else:
                entries.append(Entry(rel, "l", 0, 0o777, st.st_mtime_ns, target=target))
        else:
            refused.append(Refused(rel, _special(mode) or "unsupported"))
    if refused:
        raise _refusal_error(top, refused)
    if max_files is not None and len(pending) > max_files:
        raise PayloadTooLarge(
            f"{top} holds {len(pending)} files, more than the limit of {max_files}",
            details={"files": len(pending), "limit": max_files},
        )
    if max_bytes is not None and total > max_bytes:
        raise PayloadTooLarge(
            f"{top} holds {total} bytes, more than the limit of {max_bytes}",
            details={"bytes": total, "limit": max_bytes},
        )
    if hash_files:
        _hash_pending(root_fd, top, entries, pending, cache)
    manifest = Manifest(sort_entries(entries))
    if hash_files:
        try:
            validate_manifest(manifest)
        except UnsafeTree as exc:  # a link chain that leads out: name it like the others
            raise UnsafeTree(f"{top}: {exc.message}", details=exc.details) from None
    return manifest


def _bad_target(rel: str, target: str) -> str | None:
    if not target or len(target) > MAX_TARGET_CHARS or "\0" in target:
        return "a link with an unusable target"
    if target.startswith("/"):
        return f"a link to the absolute path {show_path(target)}"
    try:
        target.encode("utf-8")
    except UnicodeEncodeError:
        return "a link whose target is not valid UTF-8"
    lexical = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    if lexical == ".." or lexical.startswith("../"):
        return f"a link to {show_path(target)}, outside the tree"
    return None


def _hash_pending(
    root_fd: int, top: str, entries: list[Entry], pending: list[_Pending], cache: HashCache | None
) -> None:
    started = time.time_ns()
    fds: DirFds | None = None
    try:
        for p in pending:
            if p.key.size == 0:
                continue
            sha = cache.get(p.key) if cache is not None else None
            if sha is None:
                if fds is None:
                    fds = DirFds(root_fd)
                parent, _, name = p.rel.rpartition("/")
                fd = os.open(name, _READ_FLAGS, dir_fd=fds.get(parent))
                try:
                    st = os.fstat(fd)
                    if not stat.S_ISREG(st.st_mode) or st.st_ino != p.key.inode:
                        raise SourceChanged(
                            f"{show_path(p.rel)} changed while it was read; try again"
                        )
                    sha, _ = sha256_fd(fd, limit=p.key.size)
                finally:
                    os.close(fd)
                if cache is not None:
                    cache.put(p.key, sha, hashed_at_ns=started)
            old = entries[p.index]
            entries[p.index] = Entry(old.path, "f", old.size, old.mode, old.mtime_ns, sha)
    finally:
        if fds is not None:
            fds.close()
