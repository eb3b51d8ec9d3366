"""All master access of the dashboard, in one place.

:class:`DataSource` is the interface the screens use: async methods returning
:mod:`mlsm.wire.api` structs, plus the bundles one screen fetches at once.
:class:`MasterSource` implements it with :class:`mlsm.client.AsyncClient` (every path and
the log-follow parser live there); tests pass a fake with canned structs instead.
Errors are :mod:`mlsm.errors` classes; an unreachable master raises ``UnavailableError``.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mlsm.client import AsyncClient, Verify
from mlsm.wire import api
from mlsm.wire import usage as wu
from mlsm.wire.channels import ForwardInfo
from mlsm.wire.events import Event
from mlsm.wire.follow import LogEvent
from mlsm.wire.outputs import OutputListing

if TYPE_CHECKING:  # loaded when a job's files are first read (not for the first screen)
    from tui.outputs import Downloaded, OutputText

#: Bytes of an existing log fetched when a log view opens (the tail, not the whole file).
LOG_TAIL_BYTES = 1 << 20
#: Bytes of an output file shown when it is opened in the Files tab (its tail).
OUTPUT_VIEW_BYTES = 256 << 10


@dataclass
class Overview:
    """What the overview shows, fetched together: the totals and one row per node."""

    summary: api.LabSummary
    nodes: list[api.NodeRow] = field(default_factory=list)


@dataclass
class NodeDetail:
    node: api.Node
    history: api.NodeHistory | None
    jobs: list[api.Job]
    datasets: list[api.Dataset]


@dataclass
class AdminData:
    users: list[api.User]
    join_tokens: list[api.JoinToken]
    nodes: list[api.Node]
    audit: list[api.AuditEntry]
    verify: api.AuditVerify | None


class DataSource(ABC):
    """What the dashboard needs from a master. Subclasses implement every abstract method."""

    url: str = ""

    async def aclose(self) -> None:
        return None

    @abstractmethod
    def set_token(self, token: str) -> None: ...

    # ------------------------------------------------------------ identity
    @abstractmethod
    async def login(self, username: str, password: str) -> api.LoginReply: ...
    @abstractmethod
    async def me(self) -> api.Me: ...

    # ------------------------------------------------------------ lab
    @abstractmethod
    async def summary(self) -> api.LabSummary: ...
    @abstractmethod
    async def nodes(self) -> list[api.Node]: ...
    @abstractmethod
    async def node(self, name: str) -> api.Node: ...
    @abstractmethod
    async def node_history(self, name: str, window_s: int = 600) -> api.NodeHistory: ...
    @abstractmethod
    async def drain(self, name: str) -> api.Node: ...
    @abstractmethod
    async def resume(self, name: str) -> api.Node: ...
    @abstractmethod
    async def remove_node(self, name: str, force: bool = False) -> None: ...

    # ------------------------------------------------------------ jobs
    @abstractmethod
    async def jobs(
        self,
        *,
        state: str | None = None,
        user: str | None = None,
        node: str | None = None,
        all: bool = True,
        limit: int = 2000,
    ) -> api.JobList: ...
    @abstractmethod
    async def job(self, job_id: int) -> api.Job: ...

    async def forwards(self, job_id: int) -> list[ForwardInfo]:
        """The port forwards held open into a running job (``mlsm forward``)."""
        return []

    def shell_env(self) -> dict[str, str]:
        """What ``mlsm shell`` needs to reach the master as the dashboard's user."""
        return {}

    @abstractmethod
    async def submit(self, spec: api.JobSubmit) -> api.SubmitReply: ...
    @abstractmethod
    async def cancel(self, ids: list[int]) -> api.CancelResult: ...
    @abstractmethod
    async def log(self, job_id: int, offset: int = 0, limit: int = LOG_TAIL_BYTES) -> bytes: ...
    @abstractmethod
    def follow_log(self, job_id: int, offset: int = 0) -> AsyncIterator[LogEvent]:
        """The log from ``offset`` live: ``LogText`` chunks, then ``LogEnded``."""

    # ------------------------------------------------------------ a job's outputs
    @abstractmethod
    async def outputs(self, job_id: int, path: str = "") -> OutputListing: ...
    @abstractmethod
    async def read_output(
        self, job_id: int, path: str, start: int | None, limit: int = OUTPUT_VIEW_BYTES
    ) -> OutputText:
        """The file's last ``limit`` bytes (``start`` None) or its bytes from ``start``."""

    @abstractmethod
    async def download_outputs(self, job_id: int, paths: list[str], dest: Path) -> Downloaded:
        """Fetch the paths (all outputs when empty) into ``dest`` on this machine."""

    # ------------------------------------------------------------ datasets
    @abstractmethod
    async def datasets(self, node: str | None = None) -> list[api.Dataset]: ...
    @abstractmethod
    async def dataset(self, name: str) -> api.Dataset: ...
    @abstractmethod
    async def import_dataset(self, req: api.DatasetImport) -> api.Transfer: ...
    @abstractmethod
    async def transfer_dataset(self, req: api.DatasetTransfer) -> api.Transfer: ...
    @abstractmethod
    async def delete_dataset(self, name: str, node: str) -> None: ...
    @abstractmethod
    async def transfers(self) -> list[api.Transfer]: ...

    # ------------------------------------------------------------ admin
    @abstractmethod
    async def users(self) -> list[api.User]: ...
    @abstractmethod
    async def create_user(self, req: api.UserCreate) -> api.User: ...
    @abstractmethod
    async def update_user(self, name: str, req: api.UserUpdate) -> api.User: ...
    @abstractmethod
    async def join_tokens(self) -> list[api.JoinToken]: ...
    @abstractmethod
    async def create_join_token(self, req: api.JoinTokenCreate) -> api.JoinTokenCreated: ...
    @abstractmethod
    async def revoke_join_token(self, token_id: int) -> None: ...
    @abstractmethod
    async def audit(self, limit: int = 500) -> list[api.AuditEntry]: ...
    @abstractmethod
    async def audit_verify(self) -> api.AuditVerify: ...
    @abstractmethod
    async def usage_report(self, *, since: float, until: float) -> wu.UsageReport: ...
    @abstractmethod
    async def usage_timeline(
        self, *, since: float, until: float, steps: int
    ) -> wu.UsageTimeline: ...

    # ------------------------------------------------------------ events
    @abstractmethod
    async def events(self, limit: int = 200) -> list[Event]: ...

    # ------------------------------------------------------------ bundles for screens
    async def overview(self) -> Overview:
        """From the whole node and job lists; a master answers it in one small call."""
        summary, nodes, running = await asyncio.gather(
            self.summary(), self.nodes(), self.jobs(state="running", limit=5000)
        )
        on: dict[str, list[tuple[int, str]]] = {}
        for job in running.jobs:
            if job.node:
                on.setdefault(job.node, []).append((job.id, job.user))
        rows = [api.node_row(n, on.get(n.name, [])) for n in sorted(nodes, key=lambda n: n.name)]
        return Overview(summary=summary, nodes=rows)

    async def node_detail(self, name: str) -> NodeDetail:
        node, history, jobs, datasets = await asyncio.gather(
            self.node(name),
            self.node_history(name),
            self.jobs(node=name, limit=500),
            self.datasets(node=name),
            return_exceptions=True,
        )
        for result in (node, jobs, datasets):
            if isinstance(result, BaseException):
                raise result
        assert isinstance(node, api.Node) and isinstance(jobs, api.JobList)
        assert isinstance(datasets, list)
        return NodeDetail(
            node=node,
            history=history if isinstance(history, api.NodeHistory) else None,
            jobs=jobs.jobs,
            datasets=datasets,
        )

    async def admin(self, *, verify: bool) -> AdminData:
        users, tokens, nodes, audit = await asyncio.gather(
            self.users(), self.join_tokens(), self.nodes(), self.audit(), return_exceptions=True
        )
        if isinstance(users, BaseException):
            raise users
        check = await self.audit_verify() if verify else None
        return AdminData(
            users=users,
            join_tokens=[] if isinstance(tokens, BaseException) else tokens,
            nodes=[] if isinstance(nodes, BaseException) else nodes,
            audit=[] if isinstance(audit, BaseException) else audit,
            verify=check,
        )


class MasterSource(DataSource):
    """The real thing: the master's JSON API through :class:`AsyncClient`."""

    def __init__(
        self,
        url: str,
        token: str = "",
        *,
        verify: Verify = True,
        allow_plain_http: bool = False,
        client: AsyncClient | None = None,
    ) -> None:
        self.client = client or AsyncClient(
            url, token, verify=verify, allow_plain_http=allow_plain_http
        )
        self.url = self.client.url
        #: The overview's rows by name as of the cursor of the master's last answer.
        self._overview_rows: dict[str, api.NodeRow] = {}
        self._overview_cursor = ""

    async def aclose(self) -> None:
        await self.client.aclose()

    def set_token(self, token: str) -> None:
        self.client.token = token

    async def login(self, username: str, password: str) -> api.LoginReply:
        reply = await self.client.auth.login(username, password)
        self.set_token(reply.token)
        return reply

    async def me(self) -> api.Me:
        return await self.client.auth.me()

    async def summary(self) -> api.LabSummary:
        return await self.client.nodes.summary()

    async def overview(self) -> Overview:
        """One call (the full node list of a 1,000-node lab was 3.6 MB a poll), and only
        for the rows that changed since the last answer: the rows are kept here and the
        answer merged in. The first call, or an answer the master could not give as
        changes (``full``: a master restarted, a cursor too old), replaces them all."""
        reply = await self.client.nodes.overview(since=self._overview_cursor or None)
        rows = {} if reply.full else self._overview_rows
        new = any(row.name not in rows for row in reply.nodes)
        rows.update((row.name, row) for row in reply.nodes)
        for name in reply.removed:
            rows.pop(name, None)
        if new and not reply.full:  # keep the rows by name, as the master answers them
            rows = dict(sorted(rows.items()))
        self._overview_rows = rows
        self._overview_cursor = reply.cursor
        return Overview(summary=reply.summary, nodes=list(rows.values()))

    async def nodes(self) -> list[api.Node]:
        return await self.client.nodes.list()

    async def node(self, name: str) -> api.Node:
        return await self.client.nodes.get(name)

    async def node_history(self, name: str, window_s: int = 600) -> api.NodeHistory:
        return await self.client.nodes.history(name, window_s=window_s)

    async def drain(self, name: str) -> api.Node:
        return await self.client.nodes.drain(name)

    async def resume(self, name: str) -> api.Node:
        return await self.client.nodes.resume(name)

    async def remove_node(self, name: str, force: bool = False) -> None:
        await self.client.nodes.remove(name, force=force)

    async def jobs(
        self,
        *,
        state: str | None = None,
        user: str | None = None,
        node: str | None = None,
        all: bool = True,
        limit: int = 2000,
    ) -> api.JobList:
        return await self.client.jobs.list(state=state, user=user, node=node, all=all, limit=limit)

    async def job(self, job_id: int) -> api.Job:
        return await self.client.jobs.get(job_id)

    async def forwards(self, job_id: int) -> list[ForwardInfo]:
        return await self.client.jobs.forwards(job_id)

    def shell_env(self) -> dict[str, str]:
        return {"MLSM_URL": self.client.url, "MLSM_TOKEN": self.client.token}

    async def submit(self, spec: api.JobSubmit) -> api.SubmitReply:
        return await self.client.jobs.submit(spec)

    async def cancel(self, ids: list[int]) -> api.CancelResult:
        return await self.client.jobs.cancel(ids)

    async def log(self, job_id: int, offset: int = 0, limit: int = LOG_TAIL_BYTES) -> bytes:
        return b"".join([c async for c in self.client.jobs.log(job_id, offset=offset, limit=limit)])

    def follow_log(self, job_id: int, offset: int = 0) -> AsyncIterator[LogEvent]:
        return self.client.jobs.follow(job_id, offset=offset)

    async def outputs(self, job_id: int, path: str = "") -> OutputListing:
        return await self.client.jobs.outputs(job_id, path)

    async def read_output(
        self, job_id: int, path: str, start: int | None, limit: int = OUTPUT_VIEW_BYTES
    ) -> OutputText:
        from tui.outputs import read_output

        return await read_output(self.client, job_id, path, start, limit)

    async def download_outputs(self, job_id: int, paths: list[str], dest: Path) -> Downloaded:
        from tui.outputs import download_outputs

        return await download_outputs(self.client, job_id, paths, dest)

    async def datasets(self, node: str | None = None) -> list[api.Dataset]:
        return await self.client.datasets.list(node=node)

    async def dataset(self, name: str) -> api.Dataset:
        return await self.client.datasets.get(name)

    async def import_dataset(self, req: api.DatasetImport) -> api.Transfer:
        return await self.client.datasets.start_import(req)

    async def transfer_dataset(self, req: api.DatasetTransfer) -> api.Transfer:
        return await self.client.datasets.start_transfer(req)

    async def delete_dataset(self, name: str, node: str) -> None:
        await self.client.datasets.delete(name, node=node)

    async def transfers(self) -> list[api.Transfer]:
        return await self.client.transfers.list()

    async def users(self) -> list[api.User]:
        return await self.client.users.list()

    async def create_user(self, req: api.UserCreate) -> api.User:
        return await self.client.users.create(req)

    async def update_user(self, name: str, req: api.UserUpdate) -> api.User:
        return await self.client.users.update(name, req)

    async def join_tokens(self) -> list[api.JoinToken]:
        return await self.client.join_tokens.list()

    async def create_join_token(self, req: api.JoinTokenCreate) -> api.JoinTokenCreated:
        return await self.client.join_tokens.create(req)

    async def revoke_join_token(self, token_id: int) -> None:
        await self.client.join_tokens.revoke(token_id)

    async def audit(self, limit: int = 500) -> list[api.AuditEntry]:
        return await self.client.audit.list(limit=limit)

    async def audit_verify(self) -> api.AuditVerify:
        return await self.client.audit.verify()

    async def events(self, limit: int = 200) -> list[Event]:
        return (await self.client.events.list(limit=limit)).events

    async def usage_report(self, *, since: float, until: float) -> wu.UsageReport:
        return await self.client.usage.report(by="user", since=since, until=until)

    async def usage_timeline(self, *, since: float, until: float, steps: int) -> wu.UsageTimeline:
        return await self.client.usage.timeline(since=since, until=until, steps=steps)
