"""Helpers for mlsm.bulk's tests: sample trees on disk, frame streams, transfers."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from mlsm.bulk import Entry, Manifest, Source, Want, build_manifest, pump, sort_entries
from mlsm.bulk.frames import FrameReader
from mlsm.bulk.hashing import EMPTY_SHA256
from mlsm.bulk.want import Receiver

BIG = 64 << 20  # the large file of the round trips


def write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


def sample_tree(root: Path) -> Path:
    """Directories (one read-only), an empty file, small files with odd modes, a 1 MiB
    file, in-tree links (one to a directory, one through ``..``), an empty directory."""
    write(root / "README.md", b"# sample\n")
    write(root / "empty.txt", b"")
    write(root / "run.sh", b"#!/bin/sh\necho hi\n", 0o755)
    write(root / "secret.key", b"k" * 100, 0o600)
    write(root / "src" / "pkg" / "mod.py", b"x = 1\n" * 1000)
    write(root / "src" / "pkg" / "data.bin", bytes(range(256)) * 4096)  # 1 MiB
    write(root / "ro" / "frozen.txt", b"frozen\n")
    (root / "empty-dir").mkdir()
    os.symlink("pkg/mod.py", root / "src" / "link-to-mod")
    os.symlink("../README.md", root / "src" / "pkg" / "up-link")
    os.symlink("src/pkg", root / "dir-link")
    os.chmod(root / "ro", 0o555)
    return root


def tree_digest(root: Path) -> str:
    """The digest of what is at ``root`` (content, modes, mtimes, links): equal trees,
    equal digests."""
    return build_manifest(root).digest()


def frames_for(root: Path, manifest: Manifest, want: Want) -> list[bytes]:
    with Source.from_tree(root, manifest) as source:
        return list(source.chunks(want))


def split_frames(stream: bytes) -> list[bytes]:
    """``stream`` cut at every frame boundary (each element one whole frame)."""
    out: list[bytes] = []
    reader = FrameReader()
    pos = 0
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
        if reader.at_boundary:
            out.append(stream[pos : i + 1])
            pos = i + 1
    return out


def copy(src: Path, manifest: Manifest, receiver: Receiver) -> None:
    with Source.from_tree(src, manifest) as source:
        pump(receiver, source.chunks)


def file_entry(path: str, data: bytes, mode: int = 0o644) -> Entry:
    sha = hashlib.sha256(data).hexdigest() if data else EMPTY_SHA256
    return Entry(path, "f", len(data), mode, 1_700_000_000_000_000_000, sha)


def manifest_of(*entries: Entry) -> Manifest:
    return Manifest(sort_entries(entries))


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
