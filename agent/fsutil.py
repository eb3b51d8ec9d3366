"""The agent's name for :mod:`mlsm.bulk.fstree`: walking and removing trees of any depth by
directory descriptor, never following a link.

The walker and remover moved to ``mlsm.bulk`` so the CLI (which must not import the agent)
uses the very same code for the trees it writes; the agent's modules keep importing them
from here.
"""

from __future__ import annotations

from mlsm.bulk.fstree import (
    DIR_FDS_KEPT,
    DIR_FLAGS,
    DirFds,
    TreeChangedError,
    WalkEntry,
    open_dir,
    remove_at,
    remove_tree,
    walk,
)

__all__ = [
    "DIR_FDS_KEPT",
    "DIR_FLAGS",
    "DirFds",
    "TreeChangedError",
    "WalkEntry",
    "open_dir",
    "remove_at",
    "remove_tree",
    "walk",
]
