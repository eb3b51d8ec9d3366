"""Fixtures of mlsm.bulk's tests (helpers are in ``support.py``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.deep_trees import remove_all_under
from tests.unit.bulk.support import BIG


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside every tree, which hostile links point to; must stay intact."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "precious.txt").write_text("keep me")
    return d


@pytest.fixture
def deep_cleanup(tmp_path: Path) -> Iterator[None]:
    """Remove deep trees at the end with the iterative remover (pytest's would die)."""
    yield
    remove_all_under(tmp_path)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding one 64 MiB file of varied bytes (made once per module)."""
    root = tmp_path_factory.mktemp("big")
    block = bytearray(hashlib.sha256(b"seed").digest() * (1 << 15))  # 1 MiB
    with open(root / "big.bin", "wb") as f:
        for i in range(BIG >> 20):
            block[:8] = i.to_bytes(8, "little")
            f.write(block)
    return root
