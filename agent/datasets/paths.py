"""Dataset names and paths: what is a valid name, and confining paths to a dataset root.

The name rules (one path component; no separators, control, invisible or look-alike
characters, nothing NFKC rewrites, no leading ``-`` or ``.``) live in
:mod:`mlsm.datasets_names` so the master checks names at its edge with the very same code;
this module re-exports them raising the agent's :class:`~.errors.DatasetPathError`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from mlsm.datasets_names import (
    MAX_NAME_BYTES,
    MAX_NAME_CHARS,
    RESERVED_PREFIX,
    DatasetNameError,
    check_dataset_name,
)

from .errors import DatasetPathError

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_NAME_CHARS",
    "RESERVED_PREFIX",
    "confine",
    "confine_path",
    "is_dataset_name",
    "pick_root",
    "validate_dataset_name",
]


def validate_dataset_name(name: object) -> str:
    """Return ``name`` unchanged when it is a safe dataset name, else raise.

    Raises :class:`DatasetPathError` whose message names the offending character. The
    check itself lives in :mod:`mlsm.datasets_names`, shared with the master.
    """
    try:
        return check_dataset_name(name)
    except DatasetNameError as exc:
        raise DatasetPathError(exc.message) from None


def is_dataset_name(name: str) -> bool:
    try:
        validate_dataset_name(name)
    except DatasetPathError:
        return False
    return True


def _resolved_root(root: Path) -> Path:
    try:
        real = Path(root).resolve(strict=True)
    except (OSError, RuntimeError) as e:
        raise DatasetPathError(f"dataset root {str(root)!r} is not usable: {e}") from None
    if not real.is_dir():
        raise DatasetPathError(f"dataset root {str(root)!r} is not a directory")
    return real


def confine(root: Path, name: str) -> Path:
    """The path of dataset ``name`` under ``root``, guaranteed to lie inside ``root``.

    ``root`` is resolved (it may itself be a symlink, e.g. ``/data -> /mnt/data``). Where
    the entry exists it is resolved strictly (a symlink must lead to an existing place
    inside the root; a dangling or escaping one is refused); where it does not, the result
    is ``<resolved root>/<name>``.
    """
    validate_dataset_name(name)
    real_root = _resolved_root(root)
    candidate = real_root / name
    if not os.path.lexists(candidate):
        return candidate
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise DatasetPathError(
            f"dataset {name!r} is a symlink that leads nowhere (refused)"
        ) from None
    if real == real_root or not real.is_relative_to(real_root):
        raise DatasetPathError(f"dataset {name!r} leads outside its root {str(root)!r}")
    return real


def confine_path(root: Path, path: str | os.PathLike[str]) -> Path:
    """Check a full dataset path given by the master; return it resolved.

    The path must be absolute, free of ``.``/``..`` components, name a direct child of
    ``root`` (as configured or as resolved) with a valid dataset name, and resolve inside
    the root. The root itself is never accepted.
    """
    raw = os.fspath(path)
    if "\0" in raw:
        raise DatasetPathError("dataset path contains a NUL character")
    pure = PurePosixPath(raw)
    if not pure.is_absolute():
        raise DatasetPathError(f"dataset path {raw!r} is not absolute")
    if any(part in (".", "..") for part in raw.split("/")):
        raise DatasetPathError(f"dataset path {raw!r} contains '.' or '..'")
    real_root = _resolved_root(root)
    if pure == PurePosixPath("/") or pure.parent == pure:
        raise DatasetPathError(f"dataset path {raw!r} is a file-system root")
    try:
        parent = Path(pure.parent).resolve(strict=True)
    except (OSError, RuntimeError):
        raise DatasetPathError(f"dataset path {raw!r} is not inside {str(root)!r}") from None
    if parent != real_root:
        if Path(raw).resolve() == real_root:
            raise DatasetPathError(f"dataset path {raw!r} is the dataset root itself")
        raise DatasetPathError(f"dataset path {raw!r} is not directly inside {str(root)!r}")
    real = confine(real_root, pure.name)
    if real.parent != real_root:
        raise DatasetPathError(f"dataset path {raw!r} does not lead to a direct child of the root")
    return real


def pick_root(roots: Sequence[Path], requested: str = "") -> Path:
    """The configured root a command names (``""`` = the first), refusing any other."""
    if not roots:
        raise DatasetPathError("this agent has no dataset root configured")
    if not requested:
        return Path(roots[0])
    want = Path(requested)
    for root in roots:
        if Path(root) == want:
            return Path(root)
        try:
            if Path(root).resolve(strict=True) == want.resolve(strict=True):
                return Path(root)
        except (OSError, RuntimeError):
            continue
    raise DatasetPathError(f"{requested!r} is not one of this agent's dataset roots")
