"""The root of the test tree: shared fixtures registered, CI strictness enforced.

Tests use the real thing wherever it can run: a Docker engine, a PostgreSQL server. When
one is absent, a test *skips with a visible reason* on a laptop, but under ``CI=true``
(set by ``.ci/run``) the same condition is a *failure*, so CI cannot go green by skipping.

- ``require`` (:mod:`tests.support.ci`) is the one way to say "this test needs X".
- The engine fixtures and ``tmp_home`` live in :mod:`tests.support.fixtures`, registered
  here for every suite. Tests that use the ``postgres_url``/``fresh_postgres_url`` or
  ``docker_engine``/``docker_test_image`` fixtures are marked ``postgres``/``docker``
  automatically, so ``pytest -m "not docker"`` works and the CI hook below knows them.
- ``soak`` tests (minutes of faults, ``tests/soak``) run only when ``-m`` names them
  (``pytest -m soak tests/soak``, .ci/run's soak phase); any other run deselects them, a
  ``-m "not docker"`` of its own included.
- Under ``CI=true`` a ``docker`` or ``postgres`` test that skips for *any* reason
  (``pytest.skip``, ``skipif``, ``importorskip``) is reported as failed.

Everything else the suites share (waiting, starting a master, the isolated environment, a
fresh database) is in ``tests/support/``. Fixtures for a running master or agent live in
``tests/integration/conftest.py``.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

from tests.support.ci import ci_strict
from tests.support.ci import require as require  # the name tests of this file's rules use

pytest_plugins = ["tests.support.fixtures"]

# Markers whose tests must run (not skip) under CI=true, and the fixtures that imply them.
CI_REQUIRED_MARKERS = ("docker", "postgres")
#: What pytest-xdist's workers start with that a serial run does not have.
XDIST_SIZE_VARIABLES = ("COLUMNS", "LINES")
_MARKER_BY_FIXTURE = {
    "postgres_url": "postgres",
    "fresh_postgres_url": "postgres",
    "docker_engine": "docker",
    "docker_test_image": "docker",
}


# ----------------------------------------------------------------------------- hooks
def pytest_configure(config: pytest.Config) -> None:
    """In a pytest-xdist worker, forget the ``COLUMNS=80``/``LINES=24`` its start-up sets:
    a terminal program a test runs under a pty of its own size (the dashboard, a shell)
    would take those over the pty's real size."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        for name in XDIST_SIZE_VARIABLES:
            os.environ.pop(name, None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by the engines their fixtures need; leave out the soak unless asked."""
    if "soak" not in (config.option.markexpr or ""):
        soaks = [item for item in items if item.get_closest_marker("soak") is not None]
        if soaks:
            config.hook.pytest_deselected(items=soaks)
            items[:] = [item for item in items if item.get_closest_marker("soak") is None]
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
