"""Shipped code on a node: the node cache of code files, and the trees jobs run in.

**The node cache** (``<agent data>/cache/code``, a :class:`mlsm.bulk.Store` bounded by
``code_cache_bytes``) holds code files by sha256. :meth:`CodeCache.fill` fetches from the
master only the files of a snapshot that the cache lacks, as one frame stream per want
(verified on write), under a lock per snapshot: the tasks of an array and the attempts of
a job that land on one node fetch a snapshot once. A snapshot's files are pinned while a
job is being set up with them.

**A job's tree** (:meth:`CodeCache.materialize`): the agent runs as root and a job's
directory is the job's, so the tree is written by a :class:`mlsm.bulk.Sink` in a work dir
of the agent's own (``<agent data>/cache/work``, 0700), every entry created by descriptor
and chowned to the job's account, then renamed into the job's directory as ``code`` with
``RENAME_NOREPLACE``: nothing is written through a path the job could have planted. The
``code`` left by an earlier attempt is removed first without following any link in it, so
a retry runs in a fresh copy of the same snapshot.

**Projects** (:meth:`CodeCache.sync_project`): ``<agent data>/projects/<user>/<name>``,
brought up to a snapshot in place by a :class:`mlsm.bulk.InPlaceSink` (only files that
differ are written; files the snapshot does not name are left alone). ``projects/`` and
each ``<user>/`` are the agent's (0711), so a job can change files inside its project but
not swap the project's directory itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from agent.link import MasterLink
from agent.runtimes.accounts import Account
from agent.runtimes.jobfs import ensure_private_dir
from mlsm.bulk import (
    InPlaceSink,
    Manifest,
    Sink,
    Source,
    Store,
    StoreSink,
    decode_manifest,
    encode_want,
    pump,
)
from mlsm.bulk.fstree import open_dir, remove_at, remove_tree
from mlsm.bulk.want import afeed
from mlsm.errors import MlsmError, StoreFull, TransferFailed

log = logging.getLogger("mlsm.agent")

CODE_DIR = "code"  # a job's copy of its snapshot: <job dir>/code
PROJECTS_DIR_MODE = 0o711  # jobs pass through to their own project, list nothing
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _sha_list(m: Manifest) -> list[str]:
    return list(dict.fromkeys(e.sha256 for e in m.entries if e.kind == "f"))


class CodeCache:
    """See the module docstring."""

    def __init__(self, link: MasterLink, agent_data: Path, max_bytes: int) -> None:
        self.link = link
        self.agent_data = Path(agent_data)
        self.root = self.agent_data / "cache"
        self._max_bytes = max_bytes
        self._store: Store | None = None
        self._manifests: dict[str, Manifest] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.fetched_bytes = 0  # file bytes fetched from the master since start

    @property
    def store(self) -> Store:
        if self._store is None:
            ensure_private_dir(self.root)
            self._store = Store(self.root / "code", self._max_bytes)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    # ---------------------------------------------------------------- the node cache
    async def fill(self, digest: str, *, job_id: int, owner: str) -> Manifest:
        """Snapshot ``digest`` with every file in the cache, pinned for ``owner``."""
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:
            m = self._manifests.get(digest)
            raw: bytes | None = None
            if m is None:
                raw = await self.link.code_manifest(digest, job_id)
                if hashlib.sha256(raw).hexdigest() != digest:
                    raise TransferFailed(f"the master sent a wrong manifest for {digest[:12]}")
                m = await asyncio.to_thread(decode_manifest, raw)
                self._manifests[digest] = m
            store = await asyncio.to_thread(lambda: self.store)
            await asyncio.to_thread(store.pin, owner, [digest, *_sha_list(m)])
            if raw is not None:
                await asyncio.to_thread(self._keep_manifest, digest, raw)
            sink = await asyncio.to_thread(StoreSink, store, m)
            try:
                await self._pump(sink, digest, job_id)
            finally:
                await asyncio.to_thread(sink.close)
            self.fetched_bytes += sink.bytes_received
            if sink.bytes_received or sink.received:
                log.info(
                    "code %s: fetched %d file(s), %d bytes from the master (job %s)",
                    digest[:12],
                    len(sink.received),
                    sink.bytes_received,
                    job_id,
                )
            else:
                log.info("code %s: every file in the node cache (job %s)", digest[:12], job_id)
            return m

    def _keep_manifest(self, digest: str, raw: bytes) -> None:
        """The snapshot's manifest in the cache too: a fetch of a job's outputs after a
        restart still knows which files of the code copy came with the snapshot (a
        cache too full of pinned blobs for it only loses that)."""
        with contextlib.suppress(StoreFull):
            self.store.put_bytes(digest, raw)

    def snapshot_manifest(self, digest: str) -> Manifest | None:
        """Snapshot ``digest``'s manifest, from memory or the cache (None: not there, or
        not what its name says)."""
        m = self._manifests.get(digest)
        if m is not None:
            return m
        raw = self.store.read_blob(digest)
        if raw is None or hashlib.sha256(raw).hexdigest() != digest:
            return None
        try:
            return decode_manifest(raw)
        except MlsmError:
            return None

    async def _pump(self, sink: StoreSink, digest: str, job_id: int) -> None:
        while (want := sink.next_want()) is not None:
            before = sink.progress_mark()
            async with self.link.code_blobs(digest, job_id, encode_want(want)) as chunks:
                await afeed(sink, chunks)
            if sink.gone:
                raise TransferFailed(f"the master's code store lost part of {digest[:12]}")
            if sink.progress_mark() == before:
                raise TransferFailed(f"the master sent nothing useful for code {digest[:12]}")

    def release(self, owner: str) -> None:
        with contextlib.suppress(Exception):
            self.store.unpin(owner)

    # ---------------------------------------------------------------- a job's tree
    def materialize(self, digest: str, job_dir: Path, acct: Account) -> Path:
        """Write snapshot ``digest`` (filled before) as ``<job_dir>/code`` for ``acct``."""
        m = self._manifests[digest]
        work_root = ensure_private_dir(self.root / "work")
        work = work_root / f"{job_dir.name}-{secrets.token_hex(6)}"
        owner = (acct.uid, acct.gid) if acct.switch else None
        sink = Sink(m, work, owner=owner, durable=False)
        try:
            with Source.from_store(self.store, m) as source:
                pump(sink, source.chunks)
            dfd = os.open(job_dir, _DIR)
            try:
                with contextlib.suppress(FileNotFoundError):
                    remove_at(dfd, CODE_DIR)  # an earlier attempt's copy; never followed
                sink.finish(CODE_DIR, dest_dir_fd=dfd)
            finally:
                os.close(dfd)
        except BaseException:
            sink.abort()
            raise
        return job_dir / CODE_DIR

    # ---------------------------------------------------------------- projects
    def project_path(self, user: str, name: str) -> Path:
        return self.agent_data / "projects" / user / name

    def sync_project(self, digest: str, user: str, name: str, acct: Account) -> Path:
        """Bring project ``user/name`` up to snapshot ``digest`` (filled before)."""
        m = self._manifests[digest]
        with self.project_sink(m, user, name, acct) as sink:
            with Source.from_store(self.store, m) as source:
                pump(sink, source.chunks)
            sink.finish()
        return self.project_path(user, name)

    @contextlib.contextmanager
    def project_sink(
        self, m: Manifest, user: str, name: str, acct: Account
    ) -> Iterator[InPlaceSink]:
        """An :class:`InPlaceSink` bringing project ``user/name`` up to ``m`` (the
        project's directory made, for ``acct``, when new); aborted when the block fails."""
        top = self.agent_data / "projects"
        for d in (top, top / user):
            if not d.exists():
                d.mkdir(mode=PROJECTS_DIR_MODE)
                os.chmod(d, PROJECTS_DIR_MODE)
            ensure_private_dir(d)  # the agent's own real directory, not a link
        owner = (acct.uid, acct.gid) if acct.switch else None
        tfd = os.open(top, _DIR)
        try:
            ufd = open_dir(user, tfd)
        finally:
            os.close(tfd)
        try:
            try:
                os.mkdir(name, 0o755, dir_fd=ufd)
                if owner is not None:
                    nfd = open_dir(name, ufd)
                    try:
                        os.fchown(nfd, *owner)
                    finally:
                        os.close(nfd)
            except FileExistsError:
                pass
            work_root = ensure_private_dir(self.root / "work")
            work = work_root / f"project-{user}-{name}-{secrets.token_hex(6)}"
            nfd = open_dir(name, ufd)
            try:
                sink = InPlaceSink(m, nfd, work, owner=owner, durable=False)
                try:
                    yield sink
                except BaseException:
                    sink.abort()
                    raise
            finally:
                os.close(nfd)
        finally:
            os.close(ufd)

    def remove_project(self, user: str, name: str) -> None:
        path = self.project_path(user, name)
        if os.path.lexists(path):
            remove_tree(path)
