"""Copying a dataset between nodes: packing on the source, receiving on the target.

Servers share no storage and never talk to each other; the bytes go through the master.
The source agent sends :func:`digest`'s manifest first (relative path -> sha256) and then
the stream of :func:`pack_dataset`; the target agent runs :func:`receive_dataset`, which
unpacks into a private ``.mlsm-receive-*`` temp dir with the same safe extraction as an
import (regular files and directories only: a pack never contains links, so a stream
that does is refused), checks every file against the manifest (missing, extra or
differing files fail, the first one named), and renames the result into place with
``RENAME_NOREPLACE``. On any error or cancel nothing remains under the root.

The stream is a plain uncompressed POSIX (pax) tar, written by hand so that a file of any
size streams in ``chunk_size`` pieces instead of being buffered whole. Symlinks, sockets,
fifos and devices in the source are skipped (the manifest skips them too). A dataset
that is a single file arrives as a directory holding that file; both have the same
content digest.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import os
import stat
import tarfile
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from agent.fsutil import walk
from mlsm.wire.agent import DatasetEntry, TransferProgress

from ._fs import cleanup, prepare_target, rename_noreplace
from ._tasks import Progress, run_thread_cancellable
from .archives import extract_tar
from .errors import (
    DatasetCancelled,
    DatasetError,
    TransferVerifyError,
    UnsafeArchiveError,
)
from .extract import Limits, SafeWriter
from .paths import validate_dataset_name
from .scan import digest, manifest_digest, scan_entry

__all__ = ["digest", "pack_dataset", "receive_dataset", "verify_manifest"]

CHUNK_SIZE = 1 << 20  # bytes per yielded chunk
READ_BLOCK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE  # 512
MAX_TRAILING = 1 << 20  # bytes tolerated after the tar end marker
_POLL = 0.1  # seconds a receiving thread waits for a chunk before checking for stop


# ------------------------------------------------------------------ packing
def _header(name: str, st: os.stat_result, kind: bytes, size: int = 0) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.size = size
    ti.mode = stat.S_IMODE(st.st_mode) & 0o755
    ti.mtime = int(st.st_mtime)
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


@dataclass(slots=True)
class _Member:
    """One packed entry; for a file, ``name`` opened relative to ``dir_fd`` (None: a path)."""

    rel: str  # the name in the archive
    name: str
    dir_fd: int | None
    is_dir: bool
    st: os.stat_result | None  # a directory's lstat


def _iter_members(path: str) -> Iterator[_Member]:
    """The entries to pack, parents before children, each directory's in sorted order.

    Walked by descriptor (:func:`agent.fsutil.walk`), so a dataset of any depth packs;
    a member's ``dir_fd`` is valid until the next one is asked for.
    """
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        yield _Member(os.path.basename(path), path, None, False, None)
        return
    if not stat.S_ISDIR(st.st_mode):
        raise DatasetError(f"{path!r} is neither a directory nor a regular file")
    for w in walk(path, sort=True):
        e = w.entry
        if e.is_dir(follow_symlinks=False):
            yield _Member(w.rel, e.name, w.dir_fd, True, e.stat(follow_symlinks=False))
        elif e.is_file(follow_symlinks=False):
            yield _Member(w.rel, e.name, w.dir_fd, False, None)


def pack_dataset(
    path: Path | str,
    *,
    chunk_size: int = CHUNK_SIZE,
    should_stop: threading.Event | None = None,
) -> Iterator[bytes]:
    """Stream the dataset at ``path`` as an uncompressed tar, in chunks of ~chunk_size.

    Blocking (file reads): run it in a worker thread. Raises :class:`DatasetError` if a
    file shrinks while it is being packed (the receiver's manifest check would fail anyway).
    """
    out = bytearray()
    buf = bytearray(READ_BLOCK)
    view = memoryview(buf)
    for m in _iter_members(os.fspath(path)):
        if should_stop is not None and should_stop.is_set():
            raise DatasetCancelled("cancelled")
        if m.is_dir:
            assert m.st is not None
            out += _header(m.rel, m.st, tarfile.DIRTYPE)
            continue
        fd = os.open(m.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=m.dir_fd)
        with open(fd, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            size = st.st_size
            out += _header(m.rel, st, tarfile.REGTYPE, size)
            left = size
            while left:
                n = f.readinto(view[: min(READ_BLOCK, chunk_size, left)])
                if not n:
                    raise DatasetError(f"file {m.rel!r} shrank while it was being packed")
                out += view[:n]
                left -= n
                if len(out) >= chunk_size:
                    yield bytes(out)
                    out.clear()
                    if should_stop is not None and should_stop.is_set():
                        raise DatasetCancelled("cancelled")
        pad = -size % _BLOCK
        out += b"\0" * pad
        if len(out) >= chunk_size:
            yield bytes(out)
            out.clear()
    out += b"\0" * (2 * _BLOCK)  # end-of-archive marker
    yield bytes(out)


# ------------------------------------------------------------------ receiving
class _ChunkReader(io.RawIOBase):
    """A blocking ``read(n)`` for the extraction thread, pulling from an async iterator.

    Each chunk is fetched on the event loop (``run_coroutine_threadsafe``), which also
    reports progress there; the thread checks its stop flag while it waits. A raw stream
    only so that it is the file object ``tarfile`` is typed to take: tarfile's stream mode
    only reads.
    """

    def __init__(
        self,
        fetch: Callable[[], Coroutine[Any, Any, bytes | None]],
        loop: asyncio.AbstractEventLoop,
        stop: threading.Event,
    ) -> None:
        super().__init__()
        self._fetch = fetch
        self._loop = loop
        self._stop = stop
        self._buf = bytearray()
        self._eof = False

    def _pull(self) -> None:
        fut = asyncio.run_coroutine_threadsafe(self._fetch(), self._loop)
        while True:
            if self._stop.is_set():
                fut.cancel()
                raise DatasetCancelled("cancelled")
            try:
                chunk = fut.result(timeout=_POLL)
                break
            except concurrent.futures.TimeoutError:
                continue
        if chunk is None:
            self._eof = True
        else:
            self._buf += chunk

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or len(self._buf) < n):
            self._pull()
        if n < 0 or n >= len(self._buf):
            data = bytes(self._buf)
            self._buf.clear()
        else:
            data = bytes(self._buf[:n])
            del self._buf[:n]
        return data


def verify_manifest(expected: dict[str, str], actual: dict[str, str]) -> None:
    """Raise TransferVerifyError naming the first (sorted) path that differs."""
    for rel in sorted(expected.keys() | actual.keys()):
        want = expected.get(rel)
        got = actual.get(rel)
        if want == got:
            continue
        if got is None:
            raise TransferVerifyError(f"file {rel!r} is missing from the received copy")
        if want is None:
            raise TransferVerifyError(f"file {rel!r} in the received copy is not in the manifest")
        raise TransferVerifyError(f"file {rel!r} differs: expected sha256 {want}, received {got}")


async def receive_dataset(
    chunks: AsyncIterator[bytes],
    root: Path,
    name: str,
    manifest: dict[str, str],
    *,
    max_bytes: int,
    expected_digest: str = "",
    cancel: asyncio.Event | None = None,
    progress: Callable[[TransferProgress], None] | None = None,
    command_id: int = 0,
) -> DatasetEntry:
    """Unpack a :func:`pack_dataset` stream into ``<root>/<name>``, verified file by file.

    ``expected_digest`` (optional) is checked against ``manifest`` first, so a manifest
    altered on the way is caught too. The returned entry carries the verified digest.
    """
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")
    cancel = cancel or asyncio.Event()
    report = Progress(command_id, progress or (lambda _p: None))
    tmp: Path | None = None
    it = aiter(chunks)
    done = 0

    async def fetch() -> bytes | None:
        nonlocal done
        try:
            chunk = await anext(it)
        except StopAsyncIteration:
            return None
        done += len(chunk)
        report.update(done, "receiving")
        return chunk

    try:
        name = validate_dataset_name(name)
        want_digest = manifest_digest(manifest)
        if expected_digest and want_digest != expected_digest:
            raise TransferVerifyError(
                f"manifest digest {want_digest} does not match the expected {expected_digest}"
            )
        target, work_dir = await asyncio.to_thread(prepare_target, root, name, "receive")
        tmp = work_dir
        data = work_dir / "data"
        await asyncio.to_thread(os.mkdir, data, 0o755)
        loop = asyncio.get_running_loop()

        def work(stop: threading.Event) -> dict[str, str]:
            writer = SafeWriter(
                data,
                Limits(max_bytes=max_bytes, allow_links=False),
                should_stop=stop.is_set,
                hash_files=True,
            )
            extract_tar(_ChunkReader(fetch, loop, stop), writer)
            assert writer.hashes is not None
            return writer.hashes

        hashes = await run_thread_cancellable(work, cancel)
        trailing = 0
        while (rest := await fetch()) is not None:  # zero padding after the end marker
            trailing += len(rest)
            if trailing > MAX_TRAILING:
                raise UnsafeArchiveError("the stream goes on after the end of the archive")
        report.update(done, "verifying", force=True)
        verify_manifest(manifest, hashes)
        if cancel.is_set():
            raise DatasetCancelled("cancelled")
        rename_noreplace(data, target)
        entry = await asyncio.to_thread(scan_entry, target.parent, name)
    except DatasetCancelled:
        report.final("cancelled", "cancelled")
        raise
    except DatasetError as e:
        report.final("failed", e.message)
        raise
    except asyncio.CancelledError:
        report.final("cancelled", "cancelled")
        raise
    except OSError as e:
        msg = f"receiving {name!r} failed: {e}"
        report.final("failed", msg)
        raise DatasetError(msg) from e
    finally:
        if tmp is not None:
            await asyncio.to_thread(cleanup, tmp)
    report.final("succeeded", f"received {entry.files} files, {entry.size} bytes")
    return msgspec.structs.replace(entry, digest=want_digest)
