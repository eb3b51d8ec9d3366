"""Fixtures shared by the agent's unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.deep_trees import remove_all_under


@pytest.fixture
def deep_cleanup(tmp_path: Path) -> Iterator[None]:
    """For tests that leave deep trees under ``tmp_path``: remove them at the end, with
    the iterative remover (pytest's ``shutil.rmtree`` would die on them)."""
    yield
    remove_all_under(tmp_path)
