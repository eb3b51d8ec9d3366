"""The two faces: :class:`Client` (sync, the CLI) and :class:`AsyncClient` (async, the
dashboard), each a session with the master and its resource groups as attributes."""

from __future__ import annotations

from mlsm.client.admin import AsyncAudit, AsyncLabSettings, Audit, LabSettings
from mlsm.client.auth import AsyncAuth, Auth
from mlsm.client.code import AsyncCode, AsyncProjects, Code, Projects
from mlsm.client.datasets import AsyncDatasets, AsyncTransfers, Datasets, Transfers
from mlsm.client.events import AsyncEvents, AsyncNotify, Events, Notify
from mlsm.client.http import AsyncHttp, SyncHttp
from mlsm.client.jobs import AsyncJobs, Jobs
from mlsm.client.nodes import AsyncJoinTokens, AsyncNodes, JoinTokens, Nodes
from mlsm.client.resource import group
from mlsm.client.usage import AsyncReservations, AsyncUsage, Reservations, Usage
from mlsm.client.users import AsyncTokens, AsyncUsers, Tokens, Users
from mlsm.wire import api


class Client(SyncHttp):
    """The master's API, blocking: ``with Client(url, token) as c: c.jobs.list()``."""

    auth = group(Auth)
    users = group(Users)
    tokens = group(Tokens)
    join_tokens = group(JoinTokens)
    nodes = group(Nodes)
    jobs = group(Jobs)
    datasets = group(Datasets)
    transfers = group(Transfers)
    settings = group(LabSettings)
    audit = group(Audit)
    code = group(Code)
    projects = group(Projects)
    events = group(Events)
    notify = group(Notify)
    usage = group(Usage)
    reservations = group(Reservations)

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

    auth = group(AsyncAuth)
    users = group(AsyncUsers)
    tokens = group(AsyncTokens)
    join_tokens = group(AsyncJoinTokens)
    nodes = group(AsyncNodes)
    jobs = group(AsyncJobs)
    datasets = group(AsyncDatasets)
    transfers = group(AsyncTransfers)
    settings = group(AsyncLabSettings)
    code = group(AsyncCode)
    projects = group(AsyncProjects)
    usage = group(AsyncUsage)
    reservations = group(AsyncReservations)
    audit = group(AsyncAudit)
    events = group(AsyncEvents)
    notify = group(AsyncNotify)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
