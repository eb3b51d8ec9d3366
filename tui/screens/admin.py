"""Admin: users, join tokens, nodes, and the audit log with its verify result."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import TabbedContent, TabPane

from mlsm.termsafe import visible
from mlsm.wire import api
from tui import fmt
from tui.screens.base import View
from tui.source import AdminData
from tui.widgets.plain import PlainStatic
from tui.widgets.table import LabTable

#: Which tab each action belongs to.
TAB_ACTIONS = {
    "users": {"add_user", "set_role", "toggle_user"},
    "tokens": {"new_token", "revoke_token"},
    "nodes": {"drain", "resume", "remove_node"},
    "audit": {"verify"},
}
TABLES = {
    "users": "#users-table",
    "tokens": "#tokens-table",
    "nodes": "#admin-nodes",
    "audit": "#audit-table",
}


class AdminScreen(View):
    TITLE = "Admin"
    POLL_S = 5.0
    MUTATING = frozenset(
        {
            "add_user",
            "set_role",
            "toggle_user",
            "new_token",
            "revoke_token",
            "drain",
            "resume",
            "remove_node",
        }
    )
    BINDINGS = [
        Binding("a", "add_user", "Add user"),
        Binding("r", "set_role", "Role"),
        Binding("D", "toggle_user", "Disable/enable"),
        Binding("n", "new_token", "New join token"),
        Binding("X", "revoke_token", "Revoke"),
        Binding("d", "drain", "Drain"),
        Binding("u", "resume", "Resume"),
        Binding("X", "remove_node", "Remove node"),
        Binding("v", "verify", "Verify chain"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.data: AdminData | None = None
        self.verify_next = True

    def body(self) -> ComposeResult:
        with TabbedContent(initial="users"):
            with TabPane("Users", id="users"):
                yield LabTable(id="users-table")
            with TabPane("Join tokens", id="tokens"):
                yield LabTable(id="tokens-table")
            with TabPane("Nodes", id="nodes"):
                yield LabTable(id="admin-nodes")
            with TabPane("Audit", id="audit"):
                yield PlainStatic("audit chain: not checked yet", id="verify")
                yield LabTable(id="audit-table")

    def setup(self) -> None:
        cols = {
            "#users-table": (
                ("User", 16),
                ("Role", 11),
                ("Status", 9),
                ("Unix", 10),
                ("GPU cap", 7),
                ("Last login", 14),
            ),
            "#tokens-table": (
                ("ID", 5),
                ("By", 10),
                ("Uses", 7),
                ("Expires", 12),
                ("State", 9),
                ("Note", 20),
            ),
            "#admin-nodes": (
                ("Node", 14),
                ("State", 9),
                ("GPUs", 5),
                ("Jobs", 5),
                ("Seen", 12),
                ("Labels", 24),
            ),
            "#audit-table": (
                ("ID", 6),
                ("When", 10),
                ("Actor", 10),
                ("Action", 18),
                ("Target", 14),
                ("Outcome", 8),
            ),
        }
        for table_id, columns in cols.items():
            table = self.query_one(table_id, LabTable)
            for label, width in columns:
                table.add_column(label, width=width)
        self.query_one("#users-table", LabTable).focus()

    @property
    def tab(self) -> str:
        return self.query_one(TabbedContent).active or "users"

    def table(self, tab: str | None = None) -> LabTable:
        return self.query_one(TABLES[tab or self.tab], LabTable)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        allowed = super().check_action(action, parameters)
        if not allowed:
            return allowed
        for tab, actions in TAB_ACTIONS.items():
            if action in actions:
                return self.is_mounted and self.tab == tab
        return True

    @on(TabbedContent.TabActivated)
    def _tab_changed(self) -> None:
        self.refresh_bindings()
        self.table().focus()

    async def fetch(self) -> AdminData:
        # Asked for again until a result is on screen: a poll that fails, is cancelled by a
        # newer one, or lands while the screen still composes must not lose the check.
        return await self.source.admin(verify=self.verify_next)

    def apply(self, data: AdminData) -> None:
        if data.verify is not None:
            self.verify_next = False
        elif self.data is not None:
            data.verify = self.data.verify
        self.data = data
        now = self.mlsm.now()
        self.table("users").sync(
            [
                (
                    u.username,
                    [
                        u.username,
                        u.role,
                        Text("disabled", style="red")
                        if u.disabled
                        else Text("active", style="green"),
                        u.unix_user or "-",
                        "-" if u.gpu_cap is None else str(u.gpu_cap),
                        fmt.ago(u.last_login, now),
                    ],
                )
                for u in sorted(data.users, key=lambda u: u.username)
            ]
        )

        def token_state(t: api.JoinToken) -> Text:
            if t.revoked:
                return Text("revoked", style="dim")
            if t.expires_at < now:
                return Text("expired", style="dim")
            if t.used >= t.uses:
                return Text("used up", style="dim")
            return Text("valid", style="green")

        self.table("tokens").sync(
            [
                (
                    str(t.id),
                    [
                        str(t.id),
                        t.created_by,
                        f"{t.used}/{t.uses}",
                        fmt.duration(t.expires_at - now) if t.expires_at > now else "-",
                        token_state(t),
                        t.note,
                    ],
                )
                for t in sorted(data.join_tokens, key=lambda t: -t.id)
            ]
        )
        self.table("nodes").sync(
            [
                (
                    n.name,
                    [
                        n.name,
                        fmt.state_text(
                            "draining" if n.draining and n.state == "online" else n.state
                        ),
                        str(len(n.gpus)),
                        str(n.running_jobs),
                        fmt.ago(n.last_seen, now),
                        " ".join(f"{k}={v}" for k, v in sorted(n.labels.items())),
                    ],
                )
                for n in sorted(data.nodes, key=lambda n: n.name)
            ]
        )
        self.table("audit").sync(
            [
                (
                    str(e.id),
                    [
                        str(e.id),
                        fmt.ago(e.ts, now).replace(" ago", ""),
                        e.actor,
                        e.action,
                        e.target,
                        fmt.plain(e.outcome, "green" if e.outcome == "ok" else "red"),
                    ],
                )
                for e in sorted(data.audit, key=lambda e: -e.id)
            ]
        )
        v = data.verify
        text = Text(" audit chain: ")
        if v is None:
            text.append("not checked yet (v)", style="dim")
        elif v.ok:
            text.append(f"verified, {v.rows} rows intact", style="bold green")
        else:
            text.append(f"BROKEN at row {v.first_broken}: {visible(v.message)}", style="bold red")
        self.query_one("#verify", PlainStatic).update(text)

    # ------------------------------------------------------------ actions
    def focus_main(self) -> None:
        self.table().focus()

    def _key(self) -> str | None:
        return self.table().current_key

    def _user(self) -> api.User | None:
        key = self._key()
        return (
            next((u for u in self.data.users if u.username == key), None)
            if self.data and key
            else None
        )

    def action_add_user(self) -> None:
        self.actions.add_user()

    def action_set_role(self) -> None:
        if user := self._user():
            self.actions.set_role(user)

    def action_toggle_user(self) -> None:
        if user := self._user():
            self.actions.toggle_user(user)

    def action_new_token(self) -> None:
        self.actions.new_join_token()

    def action_revoke_token(self) -> None:
        if key := self._key():
            self.actions.revoke_join_token(int(key))

    def action_drain(self) -> None:
        if key := self._key():
            self.actions.node_action(key, "drain")

    def action_resume(self) -> None:
        if key := self._key():
            self.actions.node_action(key, "resume")

    def action_remove_node(self) -> None:
        if key := self._key():
            self.actions.node_action(key, "remove")

    def action_verify(self) -> None:
        self.verify_next = True
        self.mlsm.poll_now()
