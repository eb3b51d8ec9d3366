"""Safe extraction of tar and zip archives into a fresh directory.

The stdlib parses the archives; every entry is written by :class:`SafeWriter`, which
refuses (and aborts the whole extraction with :class:`UnsafeArchiveError` naming the
entry) anything that could land outside the destination or surprise the host:

- absolute names, ``..`` components, NUL bytes;
- entries whose parent is a symlink made by the same archive (no writing *through* a
  link), or a file;
- symlinks with an absolute target or one that leads outside (checked lexically when made,
  and again once the whole tree exists, following chains of links);
- hard links to anything but a regular file extracted earlier from the same archive;
- devices, fifos and other special files;
- more than ``max_bytes`` of file content or ``max_entries`` entries in total, and for
  compressed archives an expansion ratio over ``max_ratio`` (a zip/tar bomb guard that
  counts the bytes actually written, not what the headers claim).

Files are created with ``O_EXCL | O_NOFOLLOW``; modes keep the owner/group/other read and
execute bits only (no setuid/setgid/sticky, no group/other write, owner always rw);
ownership is never restored. For tar, ``tarfile.data_filter`` (Python >= 3.11.4) is run
on every member as a second, independent check.

Entries are written relative to descriptors of their directories (never through a
path), so an archive of any depth unpacks; links are checked at the end by resolving
them from what was written, in a loop (``realpath`` would recurse once per link).

The destination is expected to be a new, private directory that nothing else writes to
(the ``.mlsm-*`` temp dir); the caller removes it whole on any error. The tar and zip
drivers that feed the writer live in :mod:`.archives`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from agent.fsutil import DirFds
from mlsm.bulk.manifest import leads_inside

from ._fs import open_new
from .errors import DatasetCancelled, DatasetTooLargeError, UnsafeArchiveError

COPY_BLOCK = 1 << 20  # bytes copied at a time
MAX_ENTRIES = 2_000_000  # entries (files, dirs, links) in one archive
MAX_RATIO = 1000.0  # expanded bytes per archive byte (deflate alone tops out near 1032)
RATIO_FLOOR = 16 << 20  # a tiny archive may always expand to this much
MAX_LINK_TARGET = 4096


@dataclass
class Limits:
    max_bytes: int  # file content written in total
    max_entries: int = MAX_ENTRIES
    max_ratio: float | None = None  # None: no ratio check (uncompressed streams)
    archive_size: int = 0  # bytes of the archive, for the ratio
    allow_links: bool = True  # symlinks and hard links (transfers allow neither)


def _show(name: str) -> str:
    return repr(name if len(name) <= 200 else name[:200] + "...")


class SafeWriter:
    """Writes archive entries under ``dest``; see the module docstring for the rules.

    Every file-system call is made relative to a descriptor of the entry's directory
    (:class:`agent.fsutil.DirFds`), so an archive of any depth unpacks without a path ever
    passing PATH_MAX. :meth:`close` (the archive drivers call it) releases them.
    """

    def __init__(
        self,
        dest: Path,
        limits: Limits,
        *,
        should_stop: Callable[[], bool] | None = None,
        hash_files: bool = False,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.dest = Path(os.path.realpath(dest))
        self.limits = limits
        self.should_stop = should_stop
        self.on_bytes = on_bytes
        self.bytes_written = 0
        self.entries = 0
        self.hashes: dict[str, str] | None = {} if hash_files else None
        self._kinds: dict[str, str] = {}  # rel path -> "d" | "f" | "l"
        self._links: dict[str, str] = {}  # rel path of a symlink -> its target
        self._buf = bytearray(COPY_BLOCK)
        self._fds: DirFds | None = None

    def _dir(self, rel: str) -> int:
        """A descriptor of directory ``rel`` ("" = dest), one this writer made."""
        if self._fds is None:
            self._fds = DirFds(self.dest)
        return self._fds.get(rel)

    def close(self) -> None:
        if self._fds is not None:
            self._fds.close()
            self._fds = None

    # ---------------------------------------------------------------- checks
    def _stop_check(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise DatasetCancelled("cancelled")

    def _clean(self, name: str, what: str = "entry") -> str:
        """Archive name -> relative path with '/' ("" for the archive's root entry)."""
        if "\0" in name:
            raise UnsafeArchiveError(f"archive {what} {_show(name)} contains a NUL byte")
        if name.startswith("/"):
            raise UnsafeArchiveError(f"archive {what} {_show(name)} has an absolute path")
        parts = name.split("/")
        if ".." in parts:
            raise UnsafeArchiveError(f"archive {what} {_show(name)} contains '..'")
        if "" in parts or "." in parts:
            parts = [p for p in parts if p not in ("", ".")]
        # a name of at most 63 characters is at most 252 bytes: only longer ones are encoded
        if max(map(len, parts), default=0) > 63:
            for p in parts:
                if len(p.encode("utf-8", "surrogateescape")) > 255:
                    raise UnsafeArchiveError(
                        f"archive {what} {_show(name)} has a name over 255 bytes"
                    )
        return "/".join(parts)

    def _count_entry(self, name: str) -> None:
        self._stop_check()
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise DatasetTooLargeError(
                f"archive has more than {self.limits.max_entries} entries (at {_show(name)})"
            )

    def _byte_budget(self) -> int:
        budget = self.limits.max_bytes
        if self.limits.max_ratio is not None:
            budget = min(
                budget, max(RATIO_FLOOR, int(self.limits.archive_size * self.limits.max_ratio))
            )
        return budget

    def _too_large(self, name: str, total: int) -> DatasetTooLargeError:
        if total > self.limits.max_bytes:
            return DatasetTooLargeError(
                f"archive expands past the limit of {self.limits.max_bytes} bytes "
                f"(at entry {_show(name)})"
            )
        return DatasetTooLargeError(
            f"archive expands more than {self.limits.max_ratio:g} times its size of "
            f"{self.limits.archive_size} bytes (at entry {_show(name)}): refused as a bomb"
        )

    def _parent(self, rel: str, name: str) -> tuple[int, str]:
        """Make sure every parent of ``rel`` is a real directory we made; return a
        descriptor of the last one and ``rel``'s own name in it."""
        parent, _, base = rel.rpartition("/")
        missing: list[str] = []
        anc = parent
        # Every parent of a directory we made is one too, so the first known one going up
        # decides: a directory (create what is missing below it), or a link or file (refuse).
        while anc and (kind := self._kinds.get(anc)) != "d":
            if kind == "l":
                raise UnsafeArchiveError(
                    f"archive entry {_show(name)} would be written through the symlink {_show(anc)}"
                )
            if kind == "f":
                raise UnsafeArchiveError(
                    f"archive entry {_show(name)} has the file {_show(anc)} as a parent"
                )
            anc, _, last = anc.rpartition("/")
            missing.append(last)
        for last in reversed(missing):
            os.mkdir(last, 0o755, dir_fd=self._dir(anc))
            anc = f"{anc}/{last}" if anc else last
            self._kinds[anc] = "d"
        return self._dir(parent), base

    def _clear(self, rel: str, name: str, new_kind: str, dir_fd: int, base: str) -> bool:
        """Handle an entry that names an existing path; True when nothing is left to do."""
        kind = self._kinds.get(rel)
        if kind is None:
            return False
        if kind == "d":
            if new_kind == "d":
                return True
            raise UnsafeArchiveError(
                f"archive entry {_show(name)} replaces a directory of the same name"
            )
        if new_kind == "d":
            raise UnsafeArchiveError(
                f"archive entry {_show(name)} replaces a file with a directory"
            )
        os.unlink(base, dir_fd=dir_fd)  # a later duplicate wins, as with tar itself
        del self._kinds[rel]
        self._links.pop(rel, None)
        if self.hashes is not None:
            self.hashes.pop(rel, None)
        return False

    # ---------------------------------------------------------------- entries
    def directory(self, name: str) -> None:
        self._count_entry(name)
        rel = self._clean(name)
        if not rel:
            return  # the archive's "./" entry
        dir_fd, base = self._parent(rel, name)
        if self._clear(rel, name, "d", dir_fd, base):
            return
        os.mkdir(base, 0o755, dir_fd=dir_fd)
        self._kinds[rel] = "d"

    def file(self, name: str, src: IO[bytes], size: int | None, mode: int, mtime: float) -> None:
        self._count_entry(name)
        rel = self._clean(name)
        if not rel:
            raise UnsafeArchiveError(f"archive entry {_show(name)} is a file without a name")
        budget = self._byte_budget()
        if size is not None and self.bytes_written + size > budget:
            raise self._too_large(name, self.bytes_written + size)
        dir_fd, base = self._parent(rel, name)
        self._clear(rel, name, "f", dir_fd, base)
        out = open_new(base, dir_fd=dir_fd)
        self._kinds[rel] = "f"
        h = hashlib.sha256() if self.hashes is not None else None
        view = memoryview(self._buf)
        with out:
            while True:
                n = src.readinto(view) if hasattr(src, "readinto") else self._read_into(src, view)
                if not n:
                    break
                self.bytes_written += n
                if self.bytes_written > budget:
                    raise self._too_large(name, self.bytes_written)
                chunk = view[:n]
                if h is not None:
                    h.update(chunk)
                out.write(chunk)
                if self.on_bytes is not None:
                    self.on_bytes(n)
                self._stop_check()
            os.fchmod(out.fileno(), (mode & 0o755 if mode & 0o100 else mode & 0o644) | 0o600)
            with contextlib.suppress(OSError, OverflowError, ValueError):
                os.utime(out.fileno(), (mtime, mtime))
        if h is not None and self.hashes is not None:
            self.hashes[rel] = h.hexdigest()

    @staticmethod
    def _read_into(src: IO[bytes], view: memoryview) -> int:
        data = src.read(len(view))
        view[: len(data)] = data
        return len(data)

    def symlink(self, name: str, target: str) -> None:
        self._count_entry(name)
        rel = self._clean(name)
        if not self.limits.allow_links:
            raise UnsafeArchiveError(f"archive entry {_show(name)} is a symlink (not allowed here)")
        if not rel:
            raise UnsafeArchiveError(f"archive entry {_show(name)} is a symlink without a name")
        if not target or "\0" in target or len(target) > MAX_LINK_TARGET:
            raise UnsafeArchiveError(f"archive symlink {_show(name)} has an invalid target")
        if target.startswith("/"):
            raise UnsafeArchiveError(
                f"archive symlink {_show(name)} points to the absolute path {_show(target)}"
            )
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
        if resolved == ".." or resolved.startswith("../"):
            raise UnsafeArchiveError(
                f"archive symlink {_show(name)} -> {_show(target)} points outside the dataset"
            )
        dir_fd, base = self._parent(rel, name)
        self._clear(rel, name, "l", dir_fd, base)
        os.symlink(target, base, dir_fd=dir_fd)
        self._kinds[rel] = "l"
        self._links[rel] = target

    def hardlink(self, name: str, target: str) -> None:
        self._count_entry(name)
        rel = self._clean(name)
        if not self.limits.allow_links:
            raise UnsafeArchiveError(
                f"archive entry {_show(name)} is a hard link (not allowed here)"
            )
        trel = self._clean(target, "hard link target")
        if not rel or self._kinds.get(trel) != "f":
            raise UnsafeArchiveError(
                f"archive hard link {_show(name)} -> {_show(target)} does not point to a file "
                "extracted earlier from the same archive"
            )
        dir_fd, base = self._parent(rel, name)
        if rel == trel:
            return
        self._clear(rel, name, "f", dir_fd, base)
        tparent, _, tbase = trel.rpartition("/")
        src_fd = self._dir(tparent)  # two fetches: dir_fd stays open (DirFds keeps 16)
        os.link(tbase, base, src_dir_fd=src_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        self._kinds[rel] = "f"
        if self.hashes is not None:
            self.hashes[rel] = self.hashes[trel]

    def finish(self) -> None:
        """Check every symlink against the finished tree (chains of links included)."""
        resolved: dict[str, str] = {}  # link -> where it leads (rel), once worked out
        for rel in self._links:
            if not leads_inside(rel, self._links, self._kinds, resolved):
                raise UnsafeArchiveError(
                    f"archive symlink {_show(rel)} resolves outside the dataset "
                    f"(through {_show(self._links[rel])})"
                )
