"""The sync client's resource groups against the real master app, in-process.

No agent joins, so jobs stay queued and datasets have no copies: these tests check that
every method reaches its route with its parameters and decodes the answer into its
struct; what the master does with the work is tested by the integration suite.
"""

from __future__ import annotations

import pytest

from mlsm import errors
from mlsm.client import AsyncClient, Client
from mlsm.client.resource import AsyncResource, SyncResource
from mlsm.wire import api
from mlsm.wire.follow import LogEnded
from tests.unit.client.conftest import ADMIN, PASSWORD, URL, PortalTransport


def _member(client: Client, transport: PortalTransport, name: str = "mia") -> Client:
    client.users.create(api.UserCreate(username=name, password="member-password-1"))
    c = Client(URL, transport=transport)
    c.token = c.auth.login(name, "member-password-1").token
    return c


# ------------------------------------------------------------------ auth
def test_login_me_logout(transport: PortalTransport) -> None:
    with Client(URL, transport=transport) as c:
        assert c.auth.health().status == "ok"
        reply = c.auth.login(ADMIN, PASSWORD)
        assert (reply.username, reply.role) == (ADMIN, "superadmin")
        c.token = reply.token
        assert c.auth.me() == api.Me(username=ADMIN, role="superadmin", token_kind="session")
        c.auth.logout()
        with pytest.raises(errors.AuthenticationError):
            c.auth.me()


def test_a_wrong_password_is_the_masters_authentication_error(transport: PortalTransport) -> None:
    with Client(URL, transport=transport) as c, pytest.raises(errors.AuthenticationError):
        c.auth.login(ADMIN, "not-the-password")


def test_change_password_ends_the_other_sessions(
    client: Client, transport: PortalTransport
) -> None:
    with _member(client, transport) as member, _member(client, transport, "max") as other:
        elsewhere = Client(URL, transport=transport)
        elsewhere.token = elsewhere.auth.login("mia", "member-password-1").token
        change = api.PasswordChange(
            current_password="member-password-1", new_password="member-password-2"
        )
        assert member.auth.change_password(change).revoked >= 1
        assert member.auth.me().username == "mia"  # the session that asked goes on
        with pytest.raises(errors.AuthenticationError):
            elsewhere.auth.me()
        assert other.auth.me().username == "max"  # another user's session is untouched
        assert member.auth.login("mia", "member-password-2").token
        with pytest.raises(errors.AuthenticationError):
            member.auth.login("mia", "member-password-1")


async def test_every_method_of_the_sync_face_is_on_the_async_face() -> None:
    """Both faces are made from the same request builders; neither may lack a method."""

    def methods(resource: object) -> set[str]:
        return {m for m in dir(type(resource)) if not m.startswith("_")}

    with Client(URL) as sync_face:
        async with AsyncClient(URL) as async_face:
            groups = {
                n: getattr(sync_face, n)
                for n in dir(Client)
                if isinstance(getattr(sync_face, n, None), SyncResource)
            }
            assert {"jobs", "nodes", "datasets", "users", "tokens", "settings", "audit"} <= set(
                groups
            )
            for name, resource in groups.items():
                twin = getattr(async_face, name)
                assert isinstance(twin, AsyncResource), name
                assert methods(resource) == methods(twin), name


# ------------------------------------------------------------------ users and tokens
def test_users_create_get_update_list(client: Client) -> None:
    made = client.users.create(api.UserCreate(username="zoe", password="zoe-password-1"))
    assert (made.username, made.role) == ("zoe", "member")
    assert client.users.get("zoe").id == made.id
    changed = client.users.update("zoe", api.UserUpdate(role="admin", gpu_cap=2))
    assert (changed.role, changed.gpu_cap) == ("admin", 2)
    assert {u.username for u in client.users.list()} == {ADMIN, "zoe"}


def test_tokens_create_list_revoke(client: Client, transport: PortalTransport) -> None:
    created = client.tokens.create(api.ApiTokenCreate(name="ci", ttl_s=3600))
    assert [t.name for t in client.tokens.list() if t.kind == "api"] == ["ci"]
    with Client(URL, created.token, transport=transport) as script:
        assert script.auth.me().token_kind == "api"
        client.tokens.revoke(created.info.id)
        with pytest.raises(errors.AuthenticationError):
            script.auth.me()


def test_token_list_all_is_for_admins(client: Client, transport: PortalTransport) -> None:
    with _member(client, transport) as member:
        member.tokens.create(api.ApiTokenCreate(name="mine"))
        assert {t.username for t in member.tokens.list()} == {"mia"}
        assert "mia" in {t.username for t in client.tokens.list(all=True)}
        assert "mia" not in {t.username for t in client.tokens.list()}


def test_join_tokens_create_list_revoke(client: Client) -> None:
    created = client.join_tokens.create(api.JoinTokenCreate(uses=3, note="rack 2"))
    assert created.token
    (listed,) = client.join_tokens.list()
    assert (listed.id, listed.uses, listed.note) == (created.info.id, 3, "rack 2")
    assert not listed.revoked
    client.join_tokens.revoke(created.info.id)
    assert client.join_tokens.list()[0].revoked


# ------------------------------------------------------------------ nodes
def test_nodes_of_an_empty_lab(client: Client) -> None:
    assert client.nodes.list() == []
    assert client.nodes.list(labels=["rack=r1"]) == []
    summary = client.nodes.summary()
    assert (summary.nodes_total, summary.jobs_queued) == (0, 0)
    for call in (
        lambda: client.nodes.get("gpu1"),
        lambda: client.nodes.history("gpu1", window_s=60),
        lambda: client.nodes.drain("gpu1"),
        lambda: client.nodes.resume("gpu1"),
        lambda: client.nodes.set_labels("gpu1", {"rack": "r1"}),
        lambda: client.nodes.update("gpu1", api.NodeUpdate(docker_network="host")),
        lambda: client.nodes.remove("gpu1", force=True),
    ):
        with pytest.raises(errors.NotFound, match="gpu1"):
            call()


def test_a_bad_label_filter_names_the_parameter(client: Client) -> None:
    with pytest.raises(errors.ValidationError) as caught:
        client.nodes.list(labels=["no-equals-sign"])
    assert caught.value.details.get("path") == "label"


def test_node_routes_are_for_admins(client: Client, transport: PortalTransport) -> None:
    with _member(client, transport) as member:
        assert member.nodes.list() == []
        with pytest.raises(errors.PermissionDenied):
            member.nodes.drain("gpu1")
        with pytest.raises(errors.PermissionDenied):
            member.join_tokens.list()


# ------------------------------------------------------------------ jobs
def test_jobs_submit_get_list_cancel(client: Client) -> None:
    reply = client.jobs.submit(api.JobSubmit(argv=["echo", "hi"], name="hello"))
    job = client.jobs.get(reply.job.id)
    assert (job.name, job.state, job.argv) == ("hello", "queued", ["echo", "hi"])
    assert [j.id for j in client.jobs.list().jobs] == [job.id]
    result = client.jobs.cancel([job.id])
    assert result.cancelled == [job.id]
    assert client.jobs.list().jobs == []
    ended = client.jobs.list(all=True, state="cancelled", user=ADMIN, limit=5)
    assert [j.id for j in ended.jobs] == [job.id]


def test_an_array_job_reports_every_task(client: Client) -> None:
    reply = client.jobs.submit(api.JobSubmit(argv=["true"], array="0-2"))
    assert len(reply.ids) == 3
    assert client.jobs.list(limit=2).total == 3


def test_a_held_job_is_released(client: Client) -> None:
    held = client.jobs.submit(api.JobSubmit(argv=["true"], hold=True)).job
    assert held.state == "held"
    assert client.jobs.release(held.id).state == "queued"


def test_log_and_follow_of_an_ended_job(client: Client) -> None:
    job = client.jobs.submit(api.JobSubmit(argv=["true"])).job
    client.jobs.cancel([job.id])
    assert b"".join(client.jobs.log(job.id)) == b""
    assert list(client.jobs.follow(job.id)) == [LogEnded(state="cancelled", offset=0)]


def test_a_missing_job_is_not_found_for_every_job_method(client: Client) -> None:
    for call in (
        lambda: client.jobs.get(999),
        lambda: client.jobs.release(999),
        lambda: b"".join(client.jobs.log(999)),
        lambda: list(client.jobs.follow(999)),
    ):
        with pytest.raises(errors.NotFound):
            call()


def test_an_invalid_job_is_refused_naming_the_field(client: Client) -> None:
    with pytest.raises(errors.ValidationError) as caught:
        client.jobs.submit(api.JobSubmit(argv=["x"], gpus=999))
    assert "gpus" in caught.value.details.get("path", "")


# ------------------------------------------------------------------ datasets and transfers
def test_datasets_and_transfers_of_an_empty_lab(client: Client) -> None:
    assert client.datasets.list() == []
    assert client.datasets.list(node="gpu1") == []
    assert client.transfers.list() == []
    for call in (
        lambda: client.datasets.get("imagenet"),
        lambda: client.datasets.update("imagenet", api.DatasetUpdate(tags=["vision"])),
        lambda: client.transfers.get(7),
        lambda: client.transfers.cancel(7),
    ):
        with pytest.raises(errors.NotFound):
            call()


def test_dataset_changes_on_a_missing_node_are_refused(client: Client) -> None:
    url = "https://example.org/data.tar"
    for call in (
        lambda: client.datasets.start_import(api.DatasetImport(url=url, node="gpu1", name="d")),
        lambda: client.datasets.start_transfer(
            api.DatasetTransfer(name="d", src="gpu1", dst="gpu2")
        ),
        lambda: client.datasets.delete("d", node="gpu1"),
        lambda: client.datasets.digest("d", node="gpu1"),
    ):
        with pytest.raises(errors.ClientError):
            call()


# ------------------------------------------------------------------ settings and audit
def test_settings_get_and_update(client: Client) -> None:
    assert client.settings.get().image_patterns == []
    changed = client.settings.update(api.LabSettingsUpdate(image_patterns=["pytorch/*"]))
    assert changed.image_patterns == ["pytorch/*"]
    assert client.settings.get().image_patterns == ["pytorch/*"]


def test_audit_lists_and_verifies_what_the_client_did(client: Client) -> None:
    client.users.create(api.UserCreate(username="zoe", password="zoe-password-1"))
    rows = client.audit.list(action="user.*", actor=ADMIN, limit=10)
    assert [(r.action, r.target) for r in rows] == [("user.create", "user:zoe")]
    assert client.audit.list(since=rows[0].ts + 1) == []
    check = client.audit.verify()
    assert check.ok and check.rows >= 2
