"""Reading tar and zip archives entry by entry into a :class:`~.extract.SafeWriter`.

The stdlib parses; every entry goes to the writer, which applies the rules (see
:mod:`.extract`). Entry kinds the writer has no method for (devices, fifos, other special
files, encrypted zip members) are refused here, naming the entry. Both drivers close the
writer when they end, whatever the outcome.
"""

from __future__ import annotations

import io
import lzma
import os
import stat
import tarfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import IO

from .errors import DatasetError, DatasetTooLargeError, UnsafeArchiveError
from .extract import MAX_LINK_TARGET, SafeWriter, _show

__all__ = ["archive_kind", "extract_tar", "extract_zip"]


#: Tar entries up to this many levels deep also pass ``tarfile.data_filter``. Its
#: ``realpath`` lstats every level of the entry's path, each lookup as long as the path,
#: so on deeper entries it costs time cubic in the depth (minutes for one 5,000-deep
#: archive): those rely on the writer's rules alone, which hold at any depth by
#: construction (lexical checks, and writes only through descriptors of directories the
#: writer made, opened with O_NOFOLLOW).
FILTER_MAX_DEPTH = 64


def _data_filter_check(member: tarfile.TarInfo, dest: Path) -> None:
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is None:  # Python < 3.11.4: our own checks stand alone
        return
    if member.name.count("/") >= FILTER_MAX_DEPTH:
        return
    try:
        data_filter(member, os.fspath(dest))
    except tarfile.FilterError as e:
        raise UnsafeArchiveError(f"archive entry {_show(member.name)} refused: {e}") from None


def extract_tar(src: IO[bytes] | io.RawIOBase, writer: SafeWriter) -> None:
    """Extract a tar stream (any compression tarfile reads) through ``writer``."""
    try:
        _extract_tar(src, writer)
    finally:
        writer.close()


def _extract_tar(src: IO[bytes] | io.RawIOBase, writer: SafeWriter) -> None:
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
        _extract_zip(path, writer)
    finally:
        writer.close()


def _extract_zip(path: Path, writer: SafeWriter) -> None:
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
