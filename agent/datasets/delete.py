"""Deleting a dataset, and sweeping leftovers of interrupted operations.

A delete first renames the dataset to ``<root>/.mlsm-trash-<name>-<random>`` (atomic, and
hidden from the scanner), then removes that tree. So the catalog sees the dataset whole
or not at all, never half-deleted; if the agent dies mid-way, :func:`purge_leftovers`
removes the trash (and any import/receive temp dir) at the next start.

Trees go with :func:`agent.fsutil.remove_tree`: a loop over directory descriptors that
never follows a link, so a dataset of any depth is deleted (``shutil.rmtree`` recursed
once per level and died near depth 1000, at the agent's start-up sweep too).
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from collections.abc import Collection, Sequence
from pathlib import Path, PurePosixPath

from agent.fsutil import remove_tree

from .errors import DatasetError, DatasetPathError
from .paths import RESERVED_PREFIX, confine_path

log = logging.getLogger("mlsm.agent.datasets")


def _owning_root(roots: Sequence[Path], path: str) -> Path:
    """The configured root whose direct child ``path`` names (configured or resolved)."""
    parent = PurePosixPath(path).parent
    for root in roots:
        if PurePosixPath(os.path.abspath(root)) == parent:
            return Path(root)
    for root in roots:
        try:
            if Path(parent).resolve(strict=True) == Path(root).resolve(strict=True):
                return Path(root)
        except (OSError, RuntimeError):
            continue
    raise DatasetPathError(f"{path!r} is not a dataset in any of this agent's dataset roots")


def delete_dataset(roots: Sequence[Path], path: str | os.PathLike[str]) -> bool:
    """Delete the dataset at ``path``; False when it is already gone (a repeated command).

    Refuses (DatasetPathError, nothing touched) a path outside every root, the root
    itself, anything below a dataset, a bad name, and a symlink (the scanner never lists
    symlinks, so they are not datasets mlsm manages).
    """
    raw = os.fspath(path)
    root = _owning_root(roots, raw)
    if not os.path.lexists(raw):
        confine_path(root, raw)  # still refuse hostile paths loudly
        return False
    if stat.S_ISLNK(os.lstat(raw).st_mode):
        raise DatasetPathError(f"{raw!r} is a symlink, not a dataset; remove it by hand")
    real = confine_path(root, raw)
    trash = real.parent / f"{RESERVED_PREFIX}trash-{real.name}-{secrets.token_hex(6)}"
    try:
        os.rename(real, trash)
    except FileNotFoundError:
        return False
    try:
        remove_tree(trash)
    except OSError as exc:
        raise DatasetError(
            f"dataset {real.name!r} is out of the catalog, but removing its files failed "
            f"({exc.strerror or exc}); the agent retries at its next start"
        ) from None
    return True


def purge_leftovers(roots: Sequence[Path], keep: Collection[str] = ()) -> list[Path]:
    """Remove ``.mlsm-*`` temp and trash entries under each root; return what went.

    Call at agent start only, when no import, receive or delete can be running. ``keep``
    names entries to spare: the work dirs of receives the agent resumes
    (:mod:`agent.bulk.receives`). An entry that cannot be removed is logged and left for
    the next start: the agent comes up anyway.
    """
    removed: list[Path] = []
    for root in roots:
        try:
            entries = list(os.scandir(root))
        except OSError:
            continue
        for e in entries:
            if e.name.startswith(RESERVED_PREFIX) and e.name not in keep:
                try:
                    remove_tree(e.path)
                except OSError as exc:
                    log.warning("could not remove leftover %s (%s)", e.path, exc)
                    continue
                removed.append(Path(e.path))
    return removed
