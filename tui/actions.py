"""What the dashboard does to the lab: every action that changes something on the master.

Each action checks that it may run (read-only dashboard, admins only), asks first (a
confirm dialog for what cannot be undone, a form for what needs input), calls the master
in a worker, says how it went in a toast and polls at once so the screen shows the change.
Screens call :class:`Actions` (``self.actions.cancel_job(job)``); the app only hosts it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any, Protocol, TypeVar

import msgspec
from textual.notifications import SeverityLevel
from textual.screen import Screen

from mlsm.errors import MlsmError
from mlsm.wire import api
from tui.source import DataSource
from tui.widgets.confirm import ConfirmModal
from tui.widgets.forms import Field, FormModal, MessageModal, SubmitForm
from tui.widgets.status import Connection

R = TypeVar("R")
ROLES = ("member", "admin", "superadmin")


class ActionHost(Protocol):
    """What actions need of the app: its master, who is logged in, and its UI."""

    source: DataSource
    readonly: bool

    @property
    def conn(self) -> Connection: ...
    @property
    def is_admin(self) -> bool: ...
    def poll_now(self) -> None: ...
    def notify(
        self,
        message: str,
        *,
        title: str = ...,
        severity: SeverityLevel = ...,
        timeout: float | None = ...,
        markup: bool = ...,
    ) -> None: ...
    def push_screen(
        self, screen: Screen[R], callback: Callable[[R | None], None] | None = ...
    ) -> object: ...
    def run_worker(
        self, work: Coroutine[Any, Any, None], name: str | None = ..., group: str = ...
    ) -> object: ...


class Actions:
    def __init__(self, app: ActionHost) -> None:
        self.app = app

    # ------------------------------------------------------------ how every action runs
    def _run(self, coro: Awaitable[Any], done: str | Callable[[Any], str] = "") -> None:
        app = self.app

        async def go() -> None:
            try:
                result = await coro
            except MlsmError as exc:
                app.notify(exc.message, title="refused", severity="error")
                return
            message = done(result) if callable(done) else done
            if message:
                app.notify(message)
            app.poll_now()

        app.run_worker(go(), group="action")

    def _confirm(
        self, question: str, then: Callable[[], Awaitable[Any]], done: str = "", yes: str = "Yes"
    ) -> None:
        def answered(ok: bool | None) -> None:
            if ok:
                self._run(then(), done)

        self.app.push_screen(ConfirmModal(question, yes=yes), answered)

    def _guard(self, admin: bool = False) -> bool:
        if self.app.readonly:
            self.app.notify("read-only dashboard", severity="warning")
            return False
        if admin and not self.app.is_admin:
            self.app.notify("only admins can do that", severity="warning")
            return False
        return True

    def _form(
        self,
        title: str,
        fields: list[Field],
        action: Callable[[dict[str, str]], Awaitable[Any]],
        ok: str = "OK",
        after: Callable[[Any], None] | None = None,
    ) -> None:
        def done(result: Any) -> None:
            if result is None:
                return
            if after:
                after(result)
            self.app.poll_now()

        self.app.push_screen(FormModal(title, fields, action, ok=ok), done)

    # ------------------------------------------------------------ nodes
    def node_action(self, name: str, kind: str) -> None:
        if not self._guard(admin=True):
            return
        source = self.app.source
        if kind == "resume":
            self._run(source.resume(name), f"{name}: resumed")
        elif kind == "drain":
            self._confirm(
                f"Drain {name}? Running jobs finish; no new jobs start there.",
                partial(source.drain, name),
                f"{name}: draining",
                yes="Drain",
            )
        elif kind == "remove":
            self._confirm(
                f"Remove node {name} from the lab? Its agent must join again.",
                partial(source.remove_node, name),
                f"{name}: removed",
                yes="Remove",
            )

    # ------------------------------------------------------------ jobs
    def submit_job(self) -> None:
        if not self._guard():
            return

        def done(reply: api.SubmitReply | None) -> None:
            if reply is not None:
                ids = reply.ids or [reply.job.id]
                self.app.notify(f"submitted job {', '.join(map(str, ids))}")
                self.app.poll_now()

        self.app.push_screen(SubmitForm(self.app.source.submit), done)

    def cancel_job(self, job: api.Job) -> None:
        if not self._guard():
            return
        if job.state in api.FINAL_STATES:
            self.app.notify(f"job {job.id} already ended ({job.state})", severity="warning")
            return
        if job.user != self.app.conn.user and not self.app.is_admin:
            self.app.notify(f"job {job.id} belongs to {job.user}", severity="warning")
            return

        def said(result: api.CancelResult) -> str:
            if job.id in result.cancelled:
                return f"job {job.id} cancelled"
            return f"job {job.id} not cancelled: {result.skipped.get(str(job.id), 'refused')}"

        def answered(ok: bool | None) -> None:
            if ok:
                self._run(self.app.source.cancel([job.id]), said)

        what = f"job {job.id}" + (f" ({job.name})" if job.name else "") + f" of {job.user}"
        self.app.push_screen(
            ConfirmModal(f"Cancel {what}?", yes="Cancel job", no="Keep it"), answered
        )

    # ------------------------------------------------------------ datasets
    def import_dataset(self, node: str = "") -> None:
        if not self._guard(admin=True):
            return

        async def go(v: dict[str, str]) -> api.Transfer:
            req = msgspec.convert(
                {
                    "url": v["url"].strip(),
                    "node": v["node"].strip(),
                    "name": v["name"].strip(),
                    "sha256": v["sha256"].strip(),
                },
                api.DatasetImport,
            )
            return await self.app.source.import_dataset(req)

        self._form(
            "Import a dataset onto a node (progress shows under Transfers)",
            [
                Field("url", "URL", "https://host/data.tar.gz"),
                Field("node", "Node", value=node),
                Field("name", "Name"),
                Field("sha256", "sha256", "optional"),
            ],
            go,
            ok="Import",
            after=lambda t: self.app.notify(f"import {t.id} started on {t.node}"),
        )

    def transfer_dataset(self, name: str, src: str, *, move: bool) -> None:
        if not self._guard(admin=True):
            return
        verb = "Move" if move else "Copy"

        async def go(v: dict[str, str]) -> api.Transfer:
            req = msgspec.convert(
                {"name": name, "src": src, "dst": v["dst"].strip(), "move": move},
                api.DatasetTransfer,
            )
            return await self.app.source.transfer_dataset(req)

        note = " (the copy on the source is deleted afterwards)" if move else ""
        self._form(
            f"{verb} {name} from {src} to…{note}",
            [Field("dst", "To node")],
            go,
            ok=verb,
            after=lambda t: self.app.notify(f"{verb.lower()} {t.id} started"),
        )

    def delete_dataset(self, name: str, node: str) -> None:
        if not self._guard(admin=True):
            return
        self._confirm(
            f"Delete dataset {name} on {node}? The files are removed from disk.",
            partial(self.app.source.delete_dataset, name, node),
            f"deleting {name} on {node}",
            yes="Delete",
        )

    # ------------------------------------------------------------ users
    def add_user(self) -> None:
        if not self._guard(admin=True):
            return

        async def go(v: dict[str, str]) -> api.User:
            req = msgspec.convert(
                {
                    "username": v["username"].strip(),
                    "password": v["password"],
                    "role": v["role"],
                    "unix_user": v["unix_user"].strip(),
                },
                api.UserCreate,
            )
            return await self.app.source.create_user(req)

        self._form(
            "Add a user",
            [
                Field("username", "User name"),
                Field("password", "Password", "8 characters or more", password=True),
                Field("role", "Role", options=list(ROLES)),
                Field("unix_user", "Unix account", "optional"),
            ],
            go,
            ok="Add",
            after=lambda u: self.app.notify(f"user {u.username} added"),
        )

    def set_role(self, user: api.User) -> None:
        if not self._guard(admin=True):
            return

        async def go(v: dict[str, str]) -> api.User:
            return await self.app.source.update_user(
                user.username, msgspec.convert({"role": v["role"]}, api.UserUpdate)
            )

        self._form(
            f"Role of {user.username}",
            [Field("role", "Role", value=user.role, options=list(ROLES))],
            go,
            ok="Set role",
            after=lambda u: self.app.notify(f"{u.username} is now {u.role}"),
        )

    def toggle_user(self, user: api.User) -> None:
        if not self._guard(admin=True):
            return
        verb = "Enable" if user.disabled else "Disable"
        self._confirm(
            f"{verb} user {user.username}?",
            partial(
                self.app.source.update_user,
                user.username,
                api.UserUpdate(disabled=not user.disabled),
            ),
            f"{user.username}: {verb.lower()}d",
            yes=verb,
        )

    # ------------------------------------------------------------ join tokens
    def new_join_token(self) -> None:
        if not self._guard(admin=True):
            return

        async def go(v: dict[str, str]) -> api.JoinTokenCreated:
            hours = float(v["ttl"] or 24)
            req = msgspec.convert(
                {"ttl_s": hours * 3600, "uses": int(v["uses"] or 1), "note": v["note"]},
                api.JoinTokenCreate,
            )
            return await self.app.source.create_join_token(req)

        def show(created: api.JoinTokenCreated) -> None:
            self.app.push_screen(
                MessageModal(
                    "New join token (shown once):",
                    created.token,
                    f"On the new server: mlsm agent --master {self.app.source.url} --join-token {created.token}",
                )
            )

        self._form(
            "New join token for agents",
            [
                Field("ttl", "Valid hours", value="24"),
                Field("uses", "Uses", value="1"),
                Field("note", "Note", "optional"),
            ],
            go,
            ok="Create",
            after=show,
        )

    def revoke_join_token(self, token_id: int) -> None:
        if not self._guard(admin=True):
            return
        self._confirm(
            f"Revoke join token {token_id}?",
            partial(self.app.source.revoke_join_token, token_id),
            f"join token {token_id} revoked",
            yes="Revoke",
        )
