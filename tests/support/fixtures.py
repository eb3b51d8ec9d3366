"""The fixtures every suite may use: real engines and an isolated home.

Registered for the whole tree by ``tests/conftest.py`` (``pytest_plugins``), which also
marks the tests that use the engine fixtures and holds CI's rule that they may not skip.

- ``postgres_url``: the test server (session); skips with the reason, or fails under CI.
- ``fresh_postgres_url`` / ``module_postgres_url``: a new, empty database for one test /
  one module, dropped afterwards (:func:`tests.support.postgres.fresh_database`).
- ``docker_engine``: a pinged ``docker.DockerClient``; ``docker_test_image``: the offline
  test image, built by ``tests/docker_image.sh`` when missing.
- ``tmp_home``: this test process with a HOME and XDG dirs of its own and no ``MLSM_*``
  setting (:func:`tests.support.env.isolate`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.ci import require
from tests.support.env import isolate
from tests.support.postgres import (
    fresh_database,
    hide_password,
    pg_execute,
    run_async,
    server_url,
)

TESTS_DIR = Path(__file__).resolve().parents[1]
DOCKER_TEST_IMAGE = "mlsm-test/busybox:latest"
DOCKER_CONNECT_TIMEOUT_S = 30
DOCKER_IMAGE_BUILD_TIMEOUT_S = 300.0


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """SQLAlchemy URL of the test PostgreSQL database (``MLSM_TEST_POSTGRES_URL``)."""
    url = server_url()
    try:
        run_async(pg_execute(url, "SELECT 1"))
    except Exception as exc:
        shown = hide_password(url)
        require(False, f"no PostgreSQL at {shown} ({type(exc).__name__}: {exc}); see .ci/run")
    return url


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """URL of a new, empty database ``mlsm_t_<random>`` for one test, dropped afterwards."""
    with fresh_database(postgres_url, "mlsm_t_") as url:
        yield url


@pytest.fixture(scope="module")
def module_postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A new, empty PostgreSQL database ``mlsm_m_<random>`` for one test module.

    It asks for ``postgres_url`` only when used, so a module whose ``master`` runs on
    SQLite never needs a server."""
    base = request.getfixturevalue("postgres_url")
    with fresh_database(base, "mlsm_m_") as url:
        yield url


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Any]:
    """A pinged ``docker.DockerClient`` for the local engine."""
    import docker

    try:
        client = docker.from_env(timeout=DOCKER_CONNECT_TIMEOUT_S)
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
    return isolate(monkeypatch, home)
