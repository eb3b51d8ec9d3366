"""Bulk bytes: one machinery for every tree that moves (code snapshots, job outputs,
projects, dataset copies).

The vocabulary (each module's docstring has its rules)::

    manifest.py  Entry, Manifest: a tree as (path, kind, size, mode, mtime, sha256, target)
    build.py     build_manifest: a person's tree -> Manifest (ignore rules, hash cache)
    ignore.py    IgnoreRules: .gitignore / .mlsmignore as git reads them
    hashing.py   sha256_fd, HashCache
    frames.py    the frame stream: 20-byte header + bytes; FrameReader, FrameWriter
    want.py      Want (what a receiver lacks), batch_wants, Receiver, pump / apump
    source.py    Source: answers a Want with frames, from a tree or a Store
    sink.py      Sink: receives a whole new tree, then finish(dest) renames it into place
    inplace.py   InPlaceSink: brings an existing directory up to a manifest, file by file
    journal.py   the sinks' journal (resume after a kill, a cut, a reboot)
    cas.py       Store: content-addressed blobs, LRU-bounded, pins
    storesink.py StoreSink: fills a Store from a frame stream
    handoff.py   Handoff: one thread fills reused buffers, another works on them
    fstree.py    descriptor walks: walk, remove_tree, DirFds, rename_noreplace

A transfer in one process (a local copy; the agent materialising a code snapshot from its
node cache)::

    with Source.from_tree(src, manifest) as source:   # or Source.from_store(store, m)
        sink = Sink(manifest, work, owner=(uid, gid))
        pump(sink, source.chunks)
        sink.finish(dest)

Across a network the same loop runs with ``fetch`` sending the want (``encode_want``) and
returning the response's chunks; a cut response is followed by the next ``next_want()``,
and a new sink over the same ``work`` dir resumes after a restart. Stdlib, msgspec and
pathspec only: no HTTP here, so the CLI, the agent and the master all use it.

Each public name is loaded from its module on first use, so a piece imported alone (the
wire structs need only ``Want`` and ``check_path``; ``mlsm submit`` only the manifest
builder) does not bring the store, the receivers or their imports along: the CLI starts
in tens of milliseconds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._receiver import Progress
    from .build import build_manifest
    from .cas import BlobWriter, Store, StoreUsage
    from .frames import Flag, Frame, FrameError, FrameReader, FrameWriter, encode_frame
    from .hashing import FileKey, HashCache, sha256_fd
    from .ignore import IgnoreRules
    from .inplace import InPlaceSink
    from .manifest import (
        Entry,
        Manifest,
        check_path,
        decode_manifest,
        encode_manifest,
        sort_entries,
        validate_manifest,
    )
    from .sink import Sink
    from .source import Source
    from .storesink import StoreSink
    from .want import Receiver, Want, apump, batch_wants, decode_want, encode_want, pump

#: Which module holds each public name; a name's module is imported on first use.
_WHERE: dict[str, str] = {
    "Progress": "_receiver",
    "build_manifest": "build",
    "BlobWriter": "cas",
    "Store": "cas",
    "StoreUsage": "cas",
    "Flag": "frames",
    "Frame": "frames",
    "FrameError": "frames",
    "FrameReader": "frames",
    "FrameWriter": "frames",
    "encode_frame": "frames",
    "FileKey": "hashing",
    "HashCache": "hashing",
    "sha256_fd": "hashing",
    "IgnoreRules": "ignore",
    "InPlaceSink": "inplace",
    "Entry": "manifest",
    "Manifest": "manifest",
    "check_path": "manifest",
    "decode_manifest": "manifest",
    "encode_manifest": "manifest",
    "sort_entries": "manifest",
    "validate_manifest": "manifest",
    "Sink": "sink",
    "Source": "source",
    "StoreSink": "storesink",
    "Receiver": "want",
    "Want": "want",
    "apump": "want",
    "batch_wants": "want",
    "decode_want": "want",
    "encode_want": "want",
    "pump": "want",
}


__all__ = [
    "BlobWriter",
    "Entry",
    "FileKey",
    "Flag",
    "Frame",
    "FrameError",
    "FrameReader",
    "FrameWriter",
    "HashCache",
    "IgnoreRules",
    "InPlaceSink",
    "Manifest",
    "Progress",
    "Receiver",
    "Sink",
    "Source",
    "Store",
    "StoreSink",
    "StoreUsage",
    "Want",
    "apump",
    "batch_wants",
    "build_manifest",
    "check_path",
    "decode_manifest",
    "decode_want",
    "encode_frame",
    "encode_manifest",
    "encode_want",
    "pump",
    "sha256_fd",
    "sort_entries",
    "validate_manifest",
]


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use (PEP 562)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
