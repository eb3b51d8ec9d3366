"""``mlsm completion``: the real ``mlsm`` prints click's script, a real ``bash`` that sources
it completes mlsm's commands and options, and ``--install`` puts it where each shell looks."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.env import isolated_env
from tests.support.master import MLSM

#: One run of mlsm or of bash completing a word (each asks mlsm once).
RUN_TIMEOUT_S = 60.0
BASH = shutil.which("bash")
needs_bash = pytest.mark.skipif(BASH is None, reason="no bash here")


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = isolated_env(home, **extra)
    # The script runs `mlsm` at each TAB, found on PATH as in a user's shell.
    env["PATH"] = f"{Path(MLSM).parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    return env


def _mlsm(home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MLSM, *args],
        env=_env(home, **extra),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def _bash_complete(home: Path, script: Path, words: list[str]) -> list[str]:
    """What ``bash`` offers at TAB after ``words`` (the last one is being completed), set up
    as bash does for a ``complete -F`` function: COMP_WORDS, COMP_CWORD, the command as $1."""
    assert BASH is not None
    program = (
        'source "$1"; shift\n'
        'COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMPREPLY=()\n'
        "complete -p mlsm >/dev/null || exit 3\n"  # the script registered itself
        '_mlsm_completion mlsm "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"\n'
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    proc = subprocess.run(
        [BASH, "--norc", "--noprofile", "-c", program, "bash", str(script), *words],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


@pytest.fixture
def bash_script(tmp_path: Path) -> Path:
    res = _mlsm(tmp_path, "completion", "bash")
    assert res.returncode == 0, res.stderr
    path = tmp_path / "mlsm.bash"
    path.write_text(res.stdout)
    return path


@needs_bash
@pytest.mark.parametrize(
    ("words", "offered"),
    [
        (["mlsm", "sub"], ["submit"]),
        (["mlsm", "jo"], ["job", "jobs", "join-token"]),
        (["mlsm", "completion", "--ins"], ["--install"]),
        (["mlsm", "completion", ""], ["bash", "zsh", "fish"]),
    ],
)
def test_bash_completes_with_the_printed_script(
    tmp_path: Path, bash_script: Path, words: list[str], offered: list[str]
) -> None:
    assert _bash_complete(tmp_path, bash_script, words) == offered


@needs_bash
def test_install_bash_writes_where_bash_completion_loads_it_and_it_completes(
    tmp_path: Path,
) -> None:
    res = _mlsm(tmp_path, "completion", "bash", "--install")
    assert res.returncode == 0, res.stderr
    path = tmp_path / ".local" / "share" / "bash-completion" / "completions" / "mlsm"
    assert str(path) in res.stdout
    assert path.read_text() == _mlsm(tmp_path, "completion", "bash").stdout
    assert _bash_complete(tmp_path, path, ["mlsm", "sub"]) == ["submit"]


def test_install_zsh_writes_into_zfunc_and_says_what_to_add_to_zshrc(tmp_path: Path) -> None:
    res = _mlsm(tmp_path, "completion", "zsh", "--install")
    assert res.returncode == 0, res.stderr
    path = tmp_path / ".zfunc" / "_mlsm"
    assert path.read_text().startswith("#compdef mlsm\n")
    assert path.read_text() == _mlsm(tmp_path, "completion", "zsh").stdout
    assert f"fpath=({path.parent} $fpath)" in res.stdout
    assert "autoload -Uz compinit && compinit" in res.stdout


def test_install_fish_writes_into_its_completions_dir(tmp_path: Path) -> None:
    res = _mlsm(tmp_path, "completion", "fish", "--install")
    assert res.returncode == 0, res.stderr
    path = tmp_path / ".config" / "fish" / "completions" / "mlsm.fish"
    assert path.read_text() == _mlsm(tmp_path, "completion", "fish").stdout
    assert "_MLSM_COMPLETE=fish_complete" in path.read_text()


def test_install_replaces_a_link_instead_of_writing_through_it(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("not mlsm's\n")
    path = tmp_path / ".zfunc" / "_mlsm"
    path.parent.mkdir()
    path.symlink_to(elsewhere)
    assert _mlsm(tmp_path, "completion", "zsh", "--install").returncode == 0
    assert elsewhere.read_text() == "not mlsm's\n"
    assert not path.is_symlink() and path.read_text().startswith("#compdef mlsm")


def test_the_shell_defaults_to_shell_env(tmp_path: Path) -> None:
    res = _mlsm(tmp_path, "completion", SHELL="/usr/bin/fish")
    assert res.returncode == 0, res.stderr
    assert res.stdout == _mlsm(tmp_path, "completion", "fish").stdout


def test_an_unknown_shell_is_one_line(tmp_path: Path) -> None:
    res = _mlsm(tmp_path, "completion", SHELL="/bin/tcsh")
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        "mlsm: error: name the shell: mlsm completion bash|zsh|fish (SHELL is tcsh)"
    ]
    assert res.stdout == ""
