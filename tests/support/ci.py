"""CI strictness: a test that needs an engine skips on a laptop and fails under ``CI=true``.

The hooks that enforce it for ``docker``/``postgres`` tests live in ``tests/conftest.py``.
"""

from __future__ import annotations

import os

import pytest


def ci_strict() -> bool:
    """True under CI (``CI`` is ``true`` or ``1``): missing engines fail instead of skip."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def require(condition: bool, reason: str) -> None:
    """Skip the test with ``reason`` unless ``condition``; under CI, fail instead."""
    if condition:
        return
    if ci_strict():
        pytest.fail(f"required under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


__all__ = ["ci_strict", "require"]
