"""The trees this agent serves, named by source specs (never by a path from the wire).

A spec (:class:`~mlsm.wire.bulk.SourceSpec`) is resolved by the resolver registered for
its kind (:meth:`SourceBook.register`; ``dataset NAME`` is the datasets module's: the
dataset of that name in one of this agent's roots; ``path /ABS/DIR`` is
:func:`path_resolver`'s: a directory or file below one of this node's import roots, for an
admin's import to another node). An unknown kind or name is ``NotFound``. A resolver
returns a :class:`Tree`: the directory the manifest's paths are relative to, and what to
include; it is always opened with :meth:`Tree.open`, never by its path alone.

Manifests are built here by descriptor (:func:`build_tree_manifest`: each directory
entered with ``O_NOFOLLOW``, each file opened ``O_NOFOLLOW | O_NONBLOCK`` relative to its
directory and hashed from that descriptor), since the agent runs as root over trees others
may write. Symlinks, sockets, FIFOs and devices are left out of a dataset (as the copy
always did).

**Hashes are kept** between manifests of the same tree (:class:`~mlsm.bulk.HashCache`,
one file per tree under ``<data dir>/bulk-hashes/``, 0600 in a 0700 directory): a file
whose (path, size, mtime, inode, ctime) are unchanged since it was hashed is not read
again, so a second copy of an unchanged dataset starts sending at once instead of reading
it all first (about a second per GiB). A member can set a file's mtime back but not its
ctime, so a changed file is always hashed again; and a hash that were wrong anyway would
only fail that file's check at the target (every file is verified there), never pass
wrong bytes. The last :data:`MANIFESTS_KEPT` manifests are kept in memory by digest, so
the wants of one transfer are served without hashing the tree again; after a restart a
want for a digest not kept rebuilds the manifest and serves it only if the digest is the
same (``SourceChanged`` otherwise). Serving (:class:`mlsm.bulk.Source`) checks each file's
size and mtime against the manifest as it reads, so a file changed since is sent as GONE.

**Hashes to come.** A dataset copy's target asks for a manifest with hashes to come
(``hashes_later``): a file the cache does not know is not read for it (its sha256 is left
empty) but hashed while it is sent, its hash sent after its bytes, and kept in the cache
then (:meth:`SourceBook.source`), so the first byte leaves after a walk, not after reading
the whole tree. Such a manifest is written down (``<data dir>/bulk-manifests/``, the last
:data:`MANIFESTS_KEPT`, named by the source spec and the manifest's digest). A target that
restarts asks again naming the manifest its journal was made for (``resume``) and gets it
while the tree keeps its shape (paths, sizes, modes, mtimes) and every hash it gave is
still the cache's (the cache has filled meanwhile: a fresh one would differ); after this
agent restarts a want for it is served from it. Any other ask gets a fresh manifest, with
every hash the cache knows by then: a second copy of an unchanged dataset is not hashed
again while it is sent (announcing the first copy's manifest again, as this once did,
hashed every file again on every copy).

Over 400 lines, as one piece: the manifests a source announces, the hash cache they are
made with and filled from, and what is served for a digest are one state.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.fsutil import walk
from mlsm import errors
from mlsm.atomicfile import write_atomic
from mlsm.bulk import (
    Entry,
    FileKey,
    HashCache,
    Manifest,
    Source,
    decode_manifest,
    encode_manifest,
    sha256_fd,
    sort_entries,
    validate_manifest,
)
from mlsm.bulk.fstree import DIR_FLAGS, open_dir
from mlsm.bulk.hashing import EMPTY_SHA256
from mlsm.bulk.source import HashStates
from mlsm.datasets_names import import_path_problem
from mlsm.wire.bulk import SourceSpec

MANIFESTS_KEPT = 16
HASHES_DIR = "bulk-hashes"  # under the agent's data dir: one hash cache file per tree
MANIFESTS_DIR = "bulk-manifests"  # under the agent's data dir: manifests announced
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class Tree:
    """What a spec resolves to: ``root`` (a directory the entries are relative to) and,
    for a one-file tree, ``only`` (the file's name in ``root``). With ``anchor`` (a
    directory ``root`` is at or below, trusted as configured), ``root`` is opened from
    ``anchor`` one level at a time with ``O_NOFOLLOW``: a link anywhere below the anchor,
    also one swapped in after the spec was checked, is never followed."""

    root: Path
    only: str = ""
    anchor: Path | None = None

    def open(self) -> int:
        """A descriptor of ``root`` (the caller closes it); its last component is never a
        link, nor, with ``anchor``, any component below the anchor."""
        if self.anchor is None:
            return open_dir(str(self.root))
        fd = open_dir(str(self.anchor))
        try:
            for part in self.root.relative_to(self.anchor).parts:
                below = os.open(part, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = below
        except BaseException:
            os.close(fd)
            raise
        return fd


Resolver = Callable[[str], Tree]


def _stopped(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise errors.TransferFailed("stopped")


def _file_entry(
    rel: str,
    name: str,
    dir_fd: int,
    cache: HashCache | None,
    *,
    lookup: bool = True,
    lazy: bool = False,
) -> Entry | None:
    """The entry of a regular file, hashed from a descriptor unless ``cache`` knows it
    (``lookup=False``: the caller asked the cache already); ``lazy``: not hashed, its
    hash to come (a non-empty file the cache does not know)."""
    if lazy:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        known = _cached_entry(rel, st, cache) if lookup else None
        return known or _lazy_entry(rel, st)
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None  # vanished, or a link swapped in: not part of the tree
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        key = FileKey.of(rel, st)
        digest = cache.get(key) if cache is not None and lookup else None
        if digest is not None:
            return Entry(rel, "f", st.st_size, st.st_mode & 0o777, st.st_mtime_ns, digest)
        hashed_at = time.time_ns()
        digest, n = sha256_fd(fd)
        if n != st.st_size:  # written while hashed: its size is what the hash covers
            st = os.fstat(fd)
            digest, n = sha256_fd(fd)
        elif cache is not None:
            cache.put(key, digest, hashed_at_ns=hashed_at)
        return Entry(rel, "f", n, st.st_mode & 0o777, st.st_mtime_ns, digest)
    finally:
        os.close(fd)


def build_tree_manifest(
    tree: Tree,
    stop: threading.Event | None = None,
    cache: HashCache | None = None,
    *,
    lazy: bool = False,
) -> Manifest:
    """The manifest of ``tree`` (files and directories; see the module docstring);
    hashes come from ``cache`` where it knows the file, and go into it. ``lazy``: a file
    the cache does not know is not read; its hash is left to come (sent after its bytes)."""
    entries: list[Entry] = []
    fd = open_tree(tree)
    try:
        if tree.only:
            entry = _file_entry(tree.only, tree.only, fd, cache, lazy=lazy)
            if entry is None:
                raise errors.NotFound(f"{tree.only} is no longer a regular file")
            entries.append(entry)
        else:
            _walk_entries(fd, entries, stop, cache, lazy)
    finally:
        os.close(fd)
    manifest = Manifest(sort_entries(entries))
    validate_manifest(manifest, hashes_later=lazy)
    return manifest


def open_tree(tree: Tree) -> int:
    """:meth:`Tree.open`, its failures in words (``NotFound``, or ``UnsafeTree`` for a
    link or something else in the way)."""
    try:
        return tree.open()
    except FileNotFoundError:
        raise errors.NotFound(f"{tree.root} does not exist (any more)") from None
    except OSError as exc:
        raise errors.UnsafeTree(
            f"{tree.root} cannot be opened as a directory without following a link ({exc.strerror})"
        ) from None


def _walk_entries(
    fd: int,
    entries: list[Entry],
    stop: threading.Event | None,
    cache: HashCache | None,
    lazy: bool,
) -> None:
    for we in walk(fd, sort=True):
        _stopped(stop)
        e = we.entry
        if e.is_dir(follow_symlinks=False):
            st = e.stat(follow_symlinks=False)
            entries.append(Entry(we.rel, "d", 0, st.st_mode & 0o777, st.st_mtime_ns))
        elif e.is_file(follow_symlinks=False):
            st = e.stat(follow_symlinks=False)
            known = _cached_entry(we.rel, st, cache)
            if known is None and lazy:
                known = _lazy_entry(we.rel, st)
            file_entry = known or _file_entry(we.rel, e.name, we.dir_fd, cache, lookup=False)
            if file_entry is not None:
                entries.append(file_entry)


def _lazy_entry(rel: str, st: os.stat_result) -> Entry:
    """A file's entry with its hash to come (an empty file's is known)."""
    digest = "" if st.st_size else EMPTY_SHA256
    return Entry(rel, "f", st.st_size, st.st_mode & 0o777, st.st_mtime_ns, digest)


def _cached_entry(rel: str, st: os.stat_result, cache: HashCache | None) -> Entry | None:
    """The entry of a file the cache knows by its ``lstat`` (no open: serving opens it
    without following links and sends GONE if it is not what the entry says)."""
    if cache is None:
        return None
    digest = cache.get(FileKey.of(rel, st))
    if digest is None:
        return None
    return Entry(rel, "f", st.st_size, st.st_mode & 0o777, st.st_mtime_ns, digest)


class SourceBook:
    """Resolvers by kind, and the manifests recently served (see the module docstring)."""

    def __init__(self, data_dir: Path | None = None) -> None:
        """With ``data_dir`` the hashes of the trees served are kept there between
        manifests (and agent runs); without it nothing is kept."""
        self.hashes_dir = data_dir / HASHES_DIR if data_dir is not None else None
        self.manifests_dir = data_dir / MANIFESTS_DIR if data_dir is not None else None
        for d in (self.hashes_dir, self.manifests_dir):
            if d is not None:
                d.mkdir(mode=0o700, exist_ok=True)
                os.chmod(d, 0o700)
        self._resolvers: dict[str, Resolver] = {}
        self.hash_states = HashStates()
        self._kept: OrderedDict[tuple[SourceSpec, str], Manifest] = OrderedDict()
        self._lock = threading.Lock()

    def register(self, kind: str, resolver: Resolver) -> None:
        self._resolvers[kind] = resolver

    def resolve(self, spec: SourceSpec) -> Tree:
        resolver = self._resolvers.get(spec.kind)
        if resolver is None:
            raise errors.NotFound(f"this node serves no {spec.kind!r} trees")
        return resolver(spec.name)

    def manifest(
        self,
        spec: SourceSpec,
        stop: threading.Event | None = None,
        *,
        hashes_later: bool = False,
        resume: str = "",
    ) -> Manifest:
        """A fresh manifest of ``spec`` (kept for the wants that follow); ``hashes_later``:
        with the hashes the cache does not know to come; ``resume``: the digest of the
        manifest a target's journal is for, announced again while the tree matches it
        (see the module docstring)."""
        tree = self.resolve(spec)
        manifest = self._build(tree, stop, lazy=hashes_later)
        if hashes_later:
            manifest = self._announce(spec, manifest, resume)
        self._keep(spec, manifest.digest(), manifest)
        return manifest

    def _cache_path(self, tree: Tree) -> Path | None:
        if self.hashes_dir is None:
            return None
        ident = f"{tree.root}\0{tree.only}".encode("utf-8", "surrogateescape")
        return self.hashes_dir / hashlib.sha256(ident).hexdigest()[:32]

    def _build(self, tree: Tree, stop: threading.Event | None, *, lazy: bool = False) -> Manifest:
        """:func:`build_tree_manifest` with the tree's hash cache, saved after."""
        path = self._cache_path(tree)
        if path is None:
            return build_tree_manifest(tree, stop, lazy=lazy)
        cache = HashCache.load(path)
        manifest = build_tree_manifest(tree, stop, cache, lazy=lazy)
        if cache.misses or cache.hits != len(cache):  # something new, or something gone
            cache.save(path)
        return manifest

    def learn(self, tree: Tree, hashed: list[tuple[FileKey, str, int]]) -> None:
        """Keep the hashes of files streamed whole (key, hex sha256, when the read began)."""
        path = self._cache_path(tree)
        if path is None or not hashed:
            return
        with self._lock:
            cache = HashCache.load(path)
            cache.keep_all()
            for key, digest, hashed_at in hashed:
                cache.put(key, digest, hashed_at_ns=hashed_at)
            cache.save(path)

    @contextlib.contextmanager
    def source(self, tree: Tree, manifest: Manifest, digest: str = "") -> Iterator[Source]:
        """A :class:`~mlsm.bulk.Source` of ``manifest`` (whose digest is ``digest``) over
        ``tree``; the hashes of the files it streams go into the tree's cache when it
        closes, and a file streamed in parts is hashed once (:class:`HashStates`)."""
        hashed: list[tuple[FileKey, str, int]] = []
        root = open_tree(tree)
        try:
            with Source.from_tree(root, manifest) as source:
                source.on_hashed = lambda e, st, sha, at: hashed.append(
                    (FileKey.of(e.path, st), sha, at)
                )
                if digest:
                    source.hash_states, source.hash_key = self.hash_states, digest
                yield source
        finally:
            os.close(root)
            self.learn(tree, hashed)

    def _announced_path(self, spec: SourceSpec, digest: str) -> Path | None:
        if self.manifests_dir is None or not digest:
            return None
        ident = f"{spec}\0{digest}".encode("utf-8", "surrogateescape")
        return self.manifests_dir / hashlib.sha256(ident).hexdigest()[:32]

    def _announced(self, spec: SourceSpec, fresh: Manifest, digest: str) -> Manifest | None:
        """The manifest of ``digest`` with hashes to come announced for ``spec``, if the
        tree still looks as it did (``fresh``: the same paths, sizes, modes and mtimes)
        and every hash it gave is still the one the cache knows."""
        path = self._announced_path(spec, digest)
        if path is None:
            return None
        try:
            old = decode_manifest(path.read_bytes(), hashes_later=True)
        except (OSError, errors.UnsafeTree):
            return None
        if old.digest() != digest or old.shape_digest() != fresh.shape_digest():
            return None
        pairs = zip(old.entries, fresh.entries, strict=True)
        return None if any(o.sha256 and o.sha256 != f.sha256 for o, f in pairs) else old

    def _announce(self, spec: SourceSpec, fresh: Manifest, resume: str) -> Manifest:
        """The manifest to announce: the one of ``resume`` (a target's journal is for it:
        it restarted and asks again) while the tree matches it; otherwise ``fresh``, with
        every hash the cache knows now, written down (while it has hashes to come) so a
        target that asks again, and this agent after a restart, get it too."""
        old = self._announced(spec, fresh, resume)
        if old is not None:
            return old
        path = self._announced_path(spec, fresh.digest())
        if path is not None and fresh.hashes_to_come():
            write_atomic(path, encode_manifest(fresh))
            kept = sorted(path.parent.iterdir(), key=lambda p: p.stat().st_mtime_ns)
            for stale in kept[:-MANIFESTS_KEPT]:
                stale.unlink(missing_ok=True)
        return fresh

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
        lazy = self._build(tree, stop, lazy=True)  # no file read: the tree's shape
        for known in (self._announced(spec, lazy, digest), lazy):
            if known is not None and known.digest() == digest:
                self._keep(spec, digest, known)
                return tree, known
        manifest = self._build(tree, stop)
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


def path_resolver(roots: list[Path]) -> Resolver:
    """``path /ABS/PATH``: a directory (or a regular file, served as a directory holding
    it, as a one-file dataset is) at or below one of ``roots``, this node's import roots
    (``--import-root``; resolved once, here). The path must be absolute and plain (no
    ``.``, ``..`` or empty component) and lexically below a root; it is then opened from
    that root one level at a time without following any link (:meth:`Tree.open`), so a
    link inside the root cannot lead out of it, even one swapped in after this check. No
    roots: this node serves no paths at all."""
    real_roots = [Path(os.path.realpath(r)) for r in roots]

    def resolve(name: str) -> Tree:
        if not real_roots:
            raise errors.PermissionDenied(
                "this node allows no imports from its disk (its agent has no --import-root)"
            )
        pure = check_import_path(name)
        for root in real_roots:
            if pure == root or root in pure.parents:
                break
        else:
            shown = ", ".join(str(r) for r in real_roots)
            raise errors.PermissionDenied(
                f"{name} is not below an import root of this node ({shown})"
            )
        if pure == root:
            return Tree(root, anchor=root)
        parent = open_tree(Tree(pure.parent, anchor=root))
        try:
            st = os.stat(pure.name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            raise errors.NotFound(f"{name} does not exist on this node") from None
        finally:
            os.close(parent)
        if stat.S_ISDIR(st.st_mode):
            return Tree(pure, anchor=root)
        if stat.S_ISREG(st.st_mode):
            return Tree(pure.parent, only=pure.name, anchor=root)
        raise errors.UnsafeTree(f"{name} is neither a directory nor a regular file (a link?)")

    return resolve


def check_import_path(path: str) -> Path:
    """``path`` as an absolute, plain path (:func:`mlsm.datasets_names.import_path_problem`),
    or ``ValidationError``."""
    problem = import_path_problem(path)
    if problem is not None:
        raise errors.ValidationError(problem, path="path")
    return Path(path.rstrip("/"))
