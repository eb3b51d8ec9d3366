"""Deep directory trees and archives for tests: thousands of levels, built without ever
using a path longer than one name (a 5,000-deep path is far past PATH_MAX)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

DEEP = 5_000  # levels of the deepest trees the unit tests use
LAB_DEEP = 1_500  # levels of the trees the integration tests give real agents


def make_deep(
    top: Path,
    depth: int,
    *,
    name: str = "d",
    file_every: int = 0,
    link_to: Path | None = None,
    link_every: int = 0,
) -> int:
    """Make ``top/name/name/...`` ``depth`` levels deep; return how many files it holds.

    Every ``file_every`` levels a file ``f`` (content: its level, as text) is put in the
    directory; every ``link_every`` levels a symlink ``out`` to ``link_to`` (an outside
    directory that must survive whatever is done to the tree). The last level always holds
    ``bottom.txt`` ("bottom").
    """
    top.mkdir(parents=True, exist_ok=True)
    files = 0
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(1, depth + 1):
            os.mkdir(name, 0o755, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
            if file_every and level % file_every == 0:
                _write_at(fd, "f", str(level).encode())
                files += 1
            if link_to is not None and link_every and level % link_every == 0:
                os.symlink(str(link_to), "out", dir_fd=fd)
        _write_at(fd, "bottom.txt", b"bottom")
    finally:
        os.close(fd)
    return files + 1


def _write_at(dir_fd: int, name: str, data: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
    with open(fd, "wb") as f:
        f.write(data)


def deepest_rel(depth: int, name: str = "d") -> str:
    """The relative path of ``bottom.txt`` in a tree from :func:`make_deep`."""
    return "/".join([name] * depth + ["bottom.txt"])


def deep_tar(depth: int, *, name: str = "d", last: tarfile.TarInfo | None = None) -> bytes:
    """An uncompressed PAX tar of a ``depth``-level chain of directories with
    ``bottom.txt`` at the end, then ``last`` (e.g. a hostile entry) if given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        path = ""
        for _ in range(depth):
            path = f"{path}/{name}" if path else name
            ti = tarfile.TarInfo(path)
            ti.type = tarfile.DIRTYPE
            ti.mode = 0o755
            tf.addfile(ti)
        ti = tarfile.TarInfo(f"{path}/bottom.txt")
        ti.size = 6
        tf.addfile(ti, io.BytesIO(b"bottom"))
        if last is not None:
            tf.addfile(last, io.BytesIO(b"x" * last.size) if last.isreg() else None)
    return buf.getvalue()


def open_fds(under: Path) -> int:
    """How many file descriptors this process has open on ``under`` or below it (a removed
    directory's still ends in " (deleted)"). Counting only these keeps the check exact while
    other threads of the test process open and close descriptors of their own."""
    prefix = str(under)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target == prefix or target.startswith(prefix + "/"):
            count += 1
    return count


def remove_all_under(path: Path) -> None:
    """Empty ``path`` with :func:`agent.fsutil.remove_tree` (pytest's own clean-up of its
    temp dirs is ``shutil.rmtree``, which dies on a deep tree)."""
    from agent.fsutil import remove_tree

    if path.is_dir():
        for name in os.listdir(path):
            remove_tree(path / name)
