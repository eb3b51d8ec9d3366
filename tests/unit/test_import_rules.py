"""Who may import whom (docs/architecture.md, "Layers"), read from the source with ast.

Dependencies point one way: ``agent`` and ``tui`` build on ``mlsm``; ``mlsm.master`` never
imports ``agent``, ``tui``, the CLI or the client; ``tui`` never imports ``agent`` or
``mlsm.master``; ``agent`` never imports ``tui``, ``mlsm.master``, ``mlsm.cli`` or the
people's client; the shared core of ``mlsm`` imports none of the processes built on it; and
the CLI reaches the master, the agent and the dashboard only inside the command that needs
them, so ``mlsm --help`` stays fast. Every import counts, a lazy one inside a function too,
unless a rule says "at module level".
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("mlsm", "agent", "tui")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # what it imports, dotted
    line: int
    top_level: bool  # at module level (not inside a function or class body)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str) -> Iterator[Import]:
    tree = ast.parse(source)
    top = {id(n) for n in tree.body}
    # Module-level code inside if/try blocks still runs at import time.
    for n in tree.body:
        if isinstance(n, ast.If | ast.Try):
            top.update(id(c) for c in ast.walk(n) if isinstance(c, ast.Import | ast.ImportFrom))
    package = module if _is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base]
        else:
            continue
        for t in targets:
            if t.split(".")[0] in OURS:
                yield Import(module, t, node.lineno, id(node) in top)


_PACKAGES: set[str] = set()


def _is_package(module: str) -> bool:
    return module in _PACKAGES


def all_imports() -> list[Import]:
    files = [p for pkg in OURS for p in (ROOT / pkg).rglob("*.py")]
    for p in files:
        if p.name == "__init__.py":
            _PACKAGES.add(_module_name(p))
    out: list[Import] = []
    for p in files:
        out.extend(imports_of(p.read_text(), _module_name(p)))
    return out


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


# (who, what it must not import, only at module level?)
RULES: list[tuple[str, tuple[str, ...], bool]] = [
    ("mlsm.master", ("agent", "tui", "mlsm.cli", "mlsm.client"), False),
    ("tui", ("agent", "mlsm.master", "mlsm.cli"), False),
    ("agent", ("tui", "mlsm.master", "mlsm.cli", "mlsm.client"), False),
    ("mlsm.wire", ("mlsm.master", "mlsm.cli", "mlsm.client", "agent", "tui"), False),
    ("mlsm.client", ("mlsm.master", "mlsm.cli", "agent", "tui"), False),
    ("mlsm.cli", ("mlsm.master", "agent", "tui"), True),
]
# The shared core: every mlsm module outside these packages (and the entry point).
NOT_CORE = ("mlsm.master", "mlsm.cli", "mlsm.__main__")
CORE_FORBIDDEN = ("mlsm.master", "agent", "tui")


def broken(imports: list[Import]) -> list[str]:
    out = []
    for imp in imports:
        for who, forbidden, top_only in RULES:
            if _within(imp.module, who) and (imp.top_level or not top_only):
                if any(_within(imp.target, f) for f in forbidden):
                    out.append(f"{imp.module}:{imp.line} imports {imp.target}")
        is_core = _within(imp.module, "mlsm") and not any(_within(imp.module, x) for x in NOT_CORE)
        if is_core and any(_within(imp.target, f) for f in CORE_FORBIDDEN):
            out.append(f"{imp.module}:{imp.line} imports {imp.target}")
    return sorted(set(out))


def test_every_import_keeps_the_layers() -> None:
    imports = all_imports()
    assert len(imports) > 200  # the walk found the code
    assert broken(imports) == []


@pytest.mark.parametrize(
    ("module", "source", "why"),
    [
        ("mlsm.master.services.x", "import agent.main", "master -> agent"),
        ("mlsm.master.routes.x", "def f():\n    from tui.app import MlsmApp", "a lazy one too"),
        ("tui.screens.x", "from mlsm.master.scheduler import schedule", "tui -> master"),
        ("agent.supervisor", "from mlsm.cli.common import client_from", "agent -> cli"),
        ("mlsm.cli.jobs", "from agent.main import Agent", "cli -> agent at module level"),
        ("mlsm.policy", "from mlsm.master import app", "core -> master"),
        ("mlsm.master.services", "from ...cli import common", "a relative import"),
    ],
)
def test_the_rules_catch_a_forbidden_import(module: str, source: str, why: str) -> None:
    _PACKAGES.add("mlsm.master.services")
    assert broken(list(imports_of(source, module))), why


def test_the_cli_may_reach_the_processes_inside_a_command() -> None:
    lazy = "def agent():\n    from agent.main import Agent\n"
    assert broken(list(imports_of(lazy, "mlsm.cli.agent"))) == []
