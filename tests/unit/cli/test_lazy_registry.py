"""The CLI's lazy registry (``mlsm.cli._COMMANDS``): every command it names loads, says of
itself what the registry says for it, and ``mlsm --help`` and shell completion list every
command with that short help without importing any command's module."""

from __future__ import annotations

import os
import subprocess
import sys

import click
import pytest

from mlsm.cli import _COMMANDS, cli

#: The modules that hold commands: none of them is imported to list the commands.
COMMAND_MODULES = sorted({module for module, _, _ in _COMMANDS.values()})
PROFILE_PREFIX = "import time:"


def _imported(stderr: str) -> set[str]:
    """Modules named by ``-X importtime`` lines (``import time: self | cumulative | name``)."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith(PROFILE_PREFIX) and line.count("|") == 2
    }


def _mlsm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mlsm", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("name", sorted(_COMMANDS))
def test_every_registered_command_loads_and_its_short_help_is_its_own(name: str) -> None:
    command = cli.get_command(click.Context(cli), name)
    assert isinstance(command, click.Command), f"{name} names {_COMMANDS[name][:2]}"
    assert command.get_short_help_str(limit=1000) == _COMMANDS[name][2]


def test_help_lists_every_command_with_its_short_help() -> None:
    formatter = click.HelpFormatter(width=1000)  # one row per command, unwrapped
    cli.format_commands(click.Context(cli), formatter)
    rows = [line.split(None, 1) for line in formatter.getvalue().splitlines()[1:]]
    assert {name: short for name, short in rows} == {n: h for n, (_, _, h) in _COMMANDS.items()}


def test_help_imports_no_command() -> None:
    res = _mlsm("--help")
    assert res.returncode == 0, res.stderr
    listed = {line.split()[0] for line in res.stdout.splitlines() if line.startswith("  ")}
    assert set(_COMMANDS) <= listed
    imported = _imported(res.stderr)
    assert "mlsm.cli" in imported  # the profile is really there
    assert sorted(imported & set(COMMAND_MODULES)) == []


def test_completion_lists_every_command_with_its_short_help_without_importing_one() -> None:
    res = _mlsm(env={"_MLSM_COMPLETE": "zsh_complete", "COMP_WORDS": "mlsm ", "COMP_CWORD": "1"})
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    offered = {lines[i + 1]: lines[i + 2] for i in range(0, len(lines) - 2, 3)}
    assert {n: offered.get(n) for n in _COMMANDS} == {n: h for n, (_, _, h) in _COMMANDS.items()}
    assert sorted(_imported(res.stderr) & set(COMMAND_MODULES)) == []


def test_completion_of_a_prefix_offers_only_its_commands() -> None:
    res = _mlsm(env={"_MLSM_COMPLETE": "bash_complete", "COMP_WORDS": "mlsm jo", "COMP_CWORD": "1"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["plain,job", "plain,jobs", "plain,join-token"]
