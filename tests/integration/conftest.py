"""Fixtures for integration tests: real ``mlsm master`` processes and the real ``mlsm`` CLI.

- ``master``: one master per test module (SQLite unless the module overrides
  ``database_kind`` with ``params=helpers.BOTH_DATABASES`` to run on both engines);
  an object with ``.url``, ``.data_dir``, ``.proc``, ``.log_path``, ``.admin_token``,
  ``.stop()``, ``.kill()``, ``.restart()`` (see :class:`helpers.Master`).
- ``master_factory``: start extra masters for tests that change global state (rate limits,
  broken databases); every one is stopped at the end of the test.
- ``make_user(role)``: a new user on ``master``; returns a session token of theirs.
- ``mlsm_cli(args, token=...)``: the real executable against ``master`` with an isolated
  HOME; returns ``(rc, stdout, stderr)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import CliResult, Master


@pytest.fixture(scope="module")
def database_kind() -> str:
    """Which database the module's ``master`` uses; modules override it to run both.

    ``MLSM_TEST_DATABASE=postgresql`` (CI's second pass) moves every module to PostgreSQL.
    """
    return os.environ.get("MLSM_TEST_DATABASE", "sqlite")


def database_url_for(kind: str, request: pytest.FixtureRequest) -> str | None:
    """None (SQLite in the data dir) or a fresh PostgreSQL database for the module
    (``module_postgres_url``, :mod:`tests.support.fixtures`)."""
    if kind == "sqlite":
        return None
    assert kind == "postgresql", kind
    return str(request.getfixturevalue("module_postgres_url"))


@pytest.fixture(scope="module")
def master(
    database_kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Master]:
    """A running master shared by the tests of one module."""
    url = database_url_for(database_kind, request)
    m = Master(tmp_path_factory.mktemp(f"master-{database_kind}"), database_url=url)
    m.start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def master_factory(tmp_path: Path) -> Iterator[Callable[..., Master]]:
    """``master_factory(database_url=None, start=True, **kw)``: a master for this test only."""
    started: list[Master] = []

    def make(*, database_url: str | None = None, start: bool = True, **kwargs: Any) -> Master:
        m = Master(tmp_path / f"m{len(started)}", database_url=database_url, **kwargs)
        started.append(m)
        return m.start() if start else m

    try:
        yield make
    finally:
        for m in started:
            m.stop()


@pytest.fixture(scope="module")
def make_user(master: Master) -> Callable[..., str]:
    """``make_user(role, name=None)`` -> a session token of a new user on ``master``."""
    return master.make_user


@pytest.fixture
def mlsm_cli(master: Master, tmp_path: Path) -> Callable[..., CliResult]:
    """``mlsm_cli(args, token=None, password=None)`` runs ``mlsm`` against ``master``."""
    home = tmp_path / "cli-home"
    home.mkdir(exist_ok=True)

    def run(args: list[str], **kwargs: Any) -> CliResult:
        kwargs.setdefault("home", home)
        return master.cli(args, **kwargs)

    return run
