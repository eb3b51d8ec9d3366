"""The agent's project commands: SyncProject and RemoveProject (see :mod:`mlsm.wire.code`).

A sync fills the node cache with the snapshot's files (:meth:`agent.codecache.CodeCache.fill`)
and brings the project's tree up to it in place, written as the project owner's account
(the one their jobs run as here); each runs as a task of its own, so a large push does not
hold up the other commands. The outcome goes to the master as a ProjectReport.
"""

from __future__ import annotations

import asyncio
import logging

from agent.codecache import CodeCache
from agent.link import MasterLink
from agent.runtimes.accounts import resolve_account
from agent.runtimes.base import RuntimeContext, RuntimeStartError
from mlsm import errors
from mlsm.wire import agent as w
from mlsm.wire import code as wc

log = logging.getLogger("mlsm.agent")


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
