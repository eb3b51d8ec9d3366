"""Under CI=true, tests that need Docker or PostgreSQL may not pass by skipping.

Each test runs pytest on a small test file beside a copy of the real ``tests/conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).resolve().parents[1] / "conftest.py").read_text()
MARKERS_INI = """
[pytest]
markers =
    docker: needs a Docker engine
    postgres: needs a PostgreSQL server
asyncio_default_fixture_loop_scope = function
"""
# In-process runs are fast; the snapshot plugin keeps process-global state, so it stays off.
INNER_ARGS = ("-p", "no:cacheprovider", "-p", "no:textual-snapshot", "-rs")


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makeini(MARKERS_INI)
    return pytester


def _run(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None, source: str):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    suite.makepyfile(source)
    return suite.runpytest_inprocess(*INNER_ARGS)


MARKED_SKIP = """
import pytest

@pytest.mark.docker
def test_needs_docker():
    pytest.skip("no Docker engine here")
"""


@pytest.mark.parametrize("ci", ["true", "1", "TRUE"])
def test_marked_skip_fails_under_ci(suite, monkeypatch, ci):
    result = _run(suite, monkeypatch, ci, MARKED_SKIP)
    result.assert_outcomes(failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*skipped under CI=true*marked docker*no Docker engine here*"])


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_marked_skip_stays_a_skip_off_ci(suite, monkeypatch, ci):
    result = _run(suite, monkeypatch, ci, MARKED_SKIP)
    result.assert_outcomes(skipped=1)
    assert result.ret == pytest.ExitCode.OK


def test_skipif_marker_on_postgres_test_fails_under_ci(suite, monkeypatch):
    source = """
import pytest

@pytest.mark.postgres
@pytest.mark.skipif(True, reason="server absent")
def test_db():
    pass
"""
    result = _run(suite, monkeypatch, "true", source)
    result.assert_outcomes(errors=1)  # skipif acts at setup, so it becomes a setup error
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*marked postgres*server absent*"])


def test_unmarked_skip_stays_a_skip_under_ci(suite, monkeypatch):
    source = """
import pytest

def test_not_applicable():
    pytest.skip("only on macOS")
"""
    result = _run(suite, monkeypatch, "true", source)
    result.assert_outcomes(skipped=1)
    assert result.ret == pytest.ExitCode.OK


def test_xfail_on_marked_test_is_untouched_under_ci(suite, monkeypatch):
    source = """
import pytest

@pytest.mark.docker
@pytest.mark.xfail(reason="known bug")
def test_known_bug():
    assert False
"""
    result = _run(suite, monkeypatch, "true", source)
    result.assert_outcomes(xfailed=1)


def test_require_skips_with_reason_off_ci(suite, monkeypatch):
    source = """
from conftest import require

def test_needs_engine():
    require(False, "engine X is absent")
"""
    result = _run(suite, monkeypatch, None, source)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*engine X is absent*"])


def test_require_fails_under_ci(suite, monkeypatch):
    source = """
from conftest import require

def test_needs_engine():
    require(False, "engine X is absent")
"""
    result = _run(suite, monkeypatch, "true", source)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*required under CI=true: engine X is absent*"])


def test_engine_fixtures_mark_their_tests(suite, monkeypatch):
    """A test that uses postgres_url is a postgres test without saying so."""
    source = """
import pytest

@pytest.fixture
def postgres_url():  # shadows the real fixture: no server needed to test the marking
    pytest.skip("no server")

def test_db(postgres_url):
    pass
"""
    result = _run(suite, monkeypatch, "true", source)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*marked postgres*no server*"])
    result = suite.runpytest_inprocess(*INNER_ARGS, "-m", "not postgres")
    result.assert_outcomes(deselected=1)
