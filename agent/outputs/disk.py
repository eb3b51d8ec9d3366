"""What mlsm keeps on this node's disk, measured for the node info (``mlsm node show``).

Job directories are written by jobs, so they are measured the way the agent reads every
such tree: a descriptor walk that never follows a link (:func:`agent.fsutil.walk`), any
depth, counting the blocks each entry takes (what ``du`` counts: a sparse file weighs what
it holds). Each area is a directory of the agent's data dir; one that does not exist
weighs nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from agent.fsutil import walk
from mlsm.wire.outputs import NodeDisk

log = logging.getLogger("mlsm.agent")

JOBS_DIR = "jobs"  # <agent data>/jobs/<id>/: each job's directory (its MLSM_OUTPUT_DIR)
PROJECTS_DIR = "projects"  # persistent project trees
CODE_CACHE_DIR = "cache"  # the node's content-addressed code cache
BLOCK = 512  # st_blocks counts 512-byte units


@dataclass(frozen=True, slots=True)
class TreeSize:
    bytes: int = 0
    files: int = 0


def _blocks(st: os.stat_result) -> int:
    return st.st_blocks * BLOCK


def tree_size(dir_fd: int, name: str) -> TreeSize:
    """Bytes (allocated) and files of the tree ``name`` in ``dir_fd``; links not followed,
    unreadable corners skipped. A tree missing or not a directory: what the entry weighs."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return TreeSize()
    if not stat.S_ISDIR(st.st_mode):
        return TreeSize(_blocks(st), 1)
    total, files = _blocks(st), 0
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except OSError:
        return TreeSize(total, 0)
    try:
        for e in walk(fd, on_error=lambda _exc: None):
            with contextlib.suppress(OSError):
                est = e.entry.stat(follow_symlinks=False)
                total += _blocks(est)
                if not stat.S_ISDIR(est.st_mode):
                    files += 1
    except OSError as exc:  # moved mid-walk: what was counted stands
        log.debug("measuring %s stopped: %s", name, exc)
    finally:
        os.close(fd)
    return TreeSize(total, files)


def _entries(dir_fd: int, name: str) -> int:
    """How many entries directory ``name`` of ``dir_fd`` holds (0 when it cannot be read)."""
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except OSError:
        return 0
    try:
        return len(os.listdir(fd))
    finally:
        os.close(fd)


class DiskMeter:
    """Measures the agent's data dir: each area's bytes and the filesystem's free space."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)

    def job_dir_size(self, job_id: int) -> TreeSize:
        try:
            fd = os.open(self.data_dir / JOBS_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return TreeSize()
        try:
            return tree_size(fd, str(job_id))
        finally:
            os.close(fd)

    def _area(self, name: str) -> tuple[int, int]:
        """(bytes, entries at its top) of one area of the data dir."""
        try:
            fd = os.open(self.data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return 0, 0
        try:
            size = tree_size(fd, name)
            return size.bytes, _entries(fd, name)
        finally:
            os.close(fd)

    def filesystem(self) -> tuple[int, int]:
        """(total, available) bytes of the filesystem that holds the data dir."""
        try:
            st = os.statvfs(self.data_dir)
        except OSError:
            return 0, 0
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize

    def used_pct(self) -> float:
        total, free = self.filesystem()
        return 100.0 * (total - free) / total if total else 0.0

    def measure(self) -> NodeDisk:
        """A fresh report (walks every area: run it in a thread)."""
        jobs_bytes, jobs_count = self._area(JOBS_DIR)
        projects_bytes, _ = self._area(PROJECTS_DIR)
        cache_bytes, _ = self._area(CODE_CACHE_DIR)
        total, free = self.filesystem()
        return NodeDisk(
            data_dir=str(self.data_dir),
            jobs_bytes=jobs_bytes,
            jobs_count=jobs_count,
            projects_bytes=projects_bytes,
            code_cache_bytes=cache_bytes,
            fs_total=total,
            fs_free=free,
            measured_at=time.time(),
        )
