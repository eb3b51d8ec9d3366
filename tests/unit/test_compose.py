"""packaging/docker/compose.yaml: every variable it reads is in .env.example and nothing
else is; the agent service beside the master has what a containerised agent needs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from mlsm.config import Settings

DOCKER = Path(__file__).resolve().parents[2] / "packaging" / "docker"
# Compose interpolation: ${NAME}, ${NAME:-default}, ${NAME?err}, ... and bare $NAME; "$$" is
# a literal dollar.
_VAR = re.compile(r"(?<!\$)\$(?:\{([A-Za-z_][A-Za-z0-9_]*)|([A-Za-z_][A-Za-z0-9_]*))")
_DEFAULTED = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}")
_ENV_LINE = re.compile(r"^#?\s*([A-Za-z_][A-Za-z0-9_]*)=", re.M)
#: Variables the images read that are not settings: the first admin's password (read by
#: --init-admin) and the HEALTHCHECK's URL.
NOT_SETTINGS = {"MLSM_PASSWORD", "MLSM_HEALTHCHECK_URL"}
SETTINGS_ENV = {f"MLSM_{key.upper()}" for key in Settings.__struct_fields__}


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _strings(node: Any) -> list[str]:
    """Every key and value of the parsed file, as text (comments are not part of it)."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return [str(node)] if node is not None else []


def _used() -> set[str]:
    return {a or b for text in _strings(_compose()) for a, b in _VAR.findall(text)}


def _declared() -> list[str]:
    return _ENV_LINE.findall((DOCKER / ".env.example").read_text())


def test_compose_reads_variables() -> None:
    assert {"MLSM_PASSWORD", "MLSM_JOIN_TOKEN", "MLSM_AGENT_MASTER"} <= _used()


def test_every_variable_compose_reads_is_in_env_example() -> None:
    assert sorted(_used() - set(_declared())) == []


def test_env_example_names_only_variables_compose_reads() -> None:
    assert sorted(set(_declared()) - _used()) == []


def test_env_example_names_each_variable_once() -> None:
    names = _declared()
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_settings_passed_to_mlsm_are_real_settings() -> None:
    for name in ("master", "agent"):
        env = _compose()["services"][name]["environment"]
        unknown = {k for k in env if k.startswith("MLSM_")} - SETTINGS_ENV - NOT_SETTINGS
        assert sorted(unknown) == [], name


def test_the_agent_runs_beside_the_master_from_env() -> None:
    services = _compose()["services"]
    agent = services["agent"]
    assert agent["command"] == ["agent"]
    assert agent["profiles"] == ["agent"]
    assert "master" in agent["depends_on"]
    env = agent["environment"]
    assert env["MLSM_JOIN_TOKEN"].startswith("${MLSM_JOIN_TOKEN")
    assert env["MLSM_MASTER"] == "${MLSM_AGENT_MASTER:-https://master:8765}"
    assert agent["pid"] == "host"
    assert "/var/run/docker.sock:/var/run/docker.sock" in agent["volumes"]


def test_the_agents_host_paths_are_mounted_at_the_same_path() -> None:
    """The host's engine resolves job containers' mounts on the host (README.md, Agent)."""
    agent = _compose()["services"]["agent"]
    for volume in agent["volumes"]:
        outside, inside = _DEFAULTED.sub(r"\1", volume).split(":")[:2]
        assert outside == inside and outside.startswith("/"), volume
    data_dir = agent["environment"]["MLSM_AGENT_DATA_DIR"]
    assert f"{data_dir}:{data_dir}" in agent["volumes"]


def test_the_gpu_reservation_is_documented_in_the_agent_service() -> None:
    text = (DOCKER / "compose.yaml").read_text()
    agent = text.split("\n  agent:\n", 1)[1].split("\n  postgres:\n", 1)[0]
    assert "# deploy:" in agent and "#         - driver: nvidia" in agent
    assert "capabilities: [gpu]" in agent
