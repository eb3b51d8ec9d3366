"""The lab's code store: the files of the code snapshots people submit, by content.

A snapshot is a :class:`~mlsm.bulk.manifest.Manifest`; its digest is its id. The store
(:class:`mlsm.bulk.Store` at ``<data dir>/code``, bounded by ``code_store_bytes``, least
recently used first) holds each file once as a blob named by its sha256, and each manifest
as the blob named by its digest. How a snapshot comes in (:class:`CodeStore`):

1. :meth:`CodeStore.offer`: the CLI sends the manifest; the master checks it (paths,
   links, the lab's ``code_max_files``/``code_max_bytes``), keeps it, pins its blobs for the
   upload, and answers which entries it wants: blobs it lacks and, for a member, blobs whose
   bytes that member has never sent (see below).
2. :meth:`CodeStore.receive`: the CLI sends those entries as one frame stream; every blob
   is verified (its bytes must hash to its name) before it is published.
3. The submit names the digest; :meth:`CodeStore.check_access` checks the user may use
   it, :meth:`CodeStore.attach` pins its blobs for the jobs and :meth:`CodeStore.release`
   unpins them when the last of them is finished (a requeued attempt keeps them). The pin
   is the snapshot's (owner ``code:<digest>``, one row per blob), placed by its offer and
   held while its upload window (:data:`UPLOAD_PIN_S`) is open or any open job names it:
   the submit that follows an offer, the tasks of an array and a resubmit of the same
   tree pin nothing again.

Each request costs a handful of index transactions, whatever the snapshot's size: an offer
pins and looks up its blobs once; an upload's blobs are published in batches
(:class:`~mlsm.bulk.StoreSink`) and what is still wanted afterwards is what the sink still
lacks, not a second look at every blob.

**Who may use a snapshot.** A member may name only a snapshot they offered themselves whose
every file's bytes they have sent at some time (``code_proofs``): knowing a digest, or the
hashes of someone else's files, is not enough, and the store answers no question about
blobs another member sent (a member's offer always asks for them). Admins may use any
snapshot the store holds, and their offers ask only for what the store lacks.

A proof names a blob the store holds: when a blob leaves the store (evicted, or found
damaged), its proofs are deleted (:meth:`CodeStore.prune_proofs`, after each upload and
at start), so the table stays the size of the store and a member must send those bytes
again before using them once someone else brings them back.

**Agents** fetch a snapshot only for a job assigned to them that names it
(:meth:`CodeStore.may_fetch`), or for a project push sent to them.

This module is one piece: offers, uploads, job pins and proofs keep one invariant together
(a snapshot's blobs are pinned before the store is asked about them, for as long as an
upload window or an open job needs them, and a member's proofs name only blobs the store
holds); split, each part would have to re-derive the others' state.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select

from mlsm.bulk import Manifest, Source, Store, StoreSink, decode_manifest, encode_manifest
from mlsm.bulk.want import Want, afeed
from mlsm.errors import (
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    TransferFailed,
    UnavailableError,
    ValidationError,
)
from mlsm.master.db import Database
from mlsm.master.db.models import CodeProof, CodeSnapshot
from mlsm.master.db.models import Job as JobRow
from mlsm.master.security import Principal
from mlsm.master.services.settings import SettingsService
from mlsm.wire.api import FINAL_STATES
from mlsm.wire.code import CodeOffer

if TYPE_CHECKING:
    from mlsm.master.services.jobs.table import JobTable

log = logging.getLogger("mlsm.master.code")

UPLOAD_PIN_S = 3600.0  # an offered snapshot's blobs stay pinned this long for its upload
_QUERY_CHUNK = 500  # hashes per IN (...) query
UPLOAD_FRAME_SLACK = 64  # bytes of frame headers allowed per entry in an upload
_MANIFEST_CACHE = 64  # decoded manifests kept in memory (agents fetch them per request)


def _code_owner(digest: str) -> str:
    return f"code:{digest}"


def _file_blobs(m: Manifest) -> dict[str, int]:
    """sha256 -> the first entry index holding it (one per distinct blob)."""
    out: dict[str, int] = {}
    for i, e in enumerate(m.entries):
        if e.kind == "f" and e.sha256 not in out:
            out[e.sha256] = i
    return out


class CodeStore:
    """See the module docstring."""

    def __init__(
        self, db: Database, store: Store, lab_settings: SettingsService, table: JobTable
    ) -> None:
        self.db = db
        self.store = store
        self.table = table
        #: (node id, digest) pairs a project push lets a node fetch (the projects service's).
        self.pushes: set[tuple[int, str]] = set()
        self.lab_settings = lab_settings
        self._uploads: dict[str, float] = {}  # digest -> when it was last offered
        self._manifests: dict[str, Manifest] = {}
        self._jobs: dict[str, set[int]] = {}  # digest -> the open jobs that run in it
        self._job_code: dict[int, str] = {}  # open job -> its snapshot
        self._pin_lock = threading.Lock()  # a snapshot's pin and unpin decided one at a time

    # ---------------------------------------------------------------- upkeep
    async def load(self) -> None:
        """After a restart: the open jobs' snapshots stay pinned (pinned again when an
        older master pinned them per job); the pins of uploads, of finished jobs and of
        snapshots no open job names go (those of project pushes stay until their node
        reports)."""
        async with self.db.session() as s:
            q = select(JobRow).where(JobRow.state.not_in(FINAL_STATES))
            for row in (await s.execute(q)).scalars():
                if row.spec is not None and row.spec.code:
                    self._jobs.setdefault(row.spec.code, set()).add(row.id)
                    self._job_code[row.id] = row.spec.code
        owners = await asyncio.to_thread(self.store.pin_owners)
        for digest in self._jobs:
            if _code_owner(digest) not in owners:
                try:
                    m = await self.manifest(digest)
                except NotFound:
                    log.warning("code snapshot %s of open jobs is gone", digest[:12])
                    continue
                await asyncio.to_thread(
                    self.store.pin, _code_owner(digest), [digest, *_file_blobs(m)]
                )
        keep = {_code_owner(d) for d in self._jobs}
        for owner in owners - keep:
            if owner.startswith("project:"):
                continue
            await asyncio.to_thread(self.store.unpin, owner)
        await self.prune_proofs(everything=True)

    async def prune_proofs(self, *, everything: bool = False) -> int:
        """Delete the proofs of blobs that left the store since the last prune (or, with
        ``everything``, of every blob the store lacks); how many rows went."""
        gone = set(await asyncio.to_thread(self.store.drain_evicted))
        if everything:
            async with self.db.session() as s:
                named = list((await s.execute(select(CodeProof.sha256).distinct())).scalars())
            gone.update(await asyncio.to_thread(self.store.has, named, touch=False))
        if not gone:
            return 0
        removed = 0
        shas = sorted(gone)
        async with self.db.transaction() as s:
            for i in range(0, len(shas), _QUERY_CHUNK):
                res = await s.execute(
                    delete(CodeProof).where(CodeProof.sha256.in_(shas[i : i + _QUERY_CHUNK]))
                )
                removed += int(getattr(res, "rowcount", 0) or 0)
        return removed

    def release(self, job_id: int) -> None:
        """A job is finished: when no open job runs in its snapshot any more, the
        snapshot's blobs may be evicted again (the unpin runs in a thread)."""
        digest = self._job_code.pop(job_id, None)
        if digest is None:
            return
        jobs = self._jobs.get(digest)
        if jobs is not None:
            jobs.discard(job_id)
            if jobs:
                return
            del self._jobs[digest]
        if self._held(digest):
            return  # an upload window still holds it
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(self._unpin_unused, digest))
        task.add_done_callback(_log_failure)

    def _held(self, digest: str) -> bool:
        """Whether the snapshot's pin is in place (an upload window or an open job)."""
        return digest in self._uploads or bool(self._jobs.get(digest))

    def _unpin_unused(self, digest: str) -> None:
        with self._pin_lock:
            if not self._held(digest):  # nothing offered or attached since
                self.store.unpin(_code_owner(digest))

    async def expire_uploads(self, now: float | None = None) -> None:
        """Close the upload windows older than :data:`UPLOAD_PIN_S`; a snapshot no open
        job runs in is unpinned."""
        now = time.monotonic() if now is None else now
        for digest, since in list(self._uploads.items()):
            if now - since > UPLOAD_PIN_S:
                del self._uploads[digest]
                await asyncio.to_thread(self._unpin_unused, digest)

    # ---------------------------------------------------------------- manifests
    async def manifest(self, digest: str) -> Manifest:
        """The snapshot ``digest`` (NotFound when the store does not hold it)."""
        m = self._manifests.get(digest)
        if m is not None:
            return m
        raw = await asyncio.to_thread(self.store.read_blob, digest)
        if raw is None:
            raise NotFound(f"no code snapshot {digest[:12]} in the code store")
        m = await asyncio.to_thread(decode_manifest, raw)
        if len(self._manifests) >= _MANIFEST_CACHE:
            self._manifests.pop(next(iter(self._manifests)))
        self._manifests[digest] = m
        return m

    async def manifest_bytes(self, digest: str) -> bytes:
        raw = await asyncio.to_thread(self.store.read_blob, digest)
        if raw is None:
            raise NotFound(f"no code snapshot {digest[:12]} in the code store")
        return raw

    def check_limits(self, m: Manifest) -> None:
        """The lab's limits on one snapshot (the CLI checks them too, before it hashes)."""
        lab = self.lab_settings.current
        files, size = m.file_count(), m.total_bytes()
        if files > lab.code_max_files:
            raise PayloadTooLarge(
                f"the code holds {files} files, more than the lab's limit of "
                f"{lab.code_max_files} (code_max_files)",
                details={"files": files, "limit": lab.code_max_files},
            )
        if size > lab.code_max_bytes:
            raise PayloadTooLarge(
                f"the code holds {size} bytes, more than the lab's limit of "
                f"{lab.code_max_bytes} (code_max_bytes)",
                details={"bytes": size, "limit": lab.code_max_bytes},
            )

    # ---------------------------------------------------------------- offer and upload
    async def offer(self, p: Principal, body: bytes) -> CodeOffer:
        """Take a manifest; answer what to send (see the module docstring)."""
        m = await asyncio.to_thread(decode_manifest, body)
        self.check_limits(m)
        digest = m.digest()
        blobs = _file_blobs(m)
        await self.expire_uploads()
        owner = None if self._held(digest) else _code_owner(digest)
        self._uploads[digest] = time.monotonic()
        lacking = await asyncio.to_thread(self._keep_manifest, digest, m, blobs, owner)
        self._manifests.setdefault(digest, m)
        want = await self._wanted(p, blobs, lacking)
        offer = self._offer_of(digest, m, blobs, want)
        await self._record(p.name, digest, m, offer.complete)
        return offer

    def _keep_manifest(
        self, digest: str, m: Manifest, blobs: dict[str, int], owner: str | None
    ) -> set[str]:
        """Pin the snapshot for ``owner`` (None: pinned already), store its manifest, and
        answer which of its blobs the store lacks: one index transaction for the pin, the
        look and the touch (a snapshot is thousands of blobs)."""
        with self._pin_lock:
            lacking = set(self.store.has([digest, *blobs], pin=owner))
        if digest in lacking:
            with self.store.writer(digest) as w:
                w.write(encode_manifest(m))
                w.commit()
            lacking.discard(digest)
        return lacking

    async def _wanted(self, p: Principal, blobs: dict[str, int], lacking: set[str]) -> set[str]:
        """Blobs the store lacks, and for a member those they have not sent themselves."""
        if p.is_admin:
            return lacking
        return lacking | (set(blobs) - await self._proven(p.name, blobs))

    async def _proven(self, user: str, shas: Iterable[str]) -> set[str]:
        wanted = list(shas)
        found: set[str] = set()
        async with self.db.session() as s:
            for i in range(0, len(wanted), _QUERY_CHUNK):
                part = wanted[i : i + _QUERY_CHUNK]
                q = select(CodeProof.sha256).where(
                    CodeProof.user == user, CodeProof.sha256.in_(part)
                )
                found.update((await s.execute(q)).scalars())
        return found

    def _offer_of(
        self, digest: str, m: Manifest, blobs: dict[str, int], want: set[str]
    ) -> CodeOffer:
        indices = sorted(blobs[s] for s in want)
        return CodeOffer(
            digest=digest,
            files=m.file_count(),
            bytes=m.total_bytes(),
            want=indices,
            want_bytes=sum(m.entries[i].size for i in indices),
            complete=not indices,
        )

    async def _record(self, user: str, digest: str, m: Manifest, complete: bool) -> None:
        async with self.db.transaction() as s:
            row = (
                await s.execute(
                    select(CodeSnapshot).where(
                        CodeSnapshot.digest == digest, CodeSnapshot.user == user
                    )
                )
            ).scalar_one_or_none()
            if row is None:
                s.add(
                    CodeSnapshot(
                        digest=digest,
                        user=user,
                        files=m.file_count(),
                        bytes=m.total_bytes(),
                        complete=complete,
                        created_at=time.time(),
                    )
                )
            else:
                row.complete = complete

    async def receive(
        self, p: Principal, digest: str, body: AsyncIterable[bytes]
    ) -> tuple[CodeOffer, int]:
        """Take a frame stream of snapshot ``digest``'s wanted entries; answer what is
        still wanted, and how many file bytes came."""
        if not await self._offered(p.name, digest):
            raise NotFound(f"no code snapshot {digest[:12]} offered by {p.name}: offer it first")
        m = await self.manifest(digest)
        blobs = _file_blobs(m)
        need = set() if p.is_admin else set(blobs) - await self._proven(p.name, blobs)
        # The offer marked the present blobs used (and pinned them): no second touch.
        sink = await asyncio.to_thread(StoreSink, self.store, m, need=need, touch=False)
        # What an honest upload of this snapshot can be: its bytes and a header per file.
        limit = m.total_bytes() + (len(m.entries) + 1) * UPLOAD_FRAME_SLACK

        async def bounded() -> AsyncIterator[bytes]:
            seen = 0
            async for chunk in body:
                seen += len(chunk)
                if seen > limit:
                    raise PayloadTooLarge(
                        f"the upload of snapshot {digest[:12]} is larger than the snapshot"
                    )
                yield chunk

        try:
            await afeed(sink, bounded())
        except TransferFailed as exc:
            raise ValidationError(f"upload of snapshot {digest[:12]} refused: {exc}") from None
        finally:
            await asyncio.to_thread(sink.close)
        got = {m.entries[i].sha256 for i in sink.received}
        await self.prune_proofs()  # before proving: a blob evicted and sent again stays proven
        if got and not p.is_admin:
            await self._prove(p.name, got - await self._proven(p.name, got))
        # Wanted still: what the sink did not get (it started from what the store lacked
        # and what this member had not proven; the rest is pinned since the offer).
        want = {m.entries[i].sha256 for i in [*sink.pending, *sink.gone]}
        offer = self._offer_of(digest, m, blobs, want)
        await self._record(p.name, digest, m, offer.complete)
        return offer, sink.bytes_received

    async def _prove(self, user: str, shas: set[str]) -> None:
        if not shas:
            return
        async with self.db.transaction() as s:
            s.add_all(CodeProof(user=user, sha256=sha) for sha in sorted(shas))

    async def _offered(self, user: str, digest: str) -> bool:
        async with self.db.session() as s:
            q = select(CodeSnapshot.id).where(
                CodeSnapshot.digest == digest, CodeSnapshot.user == user
            )
            return (await s.execute(q)).first() is not None

    # ---------------------------------------------------------------- use
    async def check_access(self, p: Principal, digest: str) -> Manifest:
        """The snapshot, when ``p`` may run jobs in it (see the module docstring)."""
        async with self.db.session() as s:
            q = select(CodeSnapshot.user).where(
                CodeSnapshot.digest == digest, CodeSnapshot.complete.is_(True)
            )
            users = set((await s.execute(q)).scalars())
        if p.name not in users and not (p.is_admin and users):
            raise PermissionDenied(
                f"code snapshot {digest[:12]} is not one you uploaded; submit from your "
                "own directory (mlsm submit ships it)"
            )
        m = await self.manifest(digest)
        since = self._uploads.get(digest)
        if self._jobs.get(digest) or (
            since is not None and time.monotonic() - since < UPLOAD_PIN_S / 2
        ):
            return m  # complete and pinned since then: nothing can have been evicted
        self._uploads[digest] = time.monotonic()
        blobs = [digest, *_file_blobs(m)]

        def pin() -> list[str]:
            with self._pin_lock:
                return self.store.has(blobs, pin=_code_owner(digest))

        lacking = await asyncio.to_thread(pin)
        if lacking:
            raise UnavailableError(
                f"the code store no longer holds {len(lacking)} file(s) of snapshot "
                f"{digest[:12]}; submit again to send them"
            )
        return m

    async def attach(
        self, digest: str, m: Manifest, job_ids: Iterable[int], *, owner: str = ""
    ) -> None:
        """Pin the snapshot for the jobs (until the last one's :meth:`release`), or for
        ``owner``; a snapshot pinned already (offered or checked just before, or run by
        open jobs) is not pinned again."""
        ids = list(job_ids)
        owners = [owner] if owner else []
        if ids:
            if not self._held(digest):
                owners.append(_code_owner(digest))
            self._jobs.setdefault(digest, set()).update(ids)
            self._job_code.update((j, digest) for j in ids)
        if not owners:
            return
        blobs = [digest, *_file_blobs(m)]

        def pin() -> None:
            with self._pin_lock:
                for o in owners:
                    self.store.pin(o, blobs)

        await asyncio.to_thread(pin)

    # ---------------------------------------------------------------- agents
    def check_fetch(self, node_id: int, digest: str, job_id: int) -> None:
        """A node may fetch a snapshot for a job placed on it that runs in it, or for a
        project push sent to it; anything else is PermissionDenied."""
        a = self.table.active.get(job_id) if job_id else None
        if a is not None and a.node_id == node_id and a.code == digest:
            return
        if not job_id and (node_id, digest) in self.pushes:
            return
        raise PermissionDenied(f"this node has no job or project push that needs {digest[:12]}")

    def frames(self, m: Manifest, want: Want) -> AsyncIterator[bytes]:
        """The frame stream answering ``want`` from the store (read in a thread)."""
        return _serve(Source.from_store(self.store, m), want)


async def _serve(source: Source, want: Want) -> AsyncIterator[bytes]:
    it = source.batches(want)
    try:
        while True:
            batch = await asyncio.to_thread(next, it, None)
            if batch is None:
                return
            for chunk in batch:
                yield chunk
    finally:
        await asyncio.to_thread(source.close)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("code store upkeep failed: %s", task.exception())


__all__: list[str] = ["UPLOAD_PIN_S", "CodeStore"]
