"""All master access of the dashboard, in one place.

:class:`DataSource` is the interface the screens use: async methods returning
:mod:`mlsm.wire.api` structs. :class:`MasterSource` implements it over
:class:`mlsm.client.AsyncClient`; tests pass a fake with canned structs instead.
Errors are :mod:`mlsm.errors` classes; an unreachable master raises ``UnavailableError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from mlsm.client import AsyncClient
from mlsm.wire import api

#: Bytes of an existing log fetched when a log view opens (the tail, not the whole file).
LOG_TAIL_BYTES = 1 << 20


@dataclass
class Overview:
    """What the overview shows, fetched together."""

    summary: api.LabSummary
    nodes: list[api.Node]
    running: list[api.Job] = field(default_factory=list)


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


class DataSource:
    """What the dashboard needs from a master. Subclasses implement every method."""

    url: str = ""

    async def aclose(self) -> None:
        return None

    def set_token(self, token: str) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------ identity
    async def login(self, username: str, password: str) -> api.LoginReply:
        raise NotImplementedError

    async def me(self) -> api.Me:
        raise NotImplementedError

    # ------------------------------------------------------------ lab
    async def summary(self) -> api.LabSummary:
        raise NotImplementedError

    async def nodes(self) -> list[api.Node]:
        raise NotImplementedError

    async def node(self, name: str) -> api.Node:
        raise NotImplementedError

    async def node_history(self, name: str, window_s: int = 600) -> api.NodeHistory:
        raise NotImplementedError

    async def drain(self, name: str) -> api.Node:
        raise NotImplementedError

    async def resume(self, name: str) -> api.Node:
        raise NotImplementedError

    async def remove_node(self, name: str, force: bool = False) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------ jobs
    async def jobs(
        self,
        *,
        state: str | None = None,
        user: str | None = None,
        node: str | None = None,
        all: bool = True,
        limit: int = 2000,
    ) -> api.JobList:
        raise NotImplementedError

    async def job(self, job_id: int) -> api.Job:
        raise NotImplementedError

    async def submit(self, spec: api.JobSubmit) -> api.SubmitReply:
        raise NotImplementedError

    async def cancel(self, ids: list[int]) -> api.CancelResult:
        raise NotImplementedError

    async def log(self, job_id: int, offset: int = 0, limit: int = LOG_TAIL_BYTES) -> bytes:
        raise NotImplementedError

    def follow_log(self, job_id: int, offset: int = 0) -> AsyncIterator[tuple[str, str]]:
        """Yield ``(event, data)``: ``("log", text)`` chunks, then ``("end", state)``."""
        raise NotImplementedError

    # ------------------------------------------------------------ datasets
    async def datasets(self, node: str | None = None) -> list[api.Dataset]:
        raise NotImplementedError

    async def dataset(self, name: str) -> api.Dataset:
        raise NotImplementedError

    async def import_dataset(self, req: api.DatasetImport) -> api.Transfer:
        raise NotImplementedError

    async def transfer_dataset(self, req: api.DatasetTransfer) -> api.Transfer:
        raise NotImplementedError

    async def delete_dataset(self, name: str, node: str) -> None:
        raise NotImplementedError

    async def transfers(self) -> list[api.Transfer]:
        raise NotImplementedError

    # ------------------------------------------------------------ admin
    async def users(self) -> list[api.User]:
        raise NotImplementedError

    async def create_user(self, req: api.UserCreate) -> api.User:
        raise NotImplementedError

    async def update_user(self, name: str, req: api.UserUpdate) -> api.User:
        raise NotImplementedError

    async def join_tokens(self) -> list[api.JoinToken]:
        raise NotImplementedError

    async def create_join_token(self, req: api.JoinTokenCreate) -> api.JoinTokenCreated:
        raise NotImplementedError

    async def revoke_join_token(self, token_id: int) -> None:
        raise NotImplementedError

    async def audit(self, limit: int = 500) -> list[api.AuditEntry]:
        raise NotImplementedError

    async def audit_verify(self) -> api.AuditVerify:
        raise NotImplementedError

    # ------------------------------------------------------------ bundles for screens
    async def overview(self) -> Overview:
        summary, nodes, running = await asyncio.gather(
            self.summary(), self.nodes(), self.jobs(state="running", limit=5000)
        )
        return Overview(summary=summary, nodes=nodes, running=running.jobs)

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
        self, url: str, token: str = "", *, verify: bool = True, client: AsyncClient | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.client = client or AsyncClient(self.url, token, verify=verify)

    async def aclose(self) -> None:
        await self.client.aclose()

    def set_token(self, token: str) -> None:
        self.client.token = token

    async def login(self, username: str, password: str) -> api.LoginReply:
        reply = await self.client.call(
            "POST",
            "/api/v1/auth/login",
            json=api.LoginRequest(username=username, password=password),
            type=api.LoginReply,
        )
        self.set_token(reply.token)
        return reply

    async def me(self) -> api.Me:
        return await self.client.call("GET", "/api/v1/auth/me", type=api.Me)

    async def summary(self) -> api.LabSummary:
        return await self.client.call("GET", "/api/v1/summary", type=api.LabSummary)

    async def nodes(self) -> list[api.Node]:
        return await self.client.call("GET", "/api/v1/nodes", type=list[api.Node])

    async def node(self, name: str) -> api.Node:
        return await self.client.call("GET", f"/api/v1/nodes/{name}", type=api.Node)

    async def node_history(self, name: str, window_s: int = 600) -> api.NodeHistory:
        return await self.client.call(
            "GET",
            f"/api/v1/nodes/{name}/history",
            params={"window": window_s},
            type=api.NodeHistory,
        )

    async def drain(self, name: str) -> api.Node:
        return await self.client.call("POST", f"/api/v1/nodes/{name}/drain", type=api.Node)

    async def resume(self, name: str) -> api.Node:
        return await self.client.call("POST", f"/api/v1/nodes/{name}/resume", type=api.Node)

    async def remove_node(self, name: str, force: bool = False) -> None:
        await self.client.call(
            "DELETE", f"/api/v1/nodes/{name}", params={"force": "true" if force else None}
        )

    async def jobs(
        self,
        *,
        state: str | None = None,
        user: str | None = None,
        node: str | None = None,
        all: bool = True,
        limit: int = 2000,
    ) -> api.JobList:
        params = {
            "state": state,
            "user": user,
            "node": node,
            "all": "true" if all else None,
            "limit": limit,
        }
        return await self.client.call("GET", "/api/v1/jobs", params=params, type=api.JobList)

    async def job(self, job_id: int) -> api.Job:
        return await self.client.call("GET", f"/api/v1/jobs/{job_id}", type=api.Job)

    async def submit(self, spec: api.JobSubmit) -> api.SubmitReply:
        return await self.client.call("POST", "/api/v1/jobs", json=spec, type=api.SubmitReply)

    async def cancel(self, ids: list[int]) -> api.CancelResult:
        return await self.client.call(
            "POST", "/api/v1/jobs/cancel", json=api.CancelRequest(ids=ids), type=api.CancelResult
        )

    async def log(self, job_id: int, offset: int = 0, limit: int = LOG_TAIL_BYTES) -> bytes:
        chunks = [
            chunk
            async for chunk in self.client.stream(
                f"/api/v1/jobs/{job_id}/log", params={"offset": offset, "limit": limit}
            )
        ]
        return b"".join(chunks)

    async def follow_log(self, job_id: int, offset: int = 0) -> AsyncIterator[tuple[str, str]]:
        parser = SseParser()
        async for chunk in self.client.stream(
            f"/api/v1/jobs/{job_id}/log/follow", params={"offset": offset}
        ):
            for event in parser.feed(chunk):
                yield event

    async def datasets(self, node: str | None = None) -> list[api.Dataset]:
        return await self.client.call(
            "GET", "/api/v1/datasets", params={"node": node}, type=list[api.Dataset]
        )

    async def dataset(self, name: str) -> api.Dataset:
        return await self.client.call("GET", f"/api/v1/datasets/{name}", type=api.Dataset)

    async def import_dataset(self, req: api.DatasetImport) -> api.Transfer:
        return await self.client.call(
            "POST", "/api/v1/datasets/import", json=req, type=api.Transfer
        )

    async def transfer_dataset(self, req: api.DatasetTransfer) -> api.Transfer:
        return await self.client.call(
            "POST", "/api/v1/datasets/transfer", json=req, type=api.Transfer
        )

    async def delete_dataset(self, name: str, node: str) -> None:
        await self.client.call("DELETE", f"/api/v1/datasets/{name}", params={"node": node})

    async def transfers(self) -> list[api.Transfer]:
        return await self.client.call("GET", "/api/v1/transfers", type=list[api.Transfer])

    async def users(self) -> list[api.User]:
        return await self.client.call("GET", "/api/v1/users", type=list[api.User])

    async def create_user(self, req: api.UserCreate) -> api.User:
        return await self.client.call("POST", "/api/v1/users", json=req, type=api.User)

    async def update_user(self, name: str, req: api.UserUpdate) -> api.User:
        return await self.client.call("PATCH", f"/api/v1/users/{name}", json=req, type=api.User)

    async def join_tokens(self) -> list[api.JoinToken]:
        return await self.client.call("GET", "/api/v1/join-tokens", type=list[api.JoinToken])

    async def create_join_token(self, req: api.JoinTokenCreate) -> api.JoinTokenCreated:
        return await self.client.call(
            "POST", "/api/v1/join-tokens", json=req, type=api.JoinTokenCreated
        )

    async def revoke_join_token(self, token_id: int) -> None:
        await self.client.call("DELETE", f"/api/v1/join-tokens/{token_id}")

    async def audit(self, limit: int = 500) -> list[api.AuditEntry]:
        return await self.client.call(
            "GET", "/api/v1/audit", params={"limit": limit}, type=list[api.AuditEntry]
        )

    async def audit_verify(self) -> api.AuditVerify:
        return await self.client.call("GET", "/api/v1/audit/verify", type=api.AuditVerify)


class SseParser:
    """Incremental server-sent-events parser: bytes in, ``(event, data)`` out."""

    def __init__(self) -> None:
        self._buf = b""
        self._event = "message"
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        self._buf += chunk
        out: list[tuple[str, str]] = []
        while b"\n" in self._buf:
            raw, self._buf = self._buf.split(b"\n", 1)
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            if not line:
                if self._data:
                    out.append((self._event, "\n".join(self._data)))
                self._event, self._data = "message", []
            elif line.startswith(":"):
                continue
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    self._event = value
                elif name == "data":
                    self._data.append(value)
        return out
