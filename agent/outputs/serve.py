"""Reading a job's outputs for people: the ``list_outputs``, ``outputs_manifest`` and
``serve_outputs`` pipe commands (:mod:`mlsm.wire.outputs`), answered through the master's
relay pipes (:class:`agent.bulk.BulkCommands`).

A job's directory is written by the job, and the agent reads it as root, so:

- the job is named by its id, never by a path from the wire; its directory is
  ``<agent data>/jobs/<id>/`` (``jobs/`` is the agent's own: no job can swap the entry);
- a path inside is checked (:func:`mlsm.bulk.check_path`: no ``..``, nothing absolute,
  no NUL) and walked one component at a time with ``O_NOFOLLOW | O_DIRECTORY``, so a
  symlink anywhere on the way is refused, never followed;
- listings show a symlink as a link (``l``) and never what it points to; manifests leave
  links, sockets, FIFOs and devices out, and each file is opened ``O_NOFOLLOW |
  O_NONBLOCK`` relative to its directory and hashed from that descriptor (a link swapped
  in is not part of the tree; a file changed while served is sent as GONE);
- while a listing, a manifest or a serve runs, the directory is pinned
  (:class:`~agent.outputs.pins.JobDirPins`): no retention sweep or purge removes it.

A fetch of all outputs may name the job's code snapshot (``skip_code``): the files of the
job's code copy (``code/``) whose size and mtime are still the snapshot's are left out
without being read, so a fetch brings back what the job made, not the code the person
already has (the copy's files are written with the snapshot's mtimes; a file the job
rewrote has a new mtime). The snapshot's manifest comes from the node's code cache
(``snapshots``); when it is no longer there, nothing is left out.

Manifests of the last :data:`MANIFESTS_KEPT` fetches are kept by digest, so the wants of
one fetch do not hash the tree again; a want for a digest not kept (the agent restarted)
rebuilds the manifest and is served only if it is the same (``source_changed`` if not).
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec

from agent.bulk.service import BulkCommands
from agent.codecache import CODE_DIR
from agent.fsutil import walk
from agent.outputs.disk import JOBS_DIR
from agent.outputs.pins import DirBeingRemoved, JobDirPins
from mlsm import errors
from mlsm.bulk import (
    Entry,
    Manifest,
    Source,
    encode_manifest,
    sha256_fd,
    sort_entries,
    validate_manifest,
)
from mlsm.wire import outputs as wo
from mlsm.wire.outputs import check_output_path

MANIFESTS_KEPT = 16
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

_listing_encoder = msgspec.msgpack.Encoder()

#: A code snapshot's manifest by digest, from the node's cache (None: not there).
Snapshots = Callable[[str], Manifest | None]
_ManifestKey = tuple[int, tuple[str, ...], str, str]


class _Shipped:
    """The files and directories of a job's code copy as its snapshot made them."""

    def __init__(self, m: Manifest) -> None:
        self.files = {
            f"{CODE_DIR}/{e.path}": (e.size, e.mtime_ns) for e in m.entries if e.kind == "f"
        }
        self.dirs = {CODE_DIR} | {f"{CODE_DIR}/{e.path}" for e in m.entries if e.kind == "d"}

    def unchanged(self, rel: str, st: os.stat_result) -> bool:
        return self.files.get(rel) == (st.st_size, st.st_mtime_ns)

    def prune(self, entries: dict[str, Entry]) -> None:
        """Drop the snapshot's directories that hold nothing left to send."""
        needed: set[str] = set()
        for rel in entries:
            if rel in self.dirs:
                continue
            parent = rel.rpartition("/")[0]
            while parent and parent not in needed:
                needed.add(parent)
                parent = parent.rpartition("/")[0]
        for rel in [r for r in entries if r in self.dirs and r not in needed]:
            del entries[rel]


def _kind(mode: int) -> wo.OutputKind:
    if stat.S_ISREG(mode):
        return "f"
    if stat.S_ISDIR(mode):
        return "d"
    if stat.S_ISLNK(mode):
        return "l"
    return "o"


class OutputsServer:
    """Answers the outputs pipe commands for the jobs of the agent's data dir."""

    def __init__(
        self, data_dir: Path, pins: JobDirPins, snapshots: Snapshots | None = None
    ) -> None:
        self.jobs_dir = Path(data_dir) / JOBS_DIR
        self.pins = pins
        self.snapshots = snapshots
        self._kept: OrderedDict[_ManifestKey, Manifest] = OrderedDict()
        self._lock = threading.Lock()

    def install(self, bulk: BulkCommands) -> None:
        bulk.pipe_command(wo.ListOutputs, self._list)
        bulk.pipe_command(wo.OutputsManifest, self._manifest)
        bulk.pipe_command(wo.ServeOutputs, self._serve)

    # ---------------------------------------------------------------- the job's tree
    @contextlib.contextmanager
    def _job_root(self, job_id: int) -> Iterator[int]:
        """The job's directory, pinned and open (a descriptor)."""
        try:
            hold = self.pins.hold(job_id)
            hold.__enter__()
        except DirBeingRemoved:
            raise errors.NotFound(f"job {job_id}'s directory is being removed") from None
        try:
            try:
                jobs = os.open(self.jobs_dir, _DIR)
                try:
                    fd = os.open(str(job_id), _DIR, dir_fd=jobs)
                finally:
                    os.close(jobs)
            except OSError:
                raise errors.NotFound(
                    f"job {job_id}'s directory is not on this node (removed, or never made)"
                ) from None
            try:
                yield fd
            finally:
                os.close(fd)
        finally:
            hold.__exit__(None, None, None)

    @staticmethod
    def _descend(root: int, path: str) -> tuple[int, str]:
        """(descriptor of the directory holding ``path``'s last component, that name);
        every directory on the way opened without following a link. The caller closes
        the descriptor (it may be ``root`` duplicated)."""
        parts = path.split("/") if path else []
        fd = os.dup(root)
        try:
            for part in parts[:-1]:
                try:
                    nxt = os.open(part, _DIR, dir_fd=fd)
                except OSError as exc:
                    raise errors.NotFound(f"{path}: no such directory ({exc.strerror})") from None
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd, parts[-1] if parts else ""

    # ---------------------------------------------------------------- listing
    def listing(self, job_id: int, path: str) -> wo.OutputListing:
        path = check_output_path(path)
        out = wo.OutputListing(job_id=job_id, path=path)
        with self._job_root(job_id) as root:
            parent, name = self._descend(root, path)
            try:
                if name:
                    try:
                        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                    except FileNotFoundError:
                        raise errors.NotFound(f"job {job_id} has no output {path}") from None
                    if not stat.S_ISDIR(st.st_mode):
                        out.entries.append(
                            wo.OutputEntry(
                                path=path,
                                kind=_kind(st.st_mode),
                                size=st.st_size,
                                mtime=st.st_mtime,
                            )
                        )
                        return out
                    top = os.open(name, _DIR, dir_fd=parent)
                else:
                    top = os.dup(parent)
            finally:
                os.close(parent)
            prefix = f"{path}/" if path else ""
            try:
                for we in walk(top, sort=True, on_error=lambda _exc: None):
                    if len(out.entries) >= wo.MAX_LISTING_ENTRIES:
                        out.truncated = True
                        break
                    try:
                        st = we.entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    out.entries.append(
                        wo.OutputEntry(
                            path=prefix + we.rel,
                            kind=_kind(st.st_mode),
                            size=st.st_size if not stat.S_ISDIR(st.st_mode) else 0,
                            mtime=st.st_mtime,
                        )
                    )
            finally:
                os.close(top)
        return out

    def _list(self, cmd: wo.ListOutputs, stop: threading.Event) -> Iterator[bytes]:
        yield _listing_encoder.encode(self.listing(cmd.job_id, cmd.path))

    # ---------------------------------------------------------------- manifests
    def build_manifest(
        self,
        job_id: int,
        paths: list[str],
        stop: threading.Event | None = None,
        skip_code: str = "",
    ) -> Manifest:
        """The manifest of ``paths`` of the job's directory (all of it when empty, less
        the unchanged files of its copy of snapshot ``skip_code``)."""
        wanted = sorted({check_output_path(p) for p in paths}) if paths else [""]
        if "" in wanted:
            wanted = [""]
        shipped = self._shipped(skip_code) if wanted == [""] else None
        entries: dict[str, Entry] = {}
        with self._job_root(job_id) as root:
            for path in wanted:
                self._add_path(root, path, entries, stop, shipped)
        if shipped is not None:
            shipped.prune(entries)
        manifest = Manifest(sort_entries(list(entries.values())))
        validate_manifest(manifest)
        return manifest

    def _shipped(self, digest: str) -> _Shipped | None:
        if not digest or self.snapshots is None:
            return None
        m = self.snapshots(digest)
        return _Shipped(m) if m is not None else None

    def _add_path(
        self,
        root: int,
        path: str,
        entries: dict[str, Entry],
        stop: threading.Event | None,
        shipped: _Shipped | None = None,
    ) -> None:
        parts = path.split("/") if path else []
        # The directories above ``path`` are part of the tree the receiver makes.
        fd = os.dup(root)
        try:
            for i, part in enumerate(parts):
                try:
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    raise errors.NotFound(f"no output {path} in this job") from None
                rel = "/".join(parts[: i + 1])
                if stat.S_ISREG(st.st_mode) and i == len(parts) - 1:
                    entry = _file_entry(rel, part, fd)
                    if entry is not None:
                        entries[rel] = entry
                    return
                if not stat.S_ISDIR(st.st_mode):
                    raise errors.UnsafeTree(
                        f"{rel} is not a directory or regular file (a link is never followed)"
                    )
                entries.setdefault(rel, Entry(rel, "d", 0, st.st_mode & 0o777, st.st_mtime_ns))
                nxt = os.open(part, _DIR, dir_fd=fd)
                os.close(fd)
                fd = nxt
            prefix = f"{path}/" if path else ""
            for we in walk(fd, sort=True, on_error=lambda _exc: None):
                if stop is not None and stop.is_set():
                    raise errors.TransferFailed("stopped")
                e = we.entry
                rel = prefix + we.rel
                if e.is_dir(follow_symlinks=False):
                    st = e.stat(follow_symlinks=False)
                    entries[rel] = Entry(rel, "d", 0, st.st_mode & 0o777, st.st_mtime_ns)
                elif e.is_file(follow_symlinks=False):
                    if shipped is not None and shipped.unchanged(
                        rel, e.stat(follow_symlinks=False)
                    ):
                        continue
                    entry = _file_entry(rel, e.name, we.dir_fd)
                    if entry is not None:
                        entries[rel] = entry
        finally:
            os.close(fd)

    def _key(self, job_id: int, paths: list[str], digest: str, skip_code: str) -> _ManifestKey:
        return job_id, tuple(sorted(paths)), digest, skip_code

    def _keep(self, job_id: int, paths: list[str], manifest: Manifest, skip_code: str) -> str:
        digest = manifest.digest()
        with self._lock:
            key = self._key(job_id, paths, digest, skip_code)
            self._kept[key] = manifest
            self._kept.move_to_end(key)
            while len(self._kept) > MANIFESTS_KEPT:
                self._kept.popitem(last=False)
        return digest

    def _manifest(self, cmd: wo.OutputsManifest, stop: threading.Event) -> Iterator[bytes]:
        manifest = self.build_manifest(cmd.job_id, cmd.paths, stop, cmd.skip_code)
        self._keep(cmd.job_id, cmd.paths, manifest, cmd.skip_code)
        yield encode_manifest(manifest)

    def serving(self, job_id: int, paths: list[str], digest: str, skip_code: str = "") -> Manifest:
        with self._lock:
            kept = self._kept.get(self._key(job_id, paths, digest, skip_code))
        if kept is not None:
            return kept
        manifest = self.build_manifest(job_id, paths, skip_code=skip_code)
        now = self._keep(job_id, paths, manifest, skip_code)
        if now != digest:
            raise errors.SourceChanged(
                f"job {job_id}'s outputs changed since the fetch began: run it again "
                "(files already fetched are kept)",
                details={"job_id": job_id},
            )
        return manifest

    def _serve(self, cmd: wo.ServeOutputs, stop: threading.Event) -> Iterator[bytes]:
        manifest = self.serving(cmd.job_id, cmd.paths, cmd.manifest_digest, cmd.skip_code)
        with self._job_root(cmd.job_id) as root, Source.from_tree(root, manifest) as source:
            for chunk in source.chunks(cmd.want):
                if stop.is_set():
                    return
                yield chunk


def _file_entry(rel: str, name: str, dir_fd: int) -> Entry | None:
    """A regular file's entry, hashed from a descriptor opened without following a link
    (None: vanished, or not a regular file any more)."""
    try:
        fd = os.open(name, _FILE, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        digest, n = sha256_fd(fd)
        return Entry(rel, "f", n, st.st_mode & 0o777, st.st_mtime_ns, digest)
    finally:
        os.close(fd)
