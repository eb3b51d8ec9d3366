"""Every setting is documented: a new ``Settings`` field must land in docs/configuration.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlsm.config import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
FIELDS = sorted(Settings.__struct_fields__)


def _documented_rows() -> dict[str, str]:
    """Table rows of the doc keyed by their first cell: | `key` | type | default | env | ..."""
    rows = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"\|\s*`([a-z_]+)`\s*\|", line)
        if match:
            rows[match.group(1)] = line
    return rows


@pytest.mark.parametrize("key", FIELDS)
def test_setting_has_a_row_in_the_docs(key):
    rows = _documented_rows()
    assert key in rows, f"Settings.{key} is missing from {DOC.name}: add a row for it"
    assert f"`MLSM_{key.upper()}`" in rows[key], f"row of {key!r} must name MLSM_{key.upper()}"


def test_docs_list_no_setting_that_does_not_exist():
    stale = sorted(set(_documented_rows()) - set(FIELDS))
    assert not stale, f"{DOC.name} documents settings that do not exist: {stale}"


@pytest.mark.parametrize("table", ["[master]", "[agent]", "[client]"])
def test_docs_describe_the_config_tables(table):
    assert table in DOC.read_text()


def test_docs_describe_precedence_and_credentials():
    text = DOC.read_text()
    for phrase in ("MLSM_CONFIG", "XDG_CONFIG_HOME", "credentials.toml", "0600", "Precedence"):
        assert phrase in text
