"""``/metrics`` behind the ``metrics_token`` setting, against real master processes: open
when the setting is empty, otherwise only ``Authorization: Bearer <token>`` scrapes it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import Master, error_of

METRICS_TOKEN = "scrape-secret-0123456789"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Master]:
    """A master whose /metrics needs METRICS_TOKEN (set through MLSM_METRICS_TOKEN)."""
    m = Master(tmp_path_factory.mktemp("metrics-token"), env={"MLSM_METRICS_TOKEN": METRICS_TOKEN})
    m.start()
    try:
        yield m
    finally:
        m.stop()


def _is_prometheus_text(body: str) -> bool:
    return "# TYPE mlsm_jobs gauge" in body or "# HELP mlsm_jobs" in body


def test_without_a_token_setting_metrics_is_open(master: Master) -> None:
    resp = master.request("GET", "/metrics")
    assert resp.status_code == 200, resp.text
    assert _is_prometheus_text(resp.text)


def test_the_right_bearer_token_scrapes_metrics(guarded: Master) -> None:
    resp = guarded.request("GET", "/metrics", token=METRICS_TOKEN)
    assert resp.status_code == 200, resp.text
    assert _is_prometheus_text(resp.text)


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        f"Bearer {METRICS_TOKEN[:-1]}",  # a prefix
        f"Bearer {METRICS_TOKEN}x",  # longer
        "Bearer " + "x" * len(METRICS_TOKEN),  # same length
        f"Node {METRICS_TOKEN}",  # the agents' scheme
        f"Basic {METRICS_TOKEN}",
        METRICS_TOKEN,  # no scheme
    ],
)
def test_anything_else_is_401_with_the_error_body(
    guarded: Master, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    resp = guarded.request("GET", "/metrics", headers=headers)
    assert resp.status_code == 401, resp.text
    err = error_of(resp)
    assert err["code"] == "unauthenticated"
    assert "metrics_token" in err["message"]
    assert METRICS_TOKEN not in resp.text
    assert "mlsm_" not in resp.text


def test_a_users_token_does_not_open_metrics(guarded: Master) -> None:
    """The setting is a scraper's key, not a role: even a superadmin's session is refused."""
    resp = guarded.request("GET", "/metrics", token=guarded.admin_token)
    assert resp.status_code == 401, resp.text


def test_the_metrics_token_guards_only_metrics(guarded: Master) -> None:
    assert guarded.request("GET", "/healthz").status_code == 200
    assert guarded.request("GET", "/api/v1/auth/me", token=guarded.admin_token).status_code == 200


def test_the_metrics_token_comes_from_the_config_file_too(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'metrics_token = "{METRICS_TOKEN}"\n')
    m = Master(tmp_path / "m", env={"MLSM_CONFIG": str(config)})
    m.start()
    try:
        assert m.request("GET", "/metrics").status_code == 401
        assert m.request("GET", "/metrics", token=METRICS_TOKEN).status_code == 200
    finally:
        m.stop()
