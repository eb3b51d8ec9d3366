"""The shared test support keeps its word: the wait helper's rules and the isolated
environment (``tests/support``), since every suite relies on them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.env import isolate, isolated_env
from tests.support.wait import wait_until, wait_until_async

#: Deadlines of the waits below that are meant to run out: short, they are not waited for.
GIVE_UP_S = 0.05


def test_a_wait_returns_what_the_condition_returned() -> None:
    answers = iter([None, 0, "", "done"])
    assert wait_until(lambda: next(answers), 5, "an answer", poll_s=0) == "done"


def test_an_assertion_is_not_yet_and_its_message_is_the_failure() -> None:
    def cond() -> bool:
        raise AssertionError("saw 3 nodes")

    with pytest.raises(AssertionError, match="waiting for all 4 nodes: saw 3 nodes"):
        wait_until(cond, GIVE_UP_S, "all 4 nodes", poll_s=0)


def test_another_exception_ends_the_wait_at_once() -> None:
    tries = 0

    def cond() -> bool:
        nonlocal tries
        tries += 1
        raise RuntimeError("the master exited")

    with pytest.raises(RuntimeError, match="the master exited"):
        wait_until(cond, 60, "never", poll_s=0)
    assert tries == 1


def test_retry_on_names_more_exceptions_that_mean_not_yet() -> None:
    answers = iter([FileNotFoundError("no file yet"), "there"])

    def cond() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert wait_until(cond, 5, "a file", poll_s=0, retry_on=(OSError,)) == "there"


def test_what_may_be_said_when_the_wait_fails() -> None:
    seen = ["nothing yet"]
    with pytest.raises(AssertionError, match="waiting for the job: nothing yet"):
        wait_until(lambda: False, GIVE_UP_S, lambda: f"the job: {seen[-1]}", poll_s=0)


async def test_the_async_wait_awaits_a_coroutine_condition() -> None:
    answers = iter([None, 7])

    async def cond() -> int | None:
        return next(answers)

    assert await wait_until_async(cond, 5, "an answer", poll_s=0) == 7


async def test_the_async_wait_tries_at_least_min_tries_times() -> None:
    tries = 0

    def cond() -> bool:
        nonlocal tries
        tries += 1
        return False

    with pytest.raises(AssertionError):
        await wait_until_async(cond, 0, "never", poll_s=0, min_tries=25)
    assert tries == 25


def test_the_isolated_environment_has_its_own_home_and_no_mlsm_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLSM_TOKEN", "the-developers-token")
    monkeypatch.setenv("MLSM_TEST_DATABASE", "postgresql")
    env = isolated_env(tmp_path / "h", MLSM_URL="http://127.0.0.1:1")
    assert "MLSM_TOKEN" not in env
    assert env["MLSM_TEST_DATABASE"] == "postgresql"  # the test infrastructure's own
    assert env["MLSM_URL"] == "http://127.0.0.1:1"
    assert env["HOME"] == str(tmp_path / "h")
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        assert Path(env[var]).is_dir() and Path(env[var]).is_relative_to(tmp_path / "h")
    assert env["PATH"] == os.environ["PATH"]


def test_isolate_gives_this_process_the_same_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLSM_URL", "https://the-real-lab:8765")
    home = isolate(monkeypatch, tmp_path / "h")
    assert os.environ["HOME"] == str(home)
    assert "MLSM_URL" not in os.environ
    assert {k: v for k, v in isolated_env(home).items() if k != "PATH"} == {
        k: v for k, v in os.environ.items() if k != "PATH"
    }
