"""Manifests: the one description of a tree that moves (code, outputs, projects, datasets).

A :class:`Manifest` is a list of :class:`Entry` (``array_like``, so a 20,000-entry manifest
is a few hundred KB of MessagePack). Entry *i* is addressed as index *i* by wants and
frames, so the order is part of the manifest; :func:`sort_entries` gives the canonical
order (by path component: every directory right before what it holds) that
:func:`~mlsm.bulk.build.build_manifest` produces, and :meth:`Manifest.digest` (sha256 of
the MessagePack encoding) is the id of a code snapshot.

What a receiver accepts (:func:`validate_manifest`; every sink runs it before writing):

- ``path``: relative, ``/``-separated, no empty, ``.`` or ``..`` component, no NUL, valid
  UTF-8, each name at most 255 bytes (the OS limit), at most :data:`MAX_PATH_CHARS` in all;
  no two entries with one path; every parent is a ``d`` entry that comes earlier.
- ``f`` (file): ``size`` >= 0 and ``sha256`` 64 lowercase hex digits (the empty file's
  hash when ``size`` is 0), no target. A manifest with *hashes to come* (validated with
  ``hashes_later=True``: a dataset copy's target asks its source for one) may leave the
  ``sha256`` of a non-empty file empty: the source hashes that file while it sends it and
  sends the hash right after its bytes (a HASH frame, :mod:`mlsm.bulk.frames`), so the
  first byte leaves before the whole tree was read.
- ``d`` (directory): size 0, no hash, no target.
- ``l`` (symlink): a non-empty relative ``target`` without NUL that resolves inside the
  tree, following the other links of the manifest (lexically: ``a -> b/..`` is fine,
  ``a -> ../x`` at the top is not, nor ``a -> b/../..`` or ``a -> c`` where ``c -> ..``);
  size 0, no hash.
- ``mode``: 0..0o7777; writers keep the permission bits only (``mode & 0o777``: never
  setuid, setgid or sticky).
- at most :data:`MAX_ENTRIES` entries (the frame header's index is 32 bits).

Offenders raise :class:`~mlsm.errors.UnsafeTree` naming the entry. Decoding
(:func:`decode_manifest`) enforces the field bounds first, then validates.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterable
from typing import Annotated, Literal

import msgspec

from mlsm.errors import UnsafeTree

from .hashing import EMPTY_SHA256

__all__ = [
    "MAX_ENTRIES",
    "MAX_NAME_BYTES",
    "MAX_PATH_CHARS",
    "MAX_TARGET_CHARS",
    "Entry",
    "Kind",
    "Manifest",
    "check_path",
    "decode_manifest",
    "encode_manifest",
    "show_path",
    "sort_entries",
    "validate_manifest",
]

MAX_ENTRIES = 16_000_000  # entries in one manifest (indices are u32; memory stays sane)
MAX_NAME_BYTES = 255  # NAME_MAX of Linux and macOS file systems
MAX_PATH_CHARS = 65_536  # a 5,000-deep tree of short names fits (writers use dir fds)
MAX_TARGET_CHARS = 4_095  # PATH_MAX - 1: the kernel's limit for a symlink's target
MAX_MODE = 0o7777

Kind = Literal["f", "d", "l"]
_HEX64 = "^([0-9a-f]{64})?$"


class Entry(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One file, directory or in-tree symlink of a tree; see the module docstring.

    New fields go at the end with a default (schema evolution of an ``array_like`` struct).
    """

    path: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PATH_CHARS)]
    kind: Kind
    size: Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)] = 0
    mode: Annotated[int, msgspec.Meta(ge=0, le=MAX_MODE)] = 0o644
    mtime_ns: Annotated[int, msgspec.Meta(ge=-(1 << 63), le=(1 << 63) - 1)] = 0
    sha256: Annotated[str, msgspec.Meta(pattern=_HEX64)] = ""
    target: Annotated[str, msgspec.Meta(max_length=MAX_TARGET_CHARS)] = ""


class Manifest(msgspec.Struct):
    """A tree as a list of entries; an entry's position is its index in wants and frames."""

    entries: Annotated[list[Entry], msgspec.Meta(max_length=MAX_ENTRIES)]

    def digest(self) -> str:
        """Hex sha256 of the manifest's MessagePack encoding (a code snapshot's id)."""
        return hashlib.sha256(_ENCODER.encode(self)).hexdigest()

    def total_bytes(self) -> int:
        """Bytes of file content in the tree."""
        return sum(e.size for e in self.entries if e.kind == "f")

    def file_count(self) -> int:
        return sum(1 for e in self.entries if e.kind == "f")

    def shape_digest(self) -> str:
        """:meth:`digest` of this manifest with every file's sha256 left out: what the tree
        looked like (paths, kinds, sizes, modes, mtimes), whatever of it was hashed."""
        blank = [msgspec.structs.replace(e, sha256="") if e.sha256 else e for e in self.entries]
        return Manifest(blank).digest()

    def hashes_to_come(self) -> int:
        """Files whose sha256 the source sends after their bytes (see the module docstring)."""
        return sum(1 for e in self.entries if e.kind == "f" and not e.sha256)


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Manifest)


def encode_manifest(manifest: Manifest) -> bytes:
    return _ENCODER.encode(manifest)


def decode_manifest(data: bytes | memoryview, *, hashes_later: bool = False) -> Manifest:
    """A manifest from MessagePack, bounds-checked and validated (:func:`validate_manifest`;
    ``hashes_later``: files may have their hash to come).

    Raises :class:`~mlsm.errors.UnsafeTree` for bytes that are not a valid manifest."""
    try:
        manifest = _DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise UnsafeTree(f"not a valid manifest: {exc}") from None
    validate_manifest(manifest, hashes_later=hashes_later)
    return manifest


def show_path(path: str, limit: int = 120) -> str:
    """``path`` for a message: quoted, shortened in the middle when long."""
    if len(path) > limit:
        path = f"{path[: limit // 2]}...{path[-limit // 2 :]}"
    return repr(path)


def _refuse(path: str, why: str) -> UnsafeTree:
    return UnsafeTree(f"{show_path(path)} {why}", details={"entries": [path[:4096]]})


def check_path(path: str) -> str:
    """Return ``path`` when it is a valid relative entry path (see the module docstring);
    raise :class:`~mlsm.errors.UnsafeTree` naming it otherwise."""
    if not path:
        raise UnsafeTree("an entry has an empty path")
    if "\0" in path:
        raise _refuse(path, "contains a NUL character")
    if path.startswith("/"):
        raise _refuse(path, "is an absolute path")
    if len(path) > MAX_PATH_CHARS:
        raise _refuse(path, f"is longer than {MAX_PATH_CHARS} characters")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse(path, "is not valid UTF-8") from None
    framed = f"/{path}/"
    if "//" not in framed and "/./" not in framed and "/../" not in framed:
        if len(encoded) <= MAX_NAME_BYTES:  # the common case, without splitting
            return path
    for name in encoded.split(b"/"):
        if name in (b"", b".", b".."):
            what = "an empty" if not name else repr(name.decode())
            raise _refuse(path, f"has {what} component")
        if len(name) > MAX_NAME_BYTES:
            raise _refuse(path, f"has a name longer than {MAX_NAME_BYTES} bytes")
    return path


def _component_key(entry: Entry) -> list[str]:
    return entry.path.split("/")


def sort_entries(entries: Iterable[Entry]) -> list[Entry]:
    """``entries`` in canonical order: by path component, so every directory comes right
    before what it holds (``a``, ``a/b``, ``a.txt``)."""
    return sorted(entries, key=_component_key)


def _check_entry(e: Entry, hashes_later: bool) -> None:
    if e.kind == "f":
        if not e.sha256 and hashes_later and e.size > 0:
            pass  # its hash comes after its bytes
        elif len(e.sha256) != 64:
            raise _refuse(e.path, "is a file without a sha256")
        if e.size == 0 and e.sha256 != EMPTY_SHA256:
            raise _refuse(e.path, "is an empty file whose sha256 is not that of no bytes")
        if e.target:
            raise _refuse(e.path, "is a file with a link target")
        return
    if e.size or e.sha256:
        raise _refuse(e.path, "is a directory or link with a size or sha256")
    if e.kind == "d":
        if e.target:
            raise _refuse(e.path, "is a directory with a link target")
        return
    t = e.target
    if not t:
        raise _refuse(e.path, "is a symlink without a target")
    if "\0" in t:
        raise _refuse(e.path, "is a symlink whose target contains a NUL character")
    if t.startswith("/"):
        raise _refuse(e.path, f"is a symlink to the absolute path {show_path(t)}")
    lexical = posixpath.normpath(posixpath.join(posixpath.dirname(e.path), t))
    if lexical == ".." or lexical.startswith("../"):
        raise _refuse(e.path, f"is a symlink to {show_path(t)}, outside the tree")


def validate_manifest(manifest: Manifest, *, hashes_later: bool = False) -> None:
    """Raise :class:`~mlsm.errors.UnsafeTree` naming the first entry that breaks a rule of
    the module docstring; return when every entry may be written. ``hashes_later``: a
    non-empty file may have its sha256 to come."""
    entries = manifest.entries
    if len(entries) > MAX_ENTRIES:
        raise UnsafeTree(f"a manifest holds more than {MAX_ENTRIES} entries")
    kinds: dict[str, str] = {}
    links: dict[str, str] = {}
    for e in entries:
        check_path(e.path)
        if e.path in kinds:
            raise _refuse(e.path, "appears twice in the manifest")
        parent = e.path.rpartition("/")[0]
        if parent and kinds.get(parent) != "d":
            raise _refuse(e.path, "comes before its directory, or its parent is not a directory")
        _check_entry(e, hashes_later)
        kinds[e.path] = e.kind
        if e.kind == "l":
            links[e.path] = e.target
    resolved: dict[str, str] = {}
    for link in links:
        if not leads_inside(link, links, kinds, resolved):
            raise _refuse(link, f"is a symlink to {show_path(links[link])}, which leads outside")


def leads_inside(
    link: str, links: dict[str, str], kinds: dict[str, str], resolved: dict[str, str]
) -> bool:
    """Whether ``link`` resolves inside the tree, following the tree's links it meets
    (``links``: link -> target; ``kinds``: path -> "d" | "f" | "l"; ``resolved`` keeps
    where links already worked out lead, across calls). Used for manifests and for the
    agent's unpacked datasets alike.

    Worked out in a loop from those maps alone (``realpath`` would recurse once per link
    and look at the disk). A link's parents are real directories (validated above), so only
    its target is resolved; a loop of links resolves nowhere, hence not outside.
    """
    path = link.rpartition("/")[0]
    todo: list[str | tuple[str]] = [(link,), *reversed(links[link].split("/"))]
    active = {link}
    while todo:
        item = todo.pop()
        if isinstance(item, tuple):  # a link's target is worked out: remember where it led
            resolved[item[0]] = path
            active.discard(item[0])
            continue
        if item in ("", "."):
            continue
        if item == "..":
            if not path:
                return False
            path = path.rpartition("/")[0]
            continue
        here = f"{path}/{item}" if path else item
        if kinds.get(here) != "l":
            path = here
        elif here in resolved:
            path = resolved[here]
        elif here in active:
            return True
        else:
            active.add(here)
            todo.append((here,))
            todo.extend(reversed(links[here].split("/")))
    return True
