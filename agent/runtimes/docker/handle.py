"""One container attempt as the agent sees it: polled, stopped, ended, reported.

A handle is made attached (:meth:`DockerJobHandle.started`: the runtime just started its
container and opened its log) or not yet attached (:meth:`DockerJobHandle.adopt`: an
attempt of an earlier agent process). An unattached handle looks its container up through
the :class:`~agent.runtimes.docker.engine.Engine` it was given, at adoption and then on
every poll while the engine is away, until it finds it (and resumes copying its log from
the saved cursor) or gives the attempt up as lost. Everything it needs comes in through its
constructor; it never reaches into the runtime.

A stop asked for is written to the log cursor too, so a stop that an agent restart
interrupts still names the ending (``cancelled``, ``timeout``) when the container ends.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import docker.errors

from agent.runtimes import jobfs
from agent.runtimes.base import LOG_NAME, AdoptRecord, saved_stop_kind
from agent.runtimes.docker.engine import (
    ENGINE_ERRORS,
    RUNNING,
    Engine,
    parse_engine_time,
    why,
)
from agent.runtimes.docker.logs import LogFollower, LogSink
from mlsm.wire.agent import JobEndKind, JobReport, StopKind

log = logging.getLogger("mlsm.agent.docker")

INSPECT_EVERY_S = 5.0  # poll() asks the engine at least this often while the log flows
DRAIN_WAIT_S = 10.0  # after exit, how long the follower may keep the stream before a kick
FOLLOWER_JOIN_S = 2.0  # longest poll() waits for the follower to flush a finished log
ADOPT_DRAIN_S = 30.0  # adopt() waits this long to copy an ended container's remaining log
ADOPT_ENGINE_WAIT_S = 300.0  # engine away this long after a restart -> the attempt is lost
VANISHED_WHILE_DOWN = "container vanished while the agent was down"


class DockerJobHandle:
    """One container attempt. Thread-safe; :meth:`poll` never blocks for long."""

    def __init__(
        self,
        record: AdoptRecord,
        *,
        engine: Engine,
        cursor_path: Path,
        keep_container: bool = False,
        device_request_ids: Sequence[int] = (),
    ) -> None:
        """``engine`` finds the container again while the handle is unattached;
        ``cursor_path`` is where its log cursor is kept (see :mod:`.logs`)."""
        self.record = record
        self.device_request_ids = list(device_request_ids)
        self.keep_container = keep_container
        self._engine = engine
        self._cursor_path = cursor_path
        self._lock = threading.RLock()
        self._container: Any = None
        self._sink: LogSink | None = None
        self._follower: LogFollower | None = None
        self._final: JobReport | None = None
        self._stop_reason = ""
        self._stop_kind: StopKind | None = None
        self._stop_grace: float | None = None
        self._last_inspect = 0.0
        self._exited_seen: float | None = None
        self._adopted_at = time.monotonic()

    @classmethod
    def started(
        cls,
        record: AdoptRecord,
        container: Any,
        sink: LogSink,
        *,
        engine: Engine,
        cursor_path: Path,
        keep_container: bool,
        device_request_ids: Sequence[int],
    ) -> DockerJobHandle:
        """The handle of a container just started, its log already open in ``sink``."""
        handle = cls(
            record,
            engine=engine,
            cursor_path=cursor_path,
            keep_container=keep_container,
            device_request_ids=device_request_ids,
        )
        handle._attach(container, sink)
        return handle

    @classmethod
    def adopt(
        cls, record: AdoptRecord, *, engine: Engine, cursor_path: Path
    ) -> DockerJobHandle | JobReport:
        """Take over an attempt started before an agent restart: its handle while the
        container runs (or its log is still being copied), else its final report."""
        handle = cls(record, engine=engine, cursor_path=cursor_path)
        if not handle._reattach():
            return handle._final or handle
        if handle._container.status in RUNNING:
            return handle
        # Ended while the agent was down: copy the rest of its log, then report.
        follower = handle._follower
        assert follower is not None
        follower.join(ADOPT_DRAIN_S)
        if follower.is_alive():  # a long log still copying: poll() reports when it is done
            return handle
        with handle._lock:
            return handle._finish_exited()

    @property
    def container_id(self) -> str | None:
        return self.record.container_id

    # -- the JobHandle protocol
    def poll(self) -> JobReport | None:
        with self._lock:
            if self._final is not None:
                return self._final
            if self._container is None and not self._reattach():
                return self._final
            self._check_timeout()
            follower = self._follower
            assert follower is not None
            now = time.monotonic()
            if follower.streaming and now - self._last_inspect < INSPECT_EVERY_S:
                return None
            self._last_inspect = now
            try:
                self._container.reload()
            except docker.errors.NotFound:
                return self._finish_lost("container vanished (removed outside mlsm)")
            except ENGINE_ERRORS as exc:
                log.warning("job %s: engine unreachable: %s", self.record.job_id, why(exc))
                return None
            if self._container.status in RUNNING:
                return None
            return self._finish_if_drained(follower, now)

    def stop(self, reason: str, end_kind: StopKind, grace_s: float) -> None:
        with self._lock:
            if self._final is not None:
                return
            if self._stop_grace is not None and grace_s >= self._stop_grace:
                return  # already stopping at least this fast
            first = self._stop_grace is None and not self._stop_kind
            self._stop_grace = grace_s
            if first:
                self._stop_reason, self._stop_kind = reason, end_kind
                if self._sink is not None:
                    self._sink.set_stop(reason, end_kind)
                    self._sink.marker(_stop_marker(self.record.job_id, reason, end_kind))
            container = self._container
        if container is not None:
            _spawn_stop(container, grace_s, self.record.job_id)

    # -- for the agent's shutdown (and tests that play one)
    def detach(self, *, save: bool = True) -> None:
        """Stop following without ending the container; ``save=False`` plays a crash."""
        with self._lock:
            if self._follower is not None:
                self._follower.close()
                self._follower.join(FOLLOWER_JOIN_S)
            if self._sink is not None:
                if save:
                    self._sink.save()
                self._sink.close()

    # -- attaching
    def _attach(self, container: Any, sink: LogSink) -> None:
        self._container = container
        self._sink = sink
        self.record.container_id = container.id
        if sink.cursor.stop_kind and not self._stop_kind:
            self._stop_reason = sink.cursor.stop_reason
            self._stop_kind = saved_stop_kind(sink.cursor.stop_kind)
        elif self._stop_kind and not sink.cursor.stop_kind:  # stop() came while unattached
            sink.set_stop(self._stop_reason, self._stop_kind)
            sink.marker(_stop_marker(self.record.job_id, self._stop_reason, self._stop_kind))
            _spawn_stop(container, self._stop_grace or 0.0, self.record.job_id)
        self._follower = LogFollower(container, sink)
        self._follower.start()

    def _reattach(self) -> bool:
        """Find the adopted container and start following it; False when not (yet) found.

        Sets ``self._final`` to a lost report when it is gone for good.
        """
        record = self.record
        try:
            container = self._engine.find(record)
        except ENGINE_ERRORS as exc:
            if time.monotonic() - self._adopted_at > ADOPT_ENGINE_WAIT_S:
                self._finish_lost(f"Docker engine unavailable while re-adopting: {why(exc)}")
            return False
        if container is None or container.status == "created":
            self._finish_lost(VANISHED_WHILE_DOWN)
            if container is not None:
                with contextlib.suppress(*ENGINE_ERRORS):
                    container.remove(force=True)
            return False
        self.keep_container = container.labels.get("mlsm.keep") == "1"
        gpus = container.labels.get("mlsm.gpus", "")
        self.device_request_ids = [int(g) for g in gpus.split(",") if g.isdecimal()]
        sink = LogSink.resume(
            self._log_path(), self._cursor_path, container.id, (record.uid, record.gid)
        )
        self._attach(container, sink)
        return True

    # -- ending
    def _check_timeout(self) -> None:
        limit = self.record.timeout_s
        if limit > 0 and not self._stop_kind and time.time() - self.record.started_at >= limit:
            self.stop(
                f"time limit {_fmt_duration(limit)} reached", "timeout", self.record.kill_grace_s
            )

    def _finish_if_drained(self, follower: LogFollower, now: float) -> JobReport | None:
        if follower.is_alive():
            if self._exited_seen is None:
                self._exited_seen = now
            elif now - self._exited_seen > DRAIN_WAIT_S:
                follower.kick()
            follower.join(FOLLOWER_JOIN_S)
            if follower.is_alive():
                return None
        return self._finish_exited()

    def _finish_exited(self) -> JobReport:
        state = self._container.attrs.get("State", {})
        host = self._container.attrs.get("HostConfig", {})
        code = state.get("ExitCode")
        oom = bool(state.get("OOMKilled")) and code != 0
        kind: JobEndKind
        if self._stop_kind:
            kind, reason = self._stop_kind, self._stop_reason
        elif oom:
            limit = host.get("Memory") or 0
            kind = "oom"
            reason = "killed: out of memory" + (f" (limit {_fmt_bytes(limit)})" if limit else "")
        elif state.get("Error"):
            kind, reason = "error", str(state["Error"])
        else:
            kind, reason = "exit", f"exit code {code}"
        assert self._sink is not None
        if kind == "oom":
            self._sink.marker(f"[mlsm] job {self.record.job_id} {reason}\n")
        elif kind == "error":
            self._sink.marker(f"[mlsm] job {self.record.job_id} failed: {reason}\n")
        report = JobReport(
            job_id=self.record.job_id,
            attempt=self.record.attempt,
            state="exited",
            container_id=self._container.id,
            started_at=parse_engine_time(state.get("StartedAt", "")) or self.record.started_at,
            ended_at=parse_engine_time(state.get("FinishedAt", "")) or time.time(),
            exit_code=code,
            signal=code - 128 if isinstance(code, int) and 128 < code <= 128 + 64 else None,
            reason=reason,
            end_kind=kind,
            log_size=self._sink.size,
        )
        if not self.keep_container:
            try:
                self._container.remove(v=True)
            except docker.errors.NotFound:
                pass
            except ENGINE_ERRORS as exc:
                log.warning("cannot remove container %s: %s", self._container.short_id, why(exc))
        return self._conclude(report)

    def _finish_lost(self, reason: str) -> JobReport:
        line = f"[mlsm] job {self.record.job_id} lost: {reason}\n"
        if self._sink is not None:
            self._sink.marker(line)
        else:  # never re-attached: the log is as the last agent left it
            jobfs.append_line(self._log_path(), line.rstrip("\n"), self.record.uid)
        report = JobReport(
            job_id=self.record.job_id,
            attempt=self.record.attempt,
            state="lost",
            container_id=self.record.container_id,
            started_at=self.record.started_at,
            ended_at=time.time(),
            reason=reason,
            end_kind="lost",
            log_size=self._sink.size
            if self._sink is not None
            else jobfs.file_size(self._log_path()),
        )
        return self._conclude(report)

    def _conclude(self, report: JobReport) -> JobReport:
        if self._follower is not None:
            self._follower.close()
        if self._sink is not None:
            self._sink.close()
            self._sink.discard_cursor()
        else:
            with contextlib.suppress(OSError):
                self._cursor_path.unlink()
        self._final = report
        return report

    def _log_path(self) -> Path:
        return Path(self.record.job_dir) / LOG_NAME


def _stop_marker(job_id: int, reason: str, end_kind: str) -> str:
    verb = {"cancelled": "cancelled", "timeout": "timed out"}.get(end_kind, "stopped")
    return f"[mlsm] job {job_id} {verb}: {reason}\n"


def _spawn_stop(container: Any, grace_s: float, job_id: int) -> None:
    threading.Thread(
        target=_stop_container,
        args=(container, grace_s),
        name=f"mlsm-docker-stop-{job_id}",
        daemon=True,
    ).start()


def _stop_container(container: Any, grace_s: float) -> None:
    """``docker stop``: the stop signal (SIGTERM), then SIGKILL after ``grace_s``."""
    try:
        container.stop(timeout=max(0, math.ceil(grace_s)))
    except docker.errors.NotFound:
        pass
    except ENGINE_ERRORS as exc:
        log.warning("cannot stop container %s: %s", container.short_id, why(exc))


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if n % size == 0 else f"{value:.1f} {unit}"
    return f"{n} B"


def _fmt_duration(seconds: float) -> str:
    whole = round(seconds)
    if abs(seconds - whole) > 1e-9:
        return f"{seconds:g}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs else "",
    ]
    return "".join(parts) or "0s"
