"""Release hygiene: the changelog is kept, the version lives in one place, and the tag
scheme is written down where whoever releases will look."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

import mlsm
from tests.support.master import MLSM

ROOT = Path(__file__).resolve().parents[2]
CHANGELOG = ROOT / "CHANGELOG.md"
OPERATIONS = ROOT / "docs" / "operations.md"
#: A release heading of Keep a Changelog: ``## 1.2.3 - 2026-11-28``.
_RELEASE = re.compile(r"^(\d+)\.(\d+)\.(\d+) - \d{4}-\d{2}-\d{2}$")
#: Section kinds Keep a Changelog allows under a version.
_KINDS = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def _sections() -> list[str]:
    return re.findall(r"^## (.+?)\s*$", CHANGELOG.read_text(), re.M)


def _released() -> list[str]:
    return [m.group(0).split(" ", 1)[0] for s in _sections() if (m := _RELEASE.match(s))]


def test_changelog_has_a_section_for_this_version_or_unreleased() -> None:
    sections = _sections()
    assert sections, "CHANGELOG.md has no ## sections"
    top = sections[0]
    assert top == "Unreleased" or top.startswith(f"{mlsm.__version__} - "), (
        f"the newest CHANGELOG section is {top!r}: it must be 'Unreleased' or "
        f"'{mlsm.__version__} - <date>' (mlsm/__init__.py's version)"
    )
    assert mlsm.__version__ in _released(), (
        f"CHANGELOG.md has no '## {mlsm.__version__} - <date>' section for the version "
        "mlsm/__init__.py names"
    )


def test_changelog_is_in_keep_a_changelog_form() -> None:
    sections = _sections()
    assert sections.count("Unreleased") <= 1
    assert all(s == "Unreleased" or _RELEASE.match(s) for s in sections), sections
    versions = [tuple(int(p) for p in v.split(".")) for v in _released()]
    assert versions == sorted(versions, reverse=True), "releases newest first, once each"
    assert len(set(versions)) == len(versions)
    kinds = set(re.findall(r"^### (.+?)\s*$", CHANGELOG.read_text(), re.M))
    assert kinds <= _KINDS, f"unknown change kinds: {sorted(kinds - _KINDS)}"


def test_the_version_is_written_in_one_place() -> None:
    """pyproject reads it from mlsm/__init__.py; no other module spells a version."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["hatch"]["version"]["path"] == "mlsm/__init__.py"
    spelled = []
    for package in ("mlsm", "agent", "tui"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Assign | ast.AnnAssign):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    if any(isinstance(t, ast.Name) and t.id == "__version__" for t in targets):
                        spelled.append(str(path.relative_to(ROOT)))
    assert spelled == ["mlsm/__init__.py"]


def test_mlsm_version_prints_the_one_version() -> None:
    out = subprocess.run(
        [MLSM, "--version"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.split()[:2] == ["mlsm", mlsm.__version__]


def _releasing() -> str:
    text = OPERATIONS.read_text()
    assert "\n## Releasing\n" in text, "docs/operations.md has no '## Releasing' section"
    return text.split("\n## Releasing\n", 1)[1].split("\n## ", 1)[0]


def test_the_tag_scheme_is_documented_in_operations_releasing() -> None:
    section = _releasing()
    assert "`v<version>`" in section
    assert 'git tag -a v<version> -m "mlsm <version>"' in section
    assert "mlsm/__init__.py" in section and "CHANGELOG.md" in section


@pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout"
)
def test_every_release_tag_names_a_version_in_the_changelog() -> None:
    tags = subprocess.run(
        ["git", "-C", str(ROOT), "tag", "--list", "v*"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    released = set(_released())
    assert [t for t in tags if t.removeprefix("v") not in released] == []
