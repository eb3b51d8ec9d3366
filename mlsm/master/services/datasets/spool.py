"""The relay spool: a copy's bytes on the master's disk while they pass from node to node.

Copy and move relay the bytes through the master, so agents only ever dial out: the source
uploads the manifest and then the packed dataset to ``<data>/transfers/<id>.manifest`` and
``<id>.tar`` (:mod:`.relay`), and the target reads them back by offset. The files are the
master's alone (0600, in a 0700 directory) and are removed when the transfer ends, however
it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

SPOOL_DIR_MODE = 0o700
SPOOL_FILE_MODE = 0o600
PARTS = ("data", "manifest")


class RelaySpool:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, transfer_id: int, part: str) -> Path:
        return self.root / f"{transfer_id}.{'tar' if part == 'data' else 'manifest'}"

    async def prepare(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True, mode=SPOOL_DIR_MODE)

    async def write(self, transfer_id: int, part: str, offset: int, data: bytes) -> None:
        await asyncio.to_thread(_pwrite, self.path(transfer_id, part), offset, data)

    async def read(self, transfer_id: int, part: str, offset: int, n: int) -> bytes:
        return await asyncio.to_thread(_pread, self.path(transfer_id, part), offset, n)

    def drop(self, transfer_id: int) -> None:
        """Remove a transfer's spool files (none may be left once it ends)."""
        for part in PARTS:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(transfer_id, part))


def _pwrite(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, SPOOL_FILE_MODE)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _pread(path: Path, offset: int, n: int) -> bytes:
    if n <= 0:
        return b""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, n, offset)
    finally:
        os.close(fd)
