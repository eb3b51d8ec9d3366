"""What keeps the audit log honest against someone who can write the database: a secret key
and a tail anchor, two files in the master's data dir that never enter the database.

- ``audit.key`` (0600, made at the master's first start, fsynced): a random 256-bit key.
  Every row the master writes carries ``mac = HMAC-SHA256(key, row hash)``; without the key
  nobody can seal a changed or invented row, however well they recompute the public hash
  chain. The file also says from which row on rows are sealed (``first_row``): rows from
  before the key existed (an upgraded database) are checked by the chain alone.
- ``audit.anchor`` (0600, rewritten after every committed batch, before any of its requests
  is answered): the id and hash of the newest row, and any *incident* the master found,
  sealed with the key. Deleting the newest rows leaves a chain that is
  intact but shorter than the anchor says; the master notices at its next start (or at
  the next verify), records the incident here and in the log, and ``mlsm audit --verify``
  reports it from then on.

Someone who can also read the data dir holds the key and can forge everything; see
docs/security.md for what that means and what to keep elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlsm.errors import ConfigError

log = logging.getLogger("mlsm.master.audit")

KEY_FILE = "audit.key"
ANCHOR_FILE = "audit.anchor"
KEY_BYTES = 32
FILE_VERSION = 1
MAX_INCIDENTS = 10  # the anchor keeps the first and the newest ones (and counts them all)
MAX_INCIDENT_TEXT = 200  # characters of a reason kept in an incident
ANCHOR_SLOT = 8192  # bytes per anchor slot; the file holds two


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _create_private(path: Path, data: bytes) -> None:
    """Make ``path`` (refusing an existing file) with mode 0600 from the start, durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)


@dataclass(frozen=True, slots=True)
class AuditKey:
    key: bytes = field(repr=False)
    first_row: int
    path: Path

    def seal(self, text: str) -> str:
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()

    def sealed(self, text: str, mac: str) -> bool:
        return hmac.compare_digest(self.seal(text), mac)


def load_or_create_key(data_dir: Path, next_row: int) -> tuple[AuditKey, bool]:
    """The data dir's audit key, made now (sealing rows from ``next_row`` on) if there is
    none; ``(key, created)``. A key file that cannot be read stops the master: a new key
    would silently turn every sealed row unverifiable."""
    path = data_dir / KEY_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = secrets.token_bytes(KEY_BYTES)
        doc = {
            "version": FILE_VERSION,
            "key": key.hex(),
            "first_row": next_row,
            "created_at": time.time(),
        }
        try:
            _create_private(path, json.dumps(doc).encode() + b"\n")
        except OSError as exc:
            raise ConfigError(f"cannot make the audit key {path}: {exc}") from None
        log.info("made the audit key %s (rows from %d on are sealed with it)", path, next_row)
        return AuditKey(key, next_row, path), True
    except OSError as exc:
        raise ConfigError(f"cannot read the audit key {path}: {exc}") from None
    try:
        doc = json.loads(raw)
        key = bytes.fromhex(doc["key"])
        first_row = int(doc["first_row"])
        if len(key) != KEY_BYTES or first_row < 1:
            raise ValueError("wrong size")
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"the audit key {path} is damaged ({exc}): restore it from your backup; moving it "
            "aside makes a new key, and every row sealed with the old one then fails "
            "`mlsm audit --verify`"
        ) from None
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("the audit key %s had mode %o; set it to 0600", path, mode)
        os.chmod(path, 0o600)
    return AuditKey(key, first_row, path), False


@dataclass(slots=True)
class Anchor:
    """The newest row the master committed, and incidents found against it."""

    last_id: int
    last_hash: str
    incidents: list[dict[str, Any]] = field(default_factory=list)
    incident_count: int = 0

    def add_incident(self, incident: dict[str, Any]) -> None:
        kept = {k: v[:MAX_INCIDENT_TEXT] if isinstance(v, str) else v for k, v in incident.items()}
        found = [*self.incidents, kept]
        # The first incident (since when the log is broken) and the newest ones.
        self.incidents = (
            found if len(found) <= MAX_INCIDENTS else [found[0], *found[1 - MAX_INCIDENTS :]]
        )
        self.incident_count += 1


class AnchorDamaged(Exception):
    """The anchor file exists but is unreadable or not sealed with this key."""


class AnchorFile:
    """Two fixed-size slots, each a sealed anchor with a sequence number; a write goes to
    the older slot with one ``pwrite`` on a file kept open (no rename, no fsync: a few
    microseconds per committed batch). A crash cannot tear a write; a power cut can tear
    at most the slot being written, and the other one still holds the previous anchor."""

    def __init__(self, data_dir: Path, key: AuditKey) -> None:
        self.path = data_dir / ANCHOR_FILE
        self.key = key
        self._seq = 0
        self._fd: int | None = None

    def _body(self, seq: int, a: Anchor) -> str:
        return json.dumps({"version": FILE_VERSION, "seq": seq, **asdict(a)}, sort_keys=True)

    def _slot(self, raw: bytes) -> tuple[int, Anchor] | None:
        """The slot's (seq, anchor) if it parses and its seal holds, else None."""
        try:
            doc = json.loads(raw.rstrip(b" \n\0") or b"null")
            mac = str(doc.pop("mac"))
            seq = int(doc["seq"])
            anchor = Anchor(
                last_id=int(doc["last_id"]),
                last_hash=str(doc["last_hash"]),
                incidents=list(doc.get("incidents", [])),
                incident_count=int(doc.get("incident_count", 0)),
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            return None
        return (seq, anchor) if self.key.sealed(self._body(seq, anchor), mac) else None

    def read(self) -> Anchor | None:
        """The newest sealed anchor, or None when there is no file; AnchorDamaged when the
        file exists but no slot can be trusted."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AnchorDamaged(f"unreadable ({exc})") from None
        slots = [self._slot(raw[i * ANCHOR_SLOT : (i + 1) * ANCHOR_SLOT]) for i in (0, 1)]
        valid = [found for found in slots if found is not None]
        if not valid:
            raise AnchorDamaged("its seal does not match this master's audit key")
        self._seq, anchor = max(valid, key=lambda found: found[0])
        return anchor

    def write(self, a: Anchor) -> None:
        self._seq += 1
        body = self._body(self._seq, a)
        doc = json.loads(body)
        doc["mac"] = self.key.seal(body)
        data = json.dumps(doc).encode()
        if len(data) >= ANCHOR_SLOT:
            raise OSError(f"anchor of {len(data)} bytes does not fit its slot")
        if self._fd is None:
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
            self._fd = os.open(self.path, flags, 0o600)
        os.pwrite(self._fd, data.ljust(ANCHOR_SLOT - 1) + b"\n", (self._seq % 2) * ANCHOR_SLOT)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def span(first: int, last: int) -> str:
    return f"row {first}" if first == last else f"rows {first}-{last}"


def incident_report(anchor: Anchor) -> tuple[int, str]:
    """(first broken row, one line) for the first incident the anchor recorded."""
    first = anchor.incidents[0]
    more = anchor.incident_count - 1
    tail = f"; {more} more incident(s) since" if more > 0 else ""
    when = _when(float(first.get("at", 0.0)))
    db_last = int(first.get("db_last", 0))
    if first.get("kind") == "anchor_damaged":
        return db_last + 1, (
            f"the tail anchor was damaged ({first.get('why', '')}), found at {when}: rows "
            f"after {db_last} may have been deleted{tail}"
        )
    anchor_last = int(first.get("anchor_last", 0))
    if first.get("kind") == "tail_replaced":
        return anchor_last, (
            f"row {anchor_last} was no longer the row the tail anchor recorded, found at "
            f"{when}: the newest rows were replaced{tail}"
        )
    return db_last + 1, (
        f"the newest rows were deleted: {span(db_last + 1, anchor_last)} gone, found at {when} "
        f"(the database ended at row {db_last}, the tail anchor recorded row {anchor_last})"
        f"{tail}"
    )
