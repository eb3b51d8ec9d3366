"""The trees this agent serves, named by source specs (never by a path from the wire).

A spec (:class:`~mlsm.wire.bulk.SourceSpec`) is resolved by the resolver registered for
its kind (:meth:`SourceBook.register`; ``dataset NAME`` is the datasets module's: the
dataset of that name in one of this agent's roots). An unknown kind or name is
``NotFound``. A resolver returns a :class:`Tree`: the directory the manifest's paths are
relative to, and what to include.

Manifests are built here by descriptor (:func:`build_tree_manifest`: each directory
entered with ``O_NOFOLLOW``, each file opened ``O_NOFOLLOW | O_NONBLOCK`` relative to its
directory and hashed from that descriptor), since the agent runs as root over trees others
may write. Symlinks, sockets, FIFOs and devices are left out of a dataset (as the copy
always did). The last :data:`MANIFESTS_KEPT` manifests are kept in memory by digest, so
the wants of one transfer are served without hashing the tree again; after a restart a
want for a digest not kept rebuilds the manifest and serves it only if the digest is the
same (``SourceChanged`` otherwise). Serving (:class:`mlsm.bulk.Source`) checks each file's
size and mtime against the manifest as it reads, so a file changed since is sent as GONE.
"""

from __future__ import annotations

import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.fsutil import walk
from mlsm import errors
from mlsm.bulk import Entry, Manifest, sha256_fd, sort_entries, validate_manifest
from mlsm.wire.bulk import SourceSpec

MANIFESTS_KEPT = 16
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class Tree:
    """What a spec resolves to: ``root`` (a directory the entries are relative to) and,
    for a one-file tree, ``only`` (the file's name in ``root``)."""

    root: Path
    only: str = ""


Resolver = Callable[[str], Tree]


def _stopped(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise errors.TransferFailed("stopped")


def _file_entry(rel: str, name: str, dir_fd: int) -> Entry | None:
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None  # vanished, or a link swapped in: not part of the tree
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        digest, n = sha256_fd(fd)
        if n != st.st_size:  # written while hashed: its size is what the hash covers
            st = os.fstat(fd)
            digest, n = sha256_fd(fd)
        return Entry(rel, "f", n, st.st_mode & 0o777, st.st_mtime_ns, digest)
    finally:
        os.close(fd)


def build_tree_manifest(tree: Tree, stop: threading.Event | None = None) -> Manifest:
    """The manifest of ``tree`` (files and directories; see the module docstring)."""
    entries: list[Entry] = []
    if tree.only:
        fd = os.open(tree.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            entry = _file_entry(tree.only, tree.only, fd)
        finally:
            os.close(fd)
        if entry is None:
            raise errors.NotFound(f"{tree.only} is no longer a regular file")
        entries.append(entry)
    else:
        for we in walk(tree.root, sort=True):
            _stopped(stop)
            e = we.entry
            if e.is_dir(follow_symlinks=False):
                st = e.stat(follow_symlinks=False)
                entries.append(Entry(we.rel, "d", 0, st.st_mode & 0o777, st.st_mtime_ns))
            elif e.is_file(follow_symlinks=False):
                file_entry = _file_entry(we.rel, e.name, we.dir_fd)
                if file_entry is not None:
                    entries.append(file_entry)
    manifest = Manifest(sort_entries(entries))
    validate_manifest(manifest)
    return manifest


class SourceBook:
    """Resolvers by kind, and the manifests recently served (see the module docstring)."""

    def __init__(self) -> None:
        self._resolvers: dict[str, Resolver] = {}
        self._kept: OrderedDict[tuple[SourceSpec, str], Manifest] = OrderedDict()
        self._lock = threading.Lock()

    def register(self, kind: str, resolver: Resolver) -> None:
        self._resolvers[kind] = resolver

    def resolve(self, spec: SourceSpec) -> Tree:
        resolver = self._resolvers.get(spec.kind)
        if resolver is None:
            raise errors.NotFound(f"this node serves no {spec.kind!r} trees")
        return resolver(spec.name)

    def manifest(self, spec: SourceSpec, stop: threading.Event | None = None) -> Manifest:
        """A fresh manifest of ``spec`` (kept for the wants that follow)."""
        manifest = build_tree_manifest(self.resolve(spec), stop)
        self._keep(spec, manifest.digest(), manifest)
        return manifest

    def serving(
        self, spec: SourceSpec, digest: str, stop: threading.Event | None = None
    ) -> tuple[Tree, Manifest]:
        """The tree and the manifest (of ``digest``) that a want of ``spec`` refers to."""
        tree = self.resolve(spec)
        with self._lock:
            kept = self._kept.get((spec, digest))
            if kept is not None:
                self._kept.move_to_end((spec, digest))
                return tree, kept
        manifest = build_tree_manifest(tree, stop)
        now = manifest.digest()
        if digest and now != digest:
            raise errors.SourceChanged(
                f"{spec} changed at the source since the transfer began "
                f"(manifest {now[:12]}, expected {digest[:12]}): start it again",
                details={"source": str(spec)},
            )
        self._keep(spec, now, manifest)
        return tree, manifest

    def _keep(self, spec: SourceSpec, digest: str, manifest: Manifest) -> None:
        with self._lock:
            self._kept[(spec, digest)] = manifest
            self._kept.move_to_end((spec, digest))
            while len(self._kept) > MANIFESTS_KEPT:
                self._kept.popitem(last=False)


def dataset_resolver(roots: list[Path]) -> Resolver:
    """``dataset NAME``: the dataset of that name in one of ``roots`` (a directory, or a
    one-file dataset: served as a directory holding that file, as copies always were)."""
    from agent.datasets.errors import DatasetPathError
    from agent.datasets.paths import confine, validate_dataset_name

    def resolve(name: str) -> Tree:
        try:
            validate_dataset_name(name)
            paths = [confine(root, name) for root in roots]
        except DatasetPathError as exc:
            raise errors.NotFound(f"no dataset {name!r} here: {exc.message}") from None
        for path in paths:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                return Tree(path)
            if stat.S_ISREG(st.st_mode):
                return Tree(path.parent, only=path.name)
            raise errors.UnsafeTree(f"dataset {name} is neither a directory nor a regular file")
        raise errors.NotFound(f"this node holds no dataset {name}")

    return resolve
