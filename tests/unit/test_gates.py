"""The lint gates hold: strict mypy, a shrinking ignore budget, and a pre-commit config
that runs exactly what CI's scripts/test runs, offline."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("mlsm", "agent", "tui")
#: ``type: ignore`` comments left in the packages, each forced by a library and explained
#: beside it. Lower this when one goes; it must never rise.
TYPE_IGNORE_BUDGET = 3
_IGNORE = re.compile(r"#\s*type:\s*ignore(?P<code>\[[a-z0-9-]+(?:,\s*[a-z0-9-]+)*\])?")
VALIDATE_TIMEOUT_S = 60


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _lint_commands_of_scripts_test() -> list[str]:
    """The commands of scripts/test's lint block, as they are written there."""
    text = (ROOT / "scripts" / "test").read_text()
    block = re.search(r'if \[ "\$\{MLSM_SKIP_LINT:-\}" != 1 \]; then\n(.*?)\nfi\n', text, re.S)
    assert block, "scripts/test has no lint block"
    return [
        line.strip() for line in block.group(1).splitlines() if line.strip().startswith(".venv/")
    ]


def _hooks() -> list[dict]:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    return [hook for repo in config["repos"] for hook in repo["hooks"]]


def test_pre_commit_runs_the_same_lint_commands_as_scripts_test():
    ci = _lint_commands_of_scripts_test()
    assert ci, "scripts/test runs no lint command"
    assert [hook["entry"] for hook in _hooks()] == ci


def test_pre_commit_hooks_check_the_whole_tree_as_ci_does():
    for hook in _hooks():
        assert hook.get("pass_filenames") is False, hook["id"]
        assert hook.get("always_run") is True, hook["id"]


def test_pre_commit_needs_no_network():
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    for repo in config["repos"]:
        assert repo["repo"] == "local"
        for hook in repo["hooks"]:
            assert hook["language"] in ("system", "unsupported"), hook["id"]
            assert not hook.get("additional_dependencies"), hook["id"]


def test_pre_commit_accepts_the_config():
    proc = subprocess.run(
        [sys.executable, "-m", "pre_commit", "validate-config", ".pre-commit-config.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=VALIDATE_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_is_strict_over_the_three_packages():
    mypy = _pyproject()["tool"]["mypy"]
    assert mypy["strict"] is True
    assert mypy["warn_unused_ignores"] is True
    assert "ignore-without-code" in mypy["enable_error_code"]
    assert sorted(mypy["packages"]) == sorted(PACKAGES)
    assert "ignore_missing_imports" not in mypy, "missing imports are ignored per module only"


def _ships_types(module: str) -> bool:
    """PEP 561: a package with ``py.typed``, a ``.pyi`` beside a module, or a stub package."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"{module} is not installed"
    origin = Path(spec.origin)
    if spec.submodule_search_locations is not None:
        if (origin.parent / "py.typed").exists():
            return True
        site = origin.parent.parent
    else:
        if origin.with_suffix(".pyi").exists():
            return True
        site = origin.parent
    return (site / f"{module}-stubs").exists()


def test_untyped_imports_are_allowed_only_for_packages_without_types():
    overrides = _pyproject()["tool"]["mypy"].get("overrides", [])
    untyped = [
        module
        for o in overrides
        if o.get("ignore_missing_imports")
        for module in ([o["module"]] if isinstance(o["module"], str) else o["module"])
    ]
    for module in untyped:
        assert not module.endswith("*"), f"{module}: name the module, not a pattern"
        assert not _ships_types(module), f"{module} ships types now: drop its override"


def _ignores() -> list[tuple[str, int, str]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if _IGNORE.search(line):
                    found.append((str(path.relative_to(ROOT)), n, line))
    return found


def test_type_ignores_stay_within_their_budget():
    found = _ignores()
    assert len(found) <= TYPE_IGNORE_BUDGET, "\n".join(f"{p}:{n}" for p, n, _ in found)


def test_every_type_ignore_names_its_error_code():
    bare = [f"{p}:{n}" for p, n, line in _ignores() if not _IGNORE.search(line).group("code")]
    assert not bare


def test_docstring_rules_cover_public_modules_and_packages():
    lint = _pyproject()["tool"]["ruff"]["lint"]
    assert {"D100", "D104"} <= set(lint["select"])
    for pattern, ignored in lint.get("per-file-ignores", {}).items():
        if "D" in ignored or "D100" in ignored or "D104" in ignored:
            assert not pattern.startswith(PACKAGES), pattern
