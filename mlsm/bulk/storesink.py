"""Filling a content-addressed store from a frame stream: the code store's upload, an agent
filling its node cache.

:class:`StoreSink` is a :class:`~mlsm.bulk.want.Receiver` like the tree sinks, without a
journal (a cut blob is fetched again from where this sink got to; a new sink starts it
from 0); it writes through :class:`~mlsm.bulk.cas.BlobWriter`, so every blob is verified
before :class:`~mlsm.bulk.cas.Store` publishes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mlsm.errors import TransferFailed

from .cas import PUBLISH_BATCH_BLOBS, PUBLISH_BATCH_BYTES, BlobWriter, Store
from .frames import Flag, FrameError, FrameReader
from .manifest import Manifest, show_path, validate_manifest
from .want import WANT_BYTES, WANT_ITEMS, Want, batch_wants

__all__ = ["StoreSink"]


class StoreSink:
    """Receives the blobs of ``manifest`` that ``store`` lacks (one per distinct sha256)
    from frame streams; a :class:`~mlsm.bulk.want.Receiver`.

    Room for every missing blob is made once, up front (StoreFull before a byte is
    sent); each blob is verified as it completes, and verified blobs are published in
    batches (:data:`PUBLISH_BATCH_BLOBS`, at the end of a response, on :meth:`flush` and
    :meth:`close`): one index transaction per batch, not two per blob. ``received`` lists
    the entries whose blob was published.

    ``need`` names blobs to receive (and verify) even when the store holds them: a sender
    proving it has those bytes, not only their hashes (the master's code store does not
    let a member use someone else's blobs by naming them). ``touch=False`` leaves the
    last use of the blobs present as it is (a caller that just marked them used)."""

    def __init__(
        self,
        store: Store,
        manifest: Manifest,
        *,
        max_attempts: int = 3,
        need: Iterable[str] = (),
        touch: bool = True,
    ) -> None:
        validate_manifest(manifest)
        self.store = store
        self.entries = manifest.entries
        self.max_attempts = max(1, max_attempts)
        first: dict[str, int] = {}
        for index, e in enumerate(self.entries):
            if e.kind == "f" and e.sha256 not in first:
                first[e.sha256] = index
        missing = set(store.has(first, touch=touch)) | set(need)
        self._pending: dict[int, None] = {i: None for s, i in first.items() if s in missing}
        self._writers: dict[int, BlobWriter] = {}
        self._verified: list[tuple[int, tuple[Path, str, int]]] = []
        self._verified_bytes = 0
        store.make_room({self.entries[i].sha256: self.entries[i].size for i in self._pending})
        self._failures: dict[int, int] = {}
        self._reader = FrameReader()
        self._mark = 0
        self.gone: list[int] = []
        self.received: list[int] = []  # entries whose blob was written and verified
        self.bytes_received = 0
        for index in list(self._pending):
            if self.entries[index].size == 0:  # the empty blob needs no bytes
                self._writer(index)
                self._finish_blob(index)
        if not self._pending:
            self.flush()

    @property
    def complete(self) -> bool:
        return not self._pending and not self._verified

    @property
    def pending(self) -> list[int]:
        """Entries whose blob is still to come (not received, or damaged and wanted again)."""
        return list(self._pending)

    def flush(self) -> None:
        """Publish the blobs verified so far (one transaction)."""
        batch, self._verified, self._verified_bytes = self._verified, [], 0
        if batch:
            self.store.publish_verified([b for _, b in batch])
            self.received.extend(index for index, _ in batch)

    def progress_mark(self) -> int:
        return self._mark

    def next_want(self, *, budget: int = WANT_BYTES, max_items: int = WANT_ITEMS) -> Want | None:
        self._reader = FrameReader()
        items = ((i, self._writers[i].size if i in self._writers else 0) for i in self._pending)
        missing = ((i, off, self.entries[i].size - off) for i, off in items)
        return next(batch_wants(missing, budget=budget, max_items=max_items), None)

    def feed(self, chunk: bytes | bytearray | memoryview) -> bool:
        for frame in self._reader.feed(chunk):
            index = frame.index
            if frame.flags & Flag.ERROR:
                raise TransferFailed(f"the source failed: {frame.message()}")
            if frame.flags & Flag.GONE:
                if index in self._pending:
                    self._drop(index)
                    del self._pending[index]
                    self.gone.append(index)
                    self._mark += 1
            if frame.flags & Flag.END:
                self.flush()
                return True
            if frame.flags:
                continue
            if index >= len(self.entries) or self.entries[index].kind != "f":
                raise FrameError(f"malformed frame stream: data for entry {index}, not a file")
            if index not in self._pending:
                continue
            w = self._writer(index)
            if frame.offset > w.size:
                raise FrameError(f"malformed frame stream: a gap in blob of entry {index}")
            data = frame.data[w.size - frame.offset :]
            if w.size + len(data) > self.entries[index].size:
                raise FrameError(f"malformed frame stream: entry {index} is longer than its size")
            if data:
                w.write(data)
                self.bytes_received += len(data)
                self._mark += len(data)
            if w.size == self.entries[index].size:
                self._finish_blob(index)
        if not self._pending or (
            len(self._verified) >= PUBLISH_BATCH_BLOBS
            or self._verified_bytes >= PUBLISH_BATCH_BYTES
        ):
            self.flush()
        return False

    def _writer(self, index: int) -> BlobWriter:
        w = self._writers.get(index)
        if w is None:
            entry = self.entries[index]
            w = self._writers[index] = self.store.writer(entry.sha256)  # room made up front
        return w

    def _finish_blob(self, index: int) -> None:
        w = self._writers.pop(index)
        self._mark += 1
        try:
            verified = w.verify()
        except TransferFailed:
            count = self._failures[index] = self._failures.get(index, 0) + 1
            if count >= self.max_attempts:
                raise TransferFailed(
                    f"{show_path(self.entries[index].path)} arrived damaged {count} times; "
                    "giving up"
                ) from None
            return
        del self._pending[index]
        self._verified.append((index, verified))
        self._verified_bytes += verified[2]

    def _drop(self, index: int) -> None:
        w = self._writers.pop(index, None)
        if w is not None:
            w.abort()

    def close(self) -> None:
        """Publish the blobs verified so far; drop half-written ones (nothing partial is
        ever published)."""
        for index in list(self._writers):
            self._drop(index)
        self.flush()
