"""The README's install lines work as root and as a user: no ``sudo``, pipx found or got,
and ``pipx ensurepath`` so that ``mlsm`` is a command in the next shell."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def _install_lines() -> list[str]:
    text = README.read_text()
    section = text.split("## Two commands", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "the Two commands section has a sh block"
    return [ln for ln in block.group(1).splitlines() if ln.strip()]


def test_two_lines_without_sudo_that_put_mlsm_on_path() -> None:
    lines = _install_lines()
    assert len(lines) == 2
    assert not any(re.search(r"\bsudo\b", ln) for ln in lines)
    assert "pipx ensurepath" in lines[1] and "pipx install ." in lines[1]


def _stub(bindir: Path, name: str, rc: int) -> None:
    script = bindir / name
    script.write_text(f'#!/bin/sh\necho "{name} $*" >> "$CALLS"\nexit {rc}\n')
    script.chmod(0o755)


@pytest.mark.parametrize(
    ("have_pipx", "apt_rc", "expected"),
    [
        (True, 0, []),  # pipx is there: nothing is installed
        (False, 0, ["apt-get install -y pipx"]),  # root: the system's package
        (False, 100, ["apt-get install -y pipx", "python3 -m pip install --user pipx"]),  # user
    ],
    ids=["pipx-present", "as-root", "as-user"],
)
def test_the_first_line_gets_pipx_as_root_or_as_a_user(
    tmp_path: Path, have_pipx: bool, apt_rc: int, expected: list[str]
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    calls.touch()
    if have_pipx:
        _stub(bindir, "pipx", 0)
    _stub(bindir, "apt-get", apt_rc)
    _stub(bindir, "python3", 0)
    res = subprocess.run(
        ["/bin/sh", "-c", _install_lines()[0]],
        env={"PATH": str(bindir), "CALLS": str(calls)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res
    assert calls.read_text().splitlines() == expected
