"""The test tree stays a package tree, and its modules import each other by dotted name.

Two layout faults broke collection before: two test modules with the same basename in
different folders (pytest imported both as one top-level name), and ``from conftest import
...`` in the dashboard tests, which found the integration suite's conftest whenever both
folders ran in one call. With an ``__init__.py`` in every folder every module has a dotted
name of its own (``tests.tui.conftest``), so neither can happen; these tests keep it so.
The benchmarks (``tests/bench``) and the GPU checks (``tests/gpu``) are scripts run
directly, and may import their neighbours by file name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
#: Folders of scripts run directly (``python tests/bench/bench_jobs.py``), not collected.
SCRIPT_DIRS = ("bench", "gpu")
#: Folders that hold data, never code.
DATA_DIRS = ("__pycache__", "__snapshots__")


def _code_dirs() -> Iterator[Path]:
    for path in [TESTS, *sorted(p for p in TESTS.rglob("*") if p.is_dir())]:
        if not any(part in DATA_DIRS for part in path.relative_to(TESTS).parts):
            if any(path.glob("*.py")):
                yield path


def _collected_modules() -> Iterator[Path]:
    for path in sorted(TESTS.rglob("*.py")):
        rel = path.relative_to(TESTS)
        if rel.parts[0] not in SCRIPT_DIRS:
            yield path


def _bare_imports(path: Path, local: set[str]) -> list[str]:
    """``import x`` / ``from x import ...`` in ``path`` where ``x`` is a module of the tree."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"line {node.lineno}: {n}" for n in names if n.split(".")[0] in local]
    return found


def test_every_folder_of_test_code_is_a_package() -> None:
    missing = [
        str(d.relative_to(TESTS.parent)) for d in _code_dirs() if not (d / "__init__.py").exists()
    ]
    assert not missing, f"add an __init__.py (a docstring line) to: {missing}"


def test_test_modules_import_the_tree_by_dotted_name() -> None:
    local = {p.stem for p in TESTS.rglob("*.py") if p.stem != "__init__"}
    bad = {
        str(p.relative_to(TESTS.parent)): hits
        for p in _collected_modules()
        if (hits := _bare_imports(p, local))
    }
    assert not bad, f"import these as tests.<folder>.<module>: {bad}"


def _edits_sys_path(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and ast.unparse(node.func.value) == "sys.path"
        ):
            return True
    return False


def test_no_collected_module_edits_the_import_path() -> None:
    """A test folder put on ``sys.path`` is how a bare name finds the wrong module."""
    bad = [str(p.relative_to(TESTS.parent)) for p in _collected_modules() if _edits_sys_path(p)]
    assert not bad, bad
