"""The async client (the dashboard's) against the real master app, in-process: each
resource group answers with its structs, errors are the master's classes."""

from __future__ import annotations

import httpx
import pytest

from mlsm import errors
from mlsm.client import AsyncClient
from mlsm.wire import api
from mlsm.wire.follow import LogEnded
from tests.unit.client.conftest import ADMIN, URL


async def test_auth_and_health(asgi: httpx.ASGITransport) -> None:
    async with AsyncClient(URL, transport=asgi) as c:
        assert (await c.auth.health()).status == "ok"
        with pytest.raises(errors.AuthenticationError):
            await c.auth.me()


async def test_jobs_submit_list_cancel_log_follow(aclient: AsyncClient) -> None:
    job = (await aclient.jobs.submit(api.JobSubmit(argv=["sleep", "9"]))).job
    assert (await aclient.jobs.get(job.id)).state == "queued"
    assert [j.id for j in (await aclient.jobs.list(state="queued")).jobs] == [job.id]
    assert (await aclient.jobs.cancel([job.id])).cancelled == [job.id]
    assert [c async for c in aclient.jobs.log(job.id, offset=0, limit=100)] == []
    events = [e async for e in aclient.jobs.follow(job.id)]
    assert events == [LogEnded(state="cancelled", offset=0)]


async def test_a_held_job_is_released(aclient: AsyncClient) -> None:
    held = (await aclient.jobs.submit(api.JobSubmit(argv=["true"], hold=True))).job
    assert (await aclient.jobs.release(held.id)).state == "queued"


async def test_nodes_and_join_tokens(aclient: AsyncClient) -> None:
    assert await aclient.nodes.list() == []
    assert (await aclient.nodes.summary()).nodes_total == 0
    with pytest.raises(errors.NotFound):
        await aclient.nodes.history("gpu1", window_s=600)
    with pytest.raises(errors.NotFound):
        await aclient.nodes.remove("gpu1")
    made = await aclient.join_tokens.create(api.JoinTokenCreate(note="new rack"))
    assert [t.note for t in await aclient.join_tokens.list()] == ["new rack"]
    await aclient.join_tokens.revoke(made.info.id)
    assert (await aclient.join_tokens.list())[0].revoked


async def test_datasets_and_transfers(aclient: AsyncClient) -> None:
    assert await aclient.datasets.list(node="gpu1") == []
    assert await aclient.transfers.list() == []
    with pytest.raises(errors.NotFound):
        await aclient.datasets.get("imagenet")
    with pytest.raises(errors.ClientError):
        await aclient.datasets.delete("imagenet", node="gpu1")


async def test_users_tokens_settings_audit(aclient: AsyncClient) -> None:
    await aclient.users.create(api.UserCreate(username="zoe", password="zoe-password-1"))
    assert (await aclient.users.update("zoe", api.UserUpdate(disabled=True))).disabled
    assert [u.username for u in await aclient.users.list()] == [ADMIN, "zoe"]
    token = await aclient.tokens.create(api.ApiTokenCreate(name="ci"))
    await aclient.tokens.revoke(token.info.id)
    assert [t.name for t in await aclient.tokens.list() if t.kind == "api"] == []
    await aclient.settings.update(api.LabSettingsUpdate(mount_allow=["/data"]))
    assert (await aclient.settings.get()).mount_allow == ["/data"]
    actions = [r.action for r in await aclient.audit.list(limit=50)]
    assert {"user.create", "user.update", "settings.update"} <= set(actions)
    assert (await aclient.audit.verify()).ok


async def test_a_token_set_after_login_is_used(asgi: httpx.ASGITransport) -> None:
    async with AsyncClient(URL, "not-a-token", transport=asgi) as c:
        with pytest.raises(errors.AuthenticationError):
            await c.jobs.list()
        c.token = (await c.auth.login(ADMIN, "admin-password-1")).token
        assert (await c.jobs.list()).total == 0
