"""The systemd units start the right command, restart on failure and read their env file."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from mlsm.config import Settings

SYSTEMD = Path(__file__).resolve().parents[2] / "packaging" / "systemd"
UNITS = {"master": "mlsm-master.service", "agent": "mlsm-agent.service"}


def _unit(role: str) -> configparser.RawConfigParser:
    # systemd allows repeated keys (Environment=, SystemCallFilter=); the last one wins here.
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string((SYSTEMD / UNITS[role]).read_text())
    return parser


@pytest.mark.parametrize("role", UNITS)
def test_unit_restarts_on_failure(role):
    assert _unit(role)["Service"]["Restart"] == "on-failure"


@pytest.mark.parametrize("role", UNITS)
def test_unit_reads_its_optional_env_file(role):
    assert _unit(role)["Service"]["EnvironmentFile"] == f"-/etc/mlsm/{role}.env"


@pytest.mark.parametrize("role", UNITS)
def test_unit_runs_the_mlsm_subcommand_of_its_role(role):
    argv = shlex.split(_unit(role)["Service"]["ExecStart"])
    assert argv[0].startswith("/")
    assert argv[0].endswith("/mlsm")
    assert argv[1] == role


@pytest.mark.parametrize("role", UNITS)
def test_unit_is_installed_for_boot(role):
    assert _unit(role)["Install"]["WantedBy"] == "multi-user.target"


def test_master_runs_as_its_own_user_with_a_state_directory():
    service = _unit("master")["Service"]
    assert service["User"] == "mlsm"
    assert service["StateDirectory"] == "mlsm"
    assert "/var/lib/mlsm" in service["ReadWritePaths"].split()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ],
)
def test_master_is_sandboxed(key, value):
    assert _unit("master")["Service"][key] == value


def test_master_user_is_declared_for_sysusers():
    line = next(
        ln
        for ln in (SYSTEMD / "mlsm.sysusers.conf").read_text().splitlines()
        if ln.startswith("u ")
    )
    assert shlex.split(line)[1] == "mlsm"


def test_agent_stop_leaves_running_jobs_alive():
    assert _unit("agent")["Service"]["KillMode"] == "process"


@pytest.mark.parametrize("key", ["NoNewPrivileges", "ProtectHome", "PrivateTmp", "User"])
def test_agent_can_run_jobs_as_other_users(key):
    """Root, setuid allowed, /home and the real /tmp visible: what jobs need."""
    assert key not in _unit("agent")["Service"]


@pytest.mark.parametrize("example", ["master.env.example", "agent.env.example"])
def test_env_examples_name_only_real_settings(example):
    names = re.findall(r"^#?(MLSM_[A-Z0-9_]+)=", (SYSTEMD / example).read_text(), re.M)
    assert names
    known = {f"MLSM_{key.upper()}" for key in Settings.__struct_fields__}
    assert sorted(set(names) - known) == []


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_units_pass_systemd_analyze_verify(tmp_path):
    """systemd's own parser accepts every directive (ExecStart pointed at a real binary)."""
    paths = []
    for name in UNITS.values():
        text = (SYSTEMD / name).read_text().replace("/usr/local/bin/mlsm", "/bin/true")
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    proc = subprocess.run(
        ["systemd-analyze", "verify", *paths],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


def test_units_shipped_in_the_package_match_packaging() -> None:
    """`mlsm agent --print-systemd-unit` renders mlsm/data's copy: it must not drift."""
    root = Path(__file__).resolve().parents[2]
    for name in ("mlsm-agent.service", "mlsm-master.service"):
        assert (root / "mlsm" / "data" / name).read_text() == (
            root / "packaging" / "systemd" / name
        ).read_text(), f"mlsm/data/{name} differs from packaging/systemd/{name}: copy it over"


def test_print_systemd_unit_fills_in_this_host(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlsm",
            "agent",
            "--master",
            "https://m.lab:8765",
            "--dataset-root",
            str(tmp_path),
            "--label",
            "gpu=a100",
            "--print-systemd-unit",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        },
    ).stdout
    assert 'Environment=MLSM_MASTER="https://m.lab:8765"' in out
    assert f'Environment=MLSM_DATASET_ROOTS="{tmp_path}"' in out
    assert 'Environment=MLSM_LABELS="gpu=a100"' in out
    assert (
        "KillMode=process" in out
        and "ExecStart=" in out
        and out.rstrip().endswith("WantedBy=multi-user.target")
    )


def _third_party_imports() -> dict[str, str]:
    """Top-level modules imported by the shipped packages that are not the standard
    library or the project itself: module -> the first file importing it."""
    import ast
    import sys

    root = Path(__file__).resolve().parents[2]
    own = {"mlsm", "agent", "tui"}
    found: dict[str, str] = {}
    for package in sorted(own):
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in own and top not in sys.stdlib_module_names:
                        found.setdefault(top, str(path.relative_to(root)))
    return found


def test_every_third_party_import_is_a_declared_dependency():
    """A module the shipped code imports must come from a distribution pyproject.toml
    declares: one that is only here through a test tool (pathspec through mypy once) is
    missing from a real install (the master image, pipx)."""
    import tomllib
    from importlib.metadata import packages_distributions

    root = Path(__file__).resolve().parents[2]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}
    providers = packages_distributions()
    undeclared = {
        module: where
        for module, where in _third_party_imports().items()
        if not {d.lower().replace("_", "-") for d in providers.get(module, [])} & declared
    }
    assert not undeclared, undeclared
