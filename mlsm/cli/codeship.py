"""Shipping a directory to the master's code store (``mlsm submit``, ``mlsm project push``).

The tree is read as :func:`mlsm.bulk.build_manifest` reads it (``.gitignore`` and
``.mlsmignore`` honoured, ``.git`` left out unless asked, links out of the tree, devices,
sockets and FIFOs refused by name), checked against the lab's limits *before* any file is
hashed or sent, and offered to the master, which answers which files it wants; only those
go up, as frame streams. File hashes are remembered per directory
(``$XDG_CACHE_HOME/mlsm/hashes``), so a resubmit reads only the files that changed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from mlsm.bulk import HashCache, IgnoreRules, Source, build_manifest, encode_manifest
from mlsm.bulk.want import WANT_ITEMS, batch_wants
from mlsm.client import Client
from mlsm.config import xdg_cache_home
from mlsm.errors import MlsmError, PayloadTooLarge, TransferFailed

UPLOAD_BUDGET = 1 << 62  # one upload request per WANT_ITEMS files, whatever their bytes


@dataclass(frozen=True)
class Shipped:
    digest: str
    root: Path
    files: int
    bytes: int
    sent_files: int
    sent_bytes: int

    def summary(self) -> str:
        sent = (
            "nothing new to send"
            if not self.sent_files
            else f"sent {self.sent_files} file(s), {_size(self.sent_bytes)}"
        )
        return f"shipping {self.root}: {self.files} file(s), {_size(self.bytes)} ({sent})"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _cache_path(root: Path) -> Path:
    key = hashlib.sha256(os.fsencode(root)).hexdigest()[:32]
    return xdg_cache_home() / "mlsm" / "hashes" / key


def _load_cache(path: Path) -> HashCache:
    try:
        return HashCache.load(path)
    except (OSError, MlsmError, ValueError):
        return HashCache()


def ship(c: Client, directory: str | os.PathLike[str], *, include_git: bool = False) -> Shipped:
    """Snapshot ``directory``, send the master what it lacks; the snapshot's digest."""
    root = Path(os.path.realpath(directory))
    if not root.is_dir():
        raise MlsmError(f"{directory} is not a directory")
    lab = c.settings.get()
    cache_file = _cache_path(root)
    cache = _load_cache(cache_file)
    try:
        manifest = build_manifest(
            root,
            rules=IgnoreRules(include_git=include_git),
            cache=cache,
            max_files=lab.code_max_files,
            max_bytes=lab.code_max_bytes,
        )
    except PayloadTooLarge as exc:
        raise PayloadTooLarge(
            f"{exc.message} (the lab's code_max_files / code_max_bytes); leave out what "
            "need not travel in .mlsmignore, or submit with --no-code",
            details=exc.details,
        ) from None
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        cache.save(cache_file)
    except OSError:
        pass  # a cache that cannot be saved only costs hashing again next time
    offer = c.code.offer(encode_manifest(manifest))
    sent_files, sent_bytes = len(offer.want), offer.want_bytes
    with Source.from_tree(root, manifest) as source:
        while offer.want:
            missing = ((i, 0, manifest.entries[i].size) for i in offer.want)
            want = next(batch_wants(missing, budget=UPLOAD_BUDGET, max_items=WANT_ITEMS))
            before = len(offer.want)
            offer = c.code.upload(offer.digest, source.chunks(want))
            if len(offer.want) >= before:
                raise TransferFailed(
                    f"the master still wants {len(offer.want)} file(s) of {root}: did they "
                    "change while they were sent? Try again"
                )
    return Shipped(
        digest=offer.digest,
        root=root,
        files=offer.files,
        bytes=offer.bytes,
        sent_files=sent_files,
        sent_bytes=sent_bytes,
    )
