"""The agent's project commands: SyncProject, CopyProject and RemoveProject (see
:mod:`mlsm.wire.code`), and the ``project USER/NAME`` trees it serves to other nodes.

A sync fills the node cache with the snapshot's files (:meth:`agent.codecache.CodeCache.fill`)
and brings the project's tree up to it in place, written as the project owner's account
(the one their jobs run as here); each runs as a task of its own, so a large push does not
hold up the other commands. The outcome goes to the master as a ProjectReport.

A copy (an admin's, from another node) pulls the source node's manifest of the project,
then the frames of what the in-place sink lacks, through the master's relay
(``/agent/v1/projects/pull``), into the same in-place sink. The source side is the bulk
service's source kind ``project`` (:func:`project_resolver`): the tree at
``<agent data>/projects/<user>/<name>``, named only by validated names and walked by
descriptor, so nothing outside a project is ever served (links in it are left out).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

from agent.bulk.sources import Tree
from agent.codecache import CodeCache
from agent.link import MasterLink
from agent.runtimes.accounts import resolve_account
from agent.runtimes.base import RuntimeContext, RuntimeStartError
from mlsm import errors
from mlsm.bulk import InPlaceSink, Manifest, decode_manifest, encode_want, validate_manifest
from mlsm.bulk.want import afeed
from mlsm.wire import agent as w
from mlsm.wire import code as wc

log = logging.getLogger("mlsm.agent")

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def project_resolver(agent_data: Path) -> Callable[[str], Tree]:
    """Source kind ``project``: ``USER/NAME`` is that user's project tree here. Both names
    must be plain names, and every level a real directory (no link followed)."""
    top = Path(agent_data) / "projects"

    def resolve(spec_name: str) -> Tree:
        user, sep, name = spec_name.partition("/")
        if not sep or not _SAFE_NAME.match(user) or not _SAFE_NAME.match(name):
            raise errors.NotFound(f"no project {spec_name!r} here")
        path = top
        for part in (None, user, name):
            if part is not None:
                path = path / part
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                raise errors.NotFound(f"this node holds no project {user}/{name}") from None
            if not stat.S_ISDIR(st.st_mode):
                raise errors.UnsafeTree(f"project {user}/{name} is not a directory here")
        return Tree(path)

    return resolve


class ProjectCommands:
    def __init__(self, ctx: RuntimeContext, cache: CodeCache, link: MasterLink) -> None:
        self.ctx = ctx
        self.cache = cache
        self.link = link
        self._tasks: set[asyncio.Task[None]] = set()

    async def sync(self, cmd: wc.SyncProject) -> None:
        task = asyncio.get_running_loop().create_task(self._sync(cmd))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sync(self, cmd: wc.SyncProject) -> None:
        owner = f"project:{cmd.project_id}"
        try:
            spec = w.JobSpec(
                job_id=0, argv=["-"], user=cmd.user, unix_user=cmd.unix_user, admin=cmd.admin
            )
            acct = resolve_account(self.ctx, spec)
            m = await self.cache.fill(cmd.digest, job_id=0, owner=owner)
            path = await asyncio.to_thread(
                self.cache.sync_project, cmd.digest, cmd.user, cmd.name, acct
            )
            rep = wc.ProjectReport(
                project_id=cmd.project_id,
                state="ready",
                digest=cmd.digest,
                files=m.file_count(),
                bytes=m.total_bytes(),
                path=str(path),
            )
        except (errors.MlsmError, RuntimeStartError, OSError) as exc:
            log.warning("project %s/%s: sync failed: %s", cmd.user, cmd.name, exc)
            rep = wc.ProjectReport(project_id=cmd.project_id, state="failed", message=str(exc))
        finally:
            await asyncio.to_thread(self.cache.release, owner)
        await self._report(rep)

    async def copy(self, cmd: wc.CopyProject) -> None:
        task = asyncio.get_running_loop().create_task(self._copy(cmd))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _copy(self, cmd: wc.CopyProject) -> None:
        try:
            spec = w.JobSpec(
                job_id=0, argv=["-"], user=cmd.user, unix_user=cmd.unix_user, admin=cmd.admin
            )
            acct = resolve_account(self.ctx, spec)
            raw = await self._pull_bytes(wc.ProjectPull(copy_id=cmd.copy_id, what="manifest"))
            m = await asyncio.to_thread(_decode_checked, raw)
            digest = m.digest()
            with self.cache.project_sink(m, cmd.user, cmd.name, acct) as sink:
                await self._pump(sink, cmd.copy_id, digest)
                await asyncio.to_thread(sink.finish)
            rep = wc.ProjectReport(
                project_id=cmd.project_id,
                state="ready",
                digest=digest,
                files=m.file_count(),
                bytes=m.total_bytes(),
                path=str(self.cache.project_path(cmd.user, cmd.name)),
            )
            log.info(
                "project %s/%s: copied from %s (%d files)",
                cmd.user,
                cmd.name,
                cmd.source,
                m.file_count(),
            )
        except (errors.MlsmError, RuntimeStartError, OSError) as exc:
            log.warning("project %s/%s: copy failed: %s", cmd.user, cmd.name, exc)
            rep = wc.ProjectReport(project_id=cmd.project_id, state="failed", message=str(exc))
        await self._report(rep)

    async def _pull_bytes(self, req: wc.ProjectPull) -> bytes:
        out = bytearray()
        async with self.link.stream("projects/pull", req) as chunks:
            async for chunk in chunks:
                out += chunk
                if len(out) > wc.MAX_MANIFEST_BYTES:
                    raise errors.PayloadTooLarge("the source's project manifest is too large")
        return bytes(out)

    async def _pump(self, sink: InPlaceSink, copy_id: str, digest: str) -> None:
        """Ask for what ``sink`` lacks until it lacks nothing (a response that brings no
        progress at all is a failure, not a loop)."""
        while (want := sink.next_want()) is not None:
            before = sink.progress_mark()
            req = wc.ProjectPull(copy_id=copy_id, want=encode_want(want), manifest_digest=digest)
            async with self.link.stream("projects/pull", req) as chunks:
                await afeed(sink, chunks)
            if sink.progress_mark() == before:
                raise errors.TransferFailed("the source node sent nothing useful for the copy")

    async def remove(self, cmd: wc.RemoveProject) -> None:
        try:
            await asyncio.to_thread(self.cache.remove_project, cmd.user, cmd.name)
            rep = wc.ProjectReport(project_id=cmd.project_id, state="removed")
        except OSError as exc:
            rep = wc.ProjectReport(project_id=cmd.project_id, state="failed", message=str(exc))
        await self._report(rep)

    async def _report(self, rep: wc.ProjectReport) -> None:
        try:
            await self.link.report_project(rep)
        except errors.MlsmError as exc:
            log.warning("could not report project %s: %s", rep.project_id, exc)


def _decode_checked(raw: bytes) -> Manifest:
    m = decode_manifest(raw)
    validate_manifest(m)
    return m
