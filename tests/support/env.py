"""The one isolated environment: a HOME and XDG dirs of the test's own, and no ``MLSM_*``
setting of whoever runs the tests.

Nothing a test runs through mlsm's config paths (``~/.config/mlsm``, credentials, the
client's saved login) reaches the real user's files, and a developer's ``MLSM_URL`` or
``MLSM_TOKEN`` never leaks into a test. ``MLSM_TEST_*`` variables are the test
infrastructure's own (which PostgreSQL, which database pass) and are kept; mlsm reads none.

:func:`isolated_env` builds the environment of a child process; :func:`isolate` applies the
same to the test process itself (through ``monkeypatch``, undone after the test).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

#: The XDG base directories, and where each lives under the isolated HOME.
XDG_DIRS = (
    ("XDG_CONFIG_HOME", ".config"),
    ("XDG_DATA_HOME", ".local/share"),
    ("XDG_STATE_HOME", ".local/state"),
    ("XDG_CACHE_HOME", ".cache"),
)


def scrubbed(var: str) -> bool:
    """Whether ``var`` is a caller's mlsm setting, left out of an isolated environment."""
    return var.startswith("MLSM_") and not var.startswith("MLSM_TEST_")


def home_vars(home: Path) -> dict[str, str]:
    """HOME and the XDG dirs under ``home`` (made, so programs may write there at once)."""
    out = {"HOME": str(home)}
    for var, sub in XDG_DIRS:
        path = home / sub
        path.mkdir(parents=True, exist_ok=True)
        out[var] = str(path)
    return out


def isolated_env(home: Path, base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``base`` (the caller's environment by default) without ``MLSM_*`` settings, with
    HOME and the XDG dirs under ``home``, plus ``extra``."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not scrubbed(k)}
    env.update(home_vars(home))
    env.update(extra)
    return env


def isolate(monkeypatch: pytest.MonkeyPatch, home: Path) -> Path:
    """Give the test process itself the isolated environment of ``home``; returns it."""
    home.mkdir(parents=True, exist_ok=True)
    for var, value in home_vars(home).items():
        monkeypatch.setenv(var, value)
    for var in list(os.environ):
        if scrubbed(var):
            monkeypatch.delenv(var)
    return home


__all__ = ["XDG_DIRS", "home_vars", "isolate", "isolated_env", "scrubbed"]
