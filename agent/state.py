"""The agent's small local state file, so a restarted agent re-adopts its running jobs.

It holds the node's id and name, the :class:`~agent.runtimes.base.AdoptRecord` of every
attempt the agent runs, and how far each job's log has been acknowledged by the master.
The node secret is kept elsewhere (by the agent's credential store), never here.

Writes are atomic (temp file + fsync + rename, mode 0600), so a crash mid-write leaves the
previous version. A file that cannot be read is renamed aside to ``<name>.corrupt-<ts>``
with a warning, and the agent starts empty rather than not at all.

:meth:`AgentState.add` and :meth:`AgentState.remove` save at once (a running job must be
on disk before anything else happens); :meth:`AgentState.set_log_offset` only updates
memory, since the master is the source of truth for log offsets: the owner calls
:meth:`AgentState.save` now and then.

A save waits for the disk (two fsyncs), so the agent calls the saving methods from a
thread, never on its event loop. Saves may run on several threads at once: each writes a
snapshot taken under the lock, one at a time, and a save whose change a later snapshot
already holds returns without writing (a group commit: jobs that start or end together
cost one write). A save with nothing changed since the last write writes nothing, so the
periodic save of an agent at rest costs no disk flush.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path

import msgspec

from agent.runtimes.base import AdoptRecord

log = logging.getLogger(__name__)

STATE_VERSION = 1


class _StateFile(msgspec.Struct, kw_only=True, omit_defaults=True):
    version: int = STATE_VERSION
    node_id: int | None = None
    node_name: str = ""
    jobs: list[AdoptRecord] = []
    log_acked: dict[int, int] = {}


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_StateFile).decode


class AgentState:
    """The state file at ``path``; call :meth:`load` once before use."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()  # guards _data and _changes (held briefly)
        self._write_lock = threading.Lock()  # one writer of the file at a time
        self._data = _StateFile()
        self._changes = 0  # counts changes to _data ...
        self._written = 0  # ... and how many of them the file holds

    # ------------------------------------------------------------------ node
    @property
    def node_id(self) -> int | None:
        return self._data.node_id

    @property
    def node_name(self) -> str:
        return self._data.node_name

    def set_node(self, node_id: int, node_name: str) -> None:
        with self._lock:
            self._data.node_id = node_id
            self._data.node_name = node_name
            self._changes += 1
        self.save()

    # ------------------------------------------------------------------ jobs
    def records(self) -> list[AdoptRecord]:
        with self._lock:
            return list(self._data.jobs)

    def add(self, record: AdoptRecord, *, save: bool = True) -> None:
        """Record a running attempt (replacing an older record of the same job) and save
        (``save=False``: the caller saves next, from a thread)."""
        with self._lock:
            jobs = [r for r in self._data.jobs if r.job_id != record.job_id]
            jobs.append(record)
            self._data.jobs = jobs
            self._changes += 1
        if save:
            self.save()

    def remove(self, *job_ids: int, save: bool = True) -> None:
        """Forget jobs (their records and log offsets) and save once (``save=False``: the
        caller saves next, from a thread)."""
        gone = set(job_ids)
        with self._lock:
            self._data.jobs = [r for r in self._data.jobs if r.job_id not in gone]
            for job_id in gone:
                self._data.log_acked.pop(job_id, None)
            self._changes += 1
        if save:
            self.save()

    # ------------------------------------------------------------------ logs
    @property
    def log_acked(self) -> dict[int, int]:
        with self._lock:
            return dict(self._data.log_acked)

    def set_log_offset(self, job_id: int, offset: int) -> None:
        """Remember the master's acknowledged offset (in memory; see the module doc)."""
        with self._lock:
            if self._data.log_acked.get(job_id) != offset:
                self._data.log_acked[job_id] = offset
                self._changes += 1

    # ------------------------------------------------------------------ file
    def load(self) -> AgentState:
        with self._lock:
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                self._data = _StateFile()
                return self
            try:
                self._data = _decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
                with contextlib.suppress(OSError):
                    os.replace(self.path, aside)
                log.warning("agent state %s is unreadable (%s); moved to %s", self.path, e, aside)
                self._data = _StateFile()
        return self

    def save(self) -> None:
        """Write the state (and every change made so far) durably; see the module doc."""
        with self._lock:
            wanted = self._changes
        with self._write_lock:
            if self._written >= wanted:
                return  # another save wrote a snapshot that holds this change
            with self._lock:
                data, holds = _encode(self._data), self._changes
            self._write(data)
            self._written = holds

    def _write(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:  # a short write (a nearly full disk) must not leave half a state
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk: do not leave half a copy taking room
            raise
        finally:
            os.close(fd)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
