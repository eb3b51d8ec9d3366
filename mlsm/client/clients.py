"""The two faces: :class:`Client` (sync, the CLI) and :class:`AsyncClient` (async, the
dashboard), each a session with the master and its resource groups as attributes.

A group's module is imported the first time the group is used (:class:`group`), so a
command that lists jobs does not import what the datasets or code groups need."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlsm.client.http import AsyncHttp, SyncHttp
from mlsm.client.resource import group

if TYPE_CHECKING:
    from mlsm.client.admin import AsyncAudit, AsyncLabSettings, Audit, LabSettings
    from mlsm.client.auth import AsyncAuth, Auth
    from mlsm.client.code import AsyncCode, AsyncProjects, Code, Projects
    from mlsm.client.datasets import AsyncDatasets, AsyncTransfers, Datasets, Transfers
    from mlsm.client.events import AsyncEvents, AsyncNotify, Events, Notify
    from mlsm.client.jobs import AsyncJobs, Jobs
    from mlsm.client.nodes import AsyncJoinTokens, AsyncNodes, JoinTokens, Nodes
    from mlsm.client.usage import AsyncReservations, AsyncUsage, Reservations, Usage
    from mlsm.client.users import AsyncTokens, AsyncUsers, Tokens, Users
    from mlsm.wire import api

_ADMIN, _AUTH, _CODE = "mlsm.client.admin", "mlsm.client.auth", "mlsm.client.code"
_DATASETS, _JOBS = "mlsm.client.datasets", "mlsm.client.jobs"
_NODES, _USERS = "mlsm.client.nodes", "mlsm.client.users"
_EVENTS, _USAGE = "mlsm.client.events", "mlsm.client.usage"


class Client(SyncHttp):
    """The master's API, blocking: ``with Client(url, token) as c: c.jobs.list()``."""

    auth: group[Auth] = group(_AUTH, "Auth")
    users: group[Users] = group(_USERS, "Users")
    tokens: group[Tokens] = group(_USERS, "Tokens")
    join_tokens: group[JoinTokens] = group(_NODES, "JoinTokens")
    nodes: group[Nodes] = group(_NODES, "Nodes")
    jobs: group[Jobs] = group(_JOBS, "Jobs")
    datasets: group[Datasets] = group(_DATASETS, "Datasets")
    transfers: group[Transfers] = group(_DATASETS, "Transfers")
    settings: group[LabSettings] = group(_ADMIN, "LabSettings")
    audit: group[Audit] = group(_ADMIN, "Audit")
    code: group[Code] = group(_CODE, "Code")
    projects: group[Projects] = group(_CODE, "Projects")
    events: group[Events] = group(_EVENTS, "Events")
    notify: group[Notify] = group(_EVENTS, "Notify")
    usage: group[Usage] = group(_USAGE, "Usage")
    reservations: group[Reservations] = group(_USAGE, "Reservations")

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # What every script starts with, at the top as well.
    def health(self) -> api.Health:
        return self.auth.health()

    def login(self, username: str, password: str) -> api.LoginReply:
        return self.auth.login(username, password)

    def me(self) -> api.Me:
        return self.auth.me()


class AsyncClient(AsyncHttp):
    """The master's API, awaitable: ``async with AsyncClient(url, token) as c: await
    c.jobs.list()``."""

    auth: group[AsyncAuth] = group(_AUTH, "AsyncAuth")
    users: group[AsyncUsers] = group(_USERS, "AsyncUsers")
    tokens: group[AsyncTokens] = group(_USERS, "AsyncTokens")
    join_tokens: group[AsyncJoinTokens] = group(_NODES, "AsyncJoinTokens")
    nodes: group[AsyncNodes] = group(_NODES, "AsyncNodes")
    jobs: group[AsyncJobs] = group(_JOBS, "AsyncJobs")
    datasets: group[AsyncDatasets] = group(_DATASETS, "AsyncDatasets")
    transfers: group[AsyncTransfers] = group(_DATASETS, "AsyncTransfers")
    settings: group[AsyncLabSettings] = group(_ADMIN, "AsyncLabSettings")
    code: group[AsyncCode] = group(_CODE, "AsyncCode")
    projects: group[AsyncProjects] = group(_CODE, "AsyncProjects")
    audit: group[AsyncAudit] = group(_ADMIN, "AsyncAudit")
    events: group[AsyncEvents] = group(_EVENTS, "AsyncEvents")
    notify: group[AsyncNotify] = group(_EVENTS, "AsyncNotify")
    usage: group[AsyncUsage] = group(_USAGE, "AsyncUsage")
    reservations: group[AsyncReservations] = group(_USAGE, "AsyncReservations")

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
