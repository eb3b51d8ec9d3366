"""The receives this agent has taken on, kept on disk so a restart resumes them.

A ``BulkReceive`` is recorded in ``<data dir>/bulk-receives/<transfer id>`` (0600, root's,
MessagePack) before its work dir is made, and the record is rewritten with the outcome
when the receive ends. So:

- at start the agent resumes every receive still recorded as running (same command, same
  work dir, so the sink's journal carries it on from what was verified), and the start-up
  sweep of ``.mlsm-*`` entries spares exactly those work dirs (:meth:`ReceiveBook.keep`);
- a ``BulkReceive`` for a transfer this agent already runs or finished is the same work
  (the master re-sends it after its own restart): it is attached to the running receive,
  or answered with the recorded outcome, never started twice;
- the master decides whether a resumed receive is still wanted: a pull for a transfer it
  ended (cancelled, failed) is refused, and the receive then fails and removes its work
  dir like any failed one.

Finished records are kept for the last :data:`FINISHED_KEPT` transfers only.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import msgspec

from mlsm.wire import bulk as wb
from mlsm.wire.agent import AgentTransferState

log = logging.getLogger("mlsm.agent.bulk")

BOOK_DIR = "bulk-receives"
FINISHED_KEPT = 64  # finished receives remembered (a repeat gets their outcome)


class ReceiveRecord(msgspec.Struct, kw_only=True):
    """One receive: its command, and once it ended, how (``state`` ``running`` until then)."""

    command: wb.BulkReceive
    state: AgentTransferState = "running"
    message: str = ""
    done_bytes: int = 0
    total_bytes: int | None = None
    ended_at: float = 0.0


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(ReceiveRecord).decode


class ReceiveBook:
    """The records under ``<data dir>/bulk-receives`` (see the module docstring)."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / BOOK_DIR
        self.dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)

    def _path(self, transfer_id: int) -> Path:
        return self.dir / str(int(transfer_id))

    def get(self, transfer_id: int) -> ReceiveRecord | None:
        try:
            data = self._path(transfer_id).read_bytes()
        except FileNotFoundError:
            return None
        try:
            return _decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("dropping unreadable receive record %s", self._path(transfer_id))
            self._path(transfer_id).unlink(missing_ok=True)
            return None

    def put(self, record: ReceiveRecord) -> None:
        """Write ``record`` whole (temp file, fsync, rename): a kill leaves the old or the new."""
        path = self._path(record.command.transfer_id)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, _encode(record))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if record.state != "running":
            self._prune()

    def running(self) -> list[ReceiveRecord]:
        """Receives an earlier run of the agent left unfinished (oldest first)."""
        out = []
        for p in sorted(
            self.dir.iterdir(), key=lambda p: int(p.name) if p.name.isdecimal() else -1
        ):
            if not p.name.isdecimal():
                p.unlink(missing_ok=True)  # a temp file a kill left behind
                continue
            rec = self.get(int(p.name))
            if rec is not None and rec.state == "running":
                out.append(rec)
        return out

    def keep(self) -> set[str]:
        """Work dir names (``.mlsm-bulk-<name>-<transfer>``) of receives still running."""
        from agent.bulk.receive import work_dir

        return {
            work_dir(Path(), rec.command.name, rec.command.transfer_id).name
            for rec in self.running()
        }

    def _prune(self) -> None:
        ended: list[tuple[float, Path]] = []
        for p in self.dir.iterdir():
            if not p.name.isdecimal():
                continue
            rec = self.get(int(p.name))
            if rec is not None and rec.state != "running":
                ended.append((rec.ended_at, p))
        ended.sort()
        for _at, p in ended[: max(0, len(ended) - FINISHED_KEPT)]:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
