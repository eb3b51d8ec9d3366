"""Safe extraction of tar and zip archives into a fresh directory.

The stdlib parses the archives; every entry is written by :class:`SafeWriter`, which
refuses (and aborts the whole extraction with :class:`UnsafeArchiveError` naming the
entry) anything that could land outside the destination or surprise the host:

- absolute names, ``..`` components, NUL bytes;
- entries whose parent is a symlink made by the same archive (no writing *through* a
  link), or a file;
- symlinks with an absolute target or one that leads outside (checked lexically when made,
  and again with ``realpath`` once the whole tree exists, which catches chains of links);
- hard links to anything but a regular file extracted earlier from the same archive;
- devices, fifos and other special files;
- more than ``max_bytes`` of file content or ``max_entries`` entries in total, and for
  compressed archives an expansion ratio over ``max_ratio`` (a zip/tar bomb guard that
  counts the bytes actually written, not what the headers claim).

Files are created with ``O_EXCL | O_NOFOLLOW``; modes keep the owner/group/other read and
execute bits only (no setuid/setgid/sticky, no group/other write, owner always rw);
ownership is never restored. For tar, ``tarfile.data_filter`` (Python >= 3.11.4) is run
on every member as a second, independent check.

The destination is expected to be a new, private directory that nothing else writes to
(the ``.mlsm-*`` temp dir); the caller removes it whole on any error.
"""

from __future__ import annotations

import contextlib
import hashlib
import lzma
import os
import posixpath
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ._fs import open_new
from .errors import DatasetCancelled, DatasetError, DatasetTooLargeError, UnsafeArchiveError

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
    """Writes archive entries under ``dest``; see the module docstring for the rules."""

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
        self._buf = bytearray(COPY_BLOCK)

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
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise UnsafeArchiveError(f"archive {what} {_show(name)} contains '..'")
        for p in parts:
            if len(p.encode("utf-8", "surrogateescape")) > 255:
                raise UnsafeArchiveError(f"archive {what} {_show(name)} has a name over 255 bytes")
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

    def _parent(self, rel: str, name: str) -> Path:
        """Make sure every parent of ``rel`` is a real directory we made; return the path."""
        parts = rel.split("/")[:-1]
        prefix = ""
        for p in parts:
            prefix = f"{prefix}/{p}" if prefix else p
            kind = self._kinds.get(prefix)
            if kind == "l":
                raise UnsafeArchiveError(
                    f"archive entry {_show(name)} would be written through "
                    f"the symlink {_show(prefix)}"
                )
            if kind == "f":
                raise UnsafeArchiveError(
                    f"archive entry {_show(name)} has the file {_show(prefix)} as a parent"
                )
            if kind is None:
                os.mkdir(self.dest / prefix, 0o755)
                self._kinds[prefix] = "d"
        return self.dest / rel

    def _clear(self, rel: str, name: str, new_kind: str) -> bool:
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
        os.unlink(self.dest / rel)  # a later duplicate wins, as with tar itself
        del self._kinds[rel]
        if self.hashes is not None:
            self.hashes.pop(rel, None)
        return False

    # ---------------------------------------------------------------- entries
    def directory(self, name: str) -> None:
        self._count_entry(name)
        rel = self._clean(name)
        if not rel:
            return  # the archive's "./" entry
        path = self._parent(rel, name)
        if self._clear(rel, name, "d"):
            return
        os.mkdir(path, 0o755)
        self._kinds[rel] = "d"

    def file(self, name: str, src: IO[bytes], size: int | None, mode: int, mtime: float) -> None:
        self._count_entry(name)
        rel = self._clean(name)
        if not rel:
            raise UnsafeArchiveError(f"archive entry {_show(name)} is a file without a name")
        budget = self._byte_budget()
        if size is not None and self.bytes_written + size > budget:
            raise self._too_large(name, self.bytes_written + size)
        path = self._parent(rel, name)
        self._clear(rel, name, "f")
        out = open_new(path)
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
        if h is not None and self.hashes is not None:
            self.hashes[rel] = h.hexdigest()
        with contextlib.suppress(OSError, OverflowError, ValueError):
            os.utime(path, (mtime, mtime), follow_symlinks=False)

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
        path = self._parent(rel, name)
        self._clear(rel, name, "l")
        os.symlink(target, path)
        self._kinds[rel] = "l"

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
        path = self._parent(rel, name)
        if rel == trel:
            return
        self._clear(rel, name, "f")
        os.link(self.dest / trel, path, follow_symlinks=False)
        self._kinds[rel] = "f"
        if self.hashes is not None:
            self.hashes[rel] = self.hashes[trel]

    def finish(self) -> None:
        """Check every symlink against the finished tree (chains of links included)."""
        dest = str(self.dest)
        for rel, kind in self._kinds.items():
            if kind != "l":
                continue
            real = os.path.realpath(self.dest / rel)
            if real != dest and not real.startswith(dest + os.sep):
                raise UnsafeArchiveError(
                    f"archive symlink {_show(rel)} resolves outside the dataset (to {_show(real)})"
                )


# -------------------------------------------------------------------- archive drivers
def _data_filter_check(member: tarfile.TarInfo, dest: Path) -> None:
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is None:  # Python < 3.11.4: our own checks stand alone
        return
    try:
        data_filter(member, os.fspath(dest))
    except tarfile.FilterError as e:
        raise UnsafeArchiveError(f"archive entry {_show(member.name)} refused: {e}") from None


def extract_tar(src: IO[bytes], writer: SafeWriter) -> None:
    """Extract a tar stream (any compression tarfile reads) through ``writer``."""
    try:
        with tarfile.open(fileobj=src, mode="r|*") as tf:
            for m in tf:
                if m.issym() or m.islnk():
                    # Ours first: they give the clearer messages for links.
                    if m.issym():
                        writer.symlink(m.name, m.linkname)
                    else:
                        writer.hardlink(m.name, m.linkname)
                    continue
                if not (m.isdir() or m.isreg()):
                    kind = (
                        "device"
                        if (m.ischr() or m.isblk())
                        else "fifo"
                        if m.isfifo()
                        else "special file"
                    )
                    raise UnsafeArchiveError(f"archive entry {_show(m.name)} is a {kind}")
                _data_filter_check(m, writer.dest)
                if m.isdir():
                    writer.directory(m.name)
                else:
                    f = tf.extractfile(m)
                    if f is None:  # pragma: no cover - isreg() members always have data
                        raise UnsafeArchiveError(f"archive entry {_show(m.name)} has no data")
                    writer.file(m.name, f, m.size, m.mode, m.mtime)
    except DatasetError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, ValueError) as e:
        raise UnsafeArchiveError(f"not a readable tar archive: {e}") from None
    writer.finish()


def extract_zip(path: Path, writer: SafeWriter) -> None:
    """Extract a zip file through ``writer`` (declared sizes are checked up front too)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > writer.limits.max_entries:
                raise DatasetTooLargeError(
                    f"archive has {len(infos)} entries (at most {writer.limits.max_entries})"
                )
            declared = sum(i.file_size for i in infos)
            if declared > writer._byte_budget():
                raise writer._too_large(infos[-1].filename, declared)
            for info in infos:
                mode = (info.external_attr >> 16) if info.create_system == 3 else 0
                if info.flag_bits & 0x1:
                    raise UnsafeArchiveError(f"archive entry {_show(info.filename)} is encrypted")
                if info.is_dir() or stat.S_ISDIR(mode):
                    writer.directory(info.filename)
                elif stat.S_ISLNK(mode):
                    if info.file_size > MAX_LINK_TARGET:
                        raise UnsafeArchiveError(
                            f"archive symlink {_show(info.filename)} has an invalid target"
                        )
                    target = zf.read(info).decode("utf-8", "surrogateescape")
                    writer.symlink(info.filename, target)
                elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # 0: no type recorded
                    raise UnsafeArchiveError(
                        f"archive entry {_show(info.filename)} is a special file"
                    )
                else:
                    mtime = _zip_mtime(info)
                    with zf.open(info) as f:
                        writer.file(info.filename, f, info.file_size, mode or 0o644, mtime)
    except DatasetError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError) as e:
        raise UnsafeArchiveError(f"not a readable zip archive: {e}") from None
    except (EOFError, zlib.error, lzma.LZMAError, OSError, ValueError) as e:
        raise UnsafeArchiveError(f"not a readable zip archive: {e}") from None
    writer.finish()


def _zip_mtime(info: zipfile.ZipInfo) -> float:
    import time

    try:
        return time.mktime((*info.date_time, 0, 0, -1))
    except (OverflowError, ValueError):
        return 0.0


def archive_kind(path: Path) -> str | None:
    """``"zip"``, ``"tar"`` or ``None`` (not an archive we unpack)."""
    try:
        if zipfile.is_zipfile(path):
            return "zip"
        if tarfile.is_tarfile(path):
            return "tar"
    except (OSError, EOFError, zlib.error, lzma.LZMAError):
        return None
    return None
