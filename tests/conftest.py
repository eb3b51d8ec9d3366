"""Shared test infrastructure: real engines, CI strictness, isolated homes.

Tests use the real thing wherever it can run: a Docker engine, a PostgreSQL server. When
one is absent, a test *skips with a visible reason* on a laptop, but under ``CI=true``
(set by ``.ci/run``) the same condition is a *failure*, so CI cannot go green by skipping.

- :func:`require` is the one way to say "this test needs X".
- Tests that use the ``postgres_url``/``fresh_postgres_url`` or ``docker_engine``/
  ``docker_test_image`` fixtures are marked ``postgres``/``docker`` automatically, so
  ``pytest -m "not docker"`` works and the CI hook below knows them.
- Under ``CI=true`` a ``docker`` or ``postgres`` test that skips for *any* reason
  (``pytest.skip``, ``skipif``, ``importorskip``) is reported as failed.

Fixtures for a running master or agent live in ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
import socket
import subprocess
from collections.abc import Coroutine, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS_DIR = Path(__file__).resolve().parent
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://mlsm:mlsm@127.0.0.1:5432/mlsm_test"
DOCKER_TEST_IMAGE = "mlsm-test/busybox:latest"
CONNECT_TIMEOUT_S = 3.0
DOCKER_IMAGE_BUILD_TIMEOUT_S = 300.0

# Markers whose tests must run (not skip) under CI=true, and the fixtures that imply them.
CI_REQUIRED_MARKERS = ("docker", "postgres")
_MARKER_BY_FIXTURE = {
    "postgres_url": "postgres",
    "fresh_postgres_url": "postgres",
    "docker_engine": "docker",
    "docker_test_image": "docker",
}


# ----------------------------------------------------------------------------- helpers
def ci_strict() -> bool:
    """True under CI (``CI`` is ``true`` or ``1``): missing engines fail instead of skip."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def require(condition: bool, reason: str) -> None:
    """Skip the test with ``reason`` unless ``condition``; under CI, fail instead."""
    if condition:
        return
    if ci_strict():
        pytest.fail(f"required under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` to completion on a private loop in another thread.

    Sync fixtures may be set up while an event loop runs in this thread (pytest-asyncio),
    where ``asyncio.run`` would refuse.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _asyncpg_dsn(sqlalchemy_url: str) -> str:
    """``postgresql+asyncpg://...`` (SQLAlchemy) -> ``postgresql://...`` (asyncpg)."""
    from sqlalchemy.engine import make_url

    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def _hide_password(sqlalchemy_url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(sqlalchemy_url).render_as_string(hide_password=True)


def _with_database(sqlalchemy_url: str, database: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(sqlalchemy_url).set(database=database).render_as_string(hide_password=False)


async def _pg_execute(sqlalchemy_url: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_asyncpg_dsn(sqlalchemy_url), timeout=CONNECT_TIMEOUT_S)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def postgres_url() -> str:
    """SQLAlchemy URL of the test PostgreSQL database (``MLSM_TEST_POSTGRES_URL``)."""
    url = os.environ.get("MLSM_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL
    try:
        _run_async(_pg_execute(url, "SELECT 1"))
    except Exception as exc:
        shown = _hide_password(url)
        require(False, f"no PostgreSQL at {shown} ({type(exc).__name__}: {exc}); see .ci/run")
    return url


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """URL of a new, empty database ``mlsm_t_<random>`` for one test, dropped afterwards."""
    name = f"mlsm_t_{secrets.token_hex(6)}"
    _run_async(_pg_execute(postgres_url, f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(postgres_url, name)
    finally:
        # FORCE (PostgreSQL >= 13) ends connections a test left open.
        _run_async(_pg_execute(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Any]:
    """A pinged ``docker.DockerClient`` for the local engine."""
    import docker

    try:
        client = docker.from_env(timeout=int(CONNECT_TIMEOUT_S * 10))
        client.ping()
    except Exception as exc:
        require(False, f"no Docker engine ({type(exc).__name__}: {exc}); see .ci/run")
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def docker_test_image(docker_engine: Any) -> str:
    """Name of the offline test image, built by ``tests/docker_image.sh`` when missing."""
    import docker.errors

    try:
        docker_engine.images.get(DOCKER_TEST_IMAGE)
    except docker.errors.ImageNotFound:
        proc = subprocess.run(
            ["bash", str(TESTS_DIR / "docker_image.sh")],
            capture_output=True,
            text=True,
            timeout=DOCKER_IMAGE_BUILD_TIMEOUT_S,
            check=False,
        )
        require(
            proc.returncode == 0,
            f"cannot build {DOCKER_TEST_IMAGE}: {proc.stderr.strip() or proc.stdout.strip()}",
        )
    return DOCKER_TEST_IMAGE


@pytest.fixture
def tmp_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A throwaway HOME with XDG dirs inside it, and no MLSM_* settings from the caller.

    Nothing a test does through mlsm's config paths reaches the real user's files.
    ``MLSM_TEST_*`` variables (test infrastructure) are kept.
    """
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var, sub in (
        ("XDG_CONFIG_HOME", ".config"),
        ("XDG_DATA_HOME", ".local/share"),
        ("XDG_STATE_HOME", ".local/state"),
        ("XDG_CACHE_HOME", ".cache"),
    ):
        path = home / sub
        path.mkdir(parents=True)
        monkeypatch.setenv(var, str(path))
    for var in list(os.environ):
        if var.startswith("MLSM_") and not var.startswith("MLSM_TEST_"):
            monkeypatch.delenv(var)
    return home


# ----------------------------------------------------------------------------- hooks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by the engines their fixtures need."""
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            marker = _MARKER_BY_FIXTURE.get(fixture)
            if marker and item.get_closest_marker(marker) is None:
                item.add_marker(marker)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under CI=true, a skipped ``docker``/``postgres`` test is reported as a failure."""
    report: pytest.TestReport = yield
    if not (report.skipped and ci_strict()) or hasattr(report, "wasxfail"):
        return report
    needed = [m for m in CI_REQUIRED_MARKERS if item.get_closest_marker(m) is not None]
    if needed:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        report.outcome = "failed"
        report.longrepr = (
            f"skipped under CI=true, but this test is marked {', '.join(needed)} "
            f"and CI must run it: {reason}"
        )
    return report
