"""A job's outputs for the dashboard, through the typed client: a text file's bytes (to
view its tail and follow it) and a download into a directory of this machine.

Both use the fetch machinery of ``mlsm outputs get`` (:mod:`mlsm.bulk`): a manifest, then
frames for a want. A view asks for one byte range of one file; a download brings a
directory up to the manifest with an :class:`~mlsm.bulk.InPlaceSink` (verified by hash,
files already right kept, resumable from its work dir), writing on a worker thread so the
screen never blocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlsm import errors
from mlsm.bulk import Flag, FrameReader, InPlaceSink, Want, apump
from mlsm.client import AsyncClient

WORK_PREFIX = ".mlsm-get-"


@dataclass(frozen=True)
class OutputText:
    """Bytes ``[start, start + len(data))`` of a file whose size is ``size`` now."""

    data: bytes
    start: int
    size: int


@dataclass(frozen=True)
class Downloaded:
    dest: str
    files: int
    bytes: int
    changed: int  # files that changed while fetched (the job still runs)


async def read_output(
    client: AsyncClient, job_id: int, path: str, start: int | None, limit: int
) -> OutputText:
    """The last ``limit`` bytes of the file (``start`` None), or its bytes from ``start``."""
    manifest = await client.jobs.outputs_manifest(job_id, [path])
    found = [(i, e) for i, e in enumerate(manifest.entries) if e.path == path and e.kind == "f"]
    if not found:
        raise errors.NotFound(f"{path} is not a regular file of job {job_id}'s outputs")
    index, entry = found[0]
    begin = max(0, entry.size - limit) if start is None else min(start, entry.size)
    length = min(limit, entry.size - begin)
    if length <= 0:
        return OutputText(b"", begin, entry.size)
    want = Want([(index, begin, length)])
    reader = FrameReader()
    out = bytearray()
    async for chunk in client.jobs.outputs_frames(job_id, [path], manifest.digest(), want):
        for frame in reader.feed(chunk):
            if frame.flags & Flag.ERROR:
                raise errors.TransferFailed(frame.message())
            if frame.flags & (Flag.END | Flag.GONE):
                return OutputText(bytes(out), begin, entry.size)
            out += frame.data
    return OutputText(bytes(out), begin, entry.size)


async def download_outputs(
    client: AsyncClient, job_id: int, paths: Sequence[str], dest: Path
) -> Downloaded:
    """Fetch ``paths`` of the job's outputs (all when empty) into ``dest``."""
    manifest = await client.jobs.outputs_manifest(job_id, list(paths))
    digest = manifest.digest()
    root = await asyncio.to_thread(_prepare, dest)
    work = root / f"{WORK_PREFIX}{job_id}-{digest[:16]}"
    sink = await asyncio.to_thread(InPlaceSink, manifest, root, work)

    async def fetch(want: Want) -> AsyncIterable[bytes]:
        return client.jobs.outputs_frames(job_id, list(paths), digest, want)

    async def feed(chunk: bytes) -> bool:
        return await asyncio.to_thread(sink.feed, chunk)

    try:
        await apump(sink, fetch, feed=feed)
        progress = sink.progress()
        changed = len(sink.gone)
        await asyncio.to_thread(sink.finish, allow_gone=True)
    finally:
        sink.close()
    return Downloaded(str(root), progress.files_total, progress.bytes_total, changed)


def _prepare(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    return dest.resolve()
