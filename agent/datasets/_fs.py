"""Small file-system helpers shared by import, receive and delete.

Trees are removed with :func:`agent.fsutil.remove_tree` (iterative, descriptor based,
never follows a link, any depth); :func:`cleanup` is its form for ``finally`` blocks.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import IO

from agent.fsutil import remove_tree
from mlsm.bulk.fstree import rename_noreplace as _rename_noreplace

from .errors import DatasetExistsError
from .paths import RESERVED_PREFIX, confine

log = logging.getLogger("mlsm.agent.datasets")


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` atomically, failing with DatasetExistsError if dst exists
    (:func:`mlsm.bulk.fstree.rename_noreplace`: ``renameat2(RENAME_NOREPLACE)``)."""
    try:
        _rename_noreplace(src, dst)
    except FileExistsError:
        raise DatasetExistsError(
            f"a dataset named {dst.name!r} already exists in {dst.parent}"
        ) from None


def prepare_target(root: Path, name: str, kind: str) -> tuple[Path, Path]:
    """Check that ``<root>/<name>`` is free; make the temp dir; return (target, temp dir)."""
    target = confine(root, name)
    if os.path.lexists(target):
        raise DatasetExistsError(f"a dataset named {name!r} already exists in {root}")
    return target, make_temp_dir(target.parent, kind, name)


def open_new(path: str | os.PathLike[str], dir_fd: int | None = None) -> IO[bytes]:
    """Open a new file for writing (``path`` relative to ``dir_fd`` when given); never
    follows or replaces anything already there."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return open(os.open(path, flags, 0o600, dir_fd=dir_fd), "wb", buffering=0)


def make_temp_dir(root: Path, kind: str, name: str) -> Path:
    """Create ``<root>/.mlsm-<kind>-<name>-<random>/`` (mode 0700) and return it."""
    path = Path(root) / f"{RESERVED_PREFIX}{kind}-{name}-{secrets.token_hex(6)}"
    os.mkdir(path, 0o700)
    return path


def cleanup(path: Path) -> None:
    """Remove a temp tree in a ``finally`` block: a failure is logged, never raised, so it
    cannot hide the error that led here; what is left is swept at the agent's next start
    (:func:`~.delete.purge_leftovers`)."""
    try:
        remove_tree(path)
    except OSError as exc:
        log.warning("could not remove %s (%s); it is removed at the next start", path, exc)
