"""The docker runtime: a job attempt as one container on the node's Docker engine.

A container is created (never pulled unless the node allows it) with the job's argv as its
command, its GPUs as a device request, its job dir at ``/mlsm/output`` and its datasets
read-only under ``/datasets/<name>``, then started. A follower thread copies the
container's log from the engine into ``<job dir>/output.log``.

Log resume, byte-exact across agent restarts
--------------------------------------------
The follower reads the engine's log stream with timestamps. The stream is multiplexed: one
frame per log entry, ``<RFC3339 timestamp> <bytes>``, and the frame boundaries survive, so
the bytes after the timestamp are exactly what the job wrote (a line longer than the
engine's 16 KiB entry limit arrives as several frames, a last line without a newline as a
frame without one). Besides the bytes it keeps a *cursor*: how many frames it consumed in
each whole second of engine time, for the last few seconds, and the size of ``output.log``
that matches those counts. The cursor is saved atomically (temp file + rename) beside the
agent's data, not in the job dir the container can write, at most every
:data:`CURSOR_SAVE_INTERVAL_S` and whenever the follower stops cleanly.

To resume, ``output.log`` is cut back to the cursor's size (bytes written after the last
save are fetched again rather than guessed), the engine is asked for entries ``since`` the
cursor's first second, and as many frames as the cursor counted for those seconds are
skipped. The engine filters ``since`` as "timestamp >= since" over its stored entries in
their stored order, so the skipped frames are exactly the ones already written.

Limits: the engine's log driver must be able to read back (``json-file``, ``local``, or
any driver with the engine's dual-logging cache); entries rotated away by the driver before
they were read are lost; entries are assumed never to be stored more than
:data:`RESUME_MARGIN_S` seconds out of time order (stdout and stderr are stamped by two
copiers, microseconds apart); bytes written but not yet on disk when the machine itself
(not the agent) crashes can leave ``output.log`` shorter than the cursor, and then output
in between is missing. A TTY is never used, so the stream stays framed.
"""

from __future__ import annotations

import calendar
import contextlib
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import msgspec
import requests

from agent.runtimes import jobfs
from agent.runtimes.accounts import Account, resolve_account
from agent.runtimes.base import (
    LOG_NAME,
    AdoptRecord,
    RuntimeContext,
    RuntimeStartError,
    RuntimeUnavailable,
)
from mlsm.policy import mount_allowed
from mlsm.wire.agent import JobReport, JobSpec

log = logging.getLogger("mlsm.agent.docker")

OUTPUT_MOUNT = "/mlsm/output"
DATASET_MOUNT_ROOT = "/datasets"
CURSOR_SAVE_INTERVAL_S = 0.5  # at most this long between cursor saves while output flows
RESUME_MARGIN_S = 2  # seconds of log a resume asks the engine for again
MAX_CURSOR_BYTES = 1 << 20  # a cursor is a few hundred bytes
RECONNECT_MIN_S = 0.5  # follower back-off while the engine is away
RECONNECT_MAX_S = 10.0
INSPECT_EVERY_S = 5.0  # poll() asks the engine at least this often while the log flows
DRAIN_WAIT_S = 10.0  # after exit, how long the follower may keep the stream before a kick
FOLLOWER_JOIN_S = 2.0  # longest poll() waits for the follower to flush a finished log
ADOPT_DRAIN_S = 30.0  # adopt() waits this long to copy an ended container's remaining log
ADOPT_ENGINE_WAIT_S = 300.0  # engine away this long after a restart -> the attempt is lost
VANISHED_WHILE_DOWN = "container vanished while the agent was down"
ANY_NETWORK = "*"  # in ``allowed_networks``: any network mode the master names for the node

_RUNNING = frozenset({"running", "paused", "restarting"})
_ENGINE_ERRORS: tuple[type[BaseException], ...] = (
    docker.errors.DockerException,
    requests.exceptions.RequestException,
    OSError,
)
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# ---------------------------------------------------------------- small helpers
def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    explanation = getattr(exc, "explanation", None)
    if isinstance(explanation, str) and explanation:
        text = explanation
    return text if len(text) <= 400 else text[:397] + "..."


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the engine could not be reached at all (no connection, a
    broken one, a timeout), as opposed to an answer from it that refuses something."""
    return isinstance(exc, _ENGINE_ERRORS) and not isinstance(exc, docker.errors.APIError)


def _start_error(what: str, exc: BaseException) -> RuntimeStartError:
    """The error for a failed engine call: :class:`RuntimeUnavailable` when the engine is
    unreachable (the job is not at fault), else a plain start error naming ``what``."""
    if _unreachable(exc):
        return RuntimeUnavailable(f"Docker engine unavailable: {_why(exc)}")
    return RuntimeStartError(f"{what}: {_why(exc)}")


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


def _parse_engine_time(text: str) -> float | None:
    """Seconds since the epoch from an engine timestamp (RFC 3339, nanoseconds), or None."""
    if not text or text.startswith("0001-"):
        return None
    try:
        head, _, rest = text.partition(".")
        base = calendar.timegm(time.strptime(head[:19], "%Y-%m-%dT%H:%M:%S"))
        digits = "".join(c for c in rest[:9] if c.isdigit()) if rest else ""
        return base + (int(digits) / 10 ** len(digits) if digits else 0.0)
    except ValueError:
        return None


class _SecondParser:
    """Whole engine seconds of frame timestamps, caching the last parsed second."""

    def __init__(self) -> None:
        self._key = ""
        self._value = -1

    def second(self, stamp: str) -> int:
        if len(stamp) < 20 or stamp[10] != "T":
            return -1
        key = stamp[:19]
        offset = 0
        tail = stamp[19:]
        sign_at = max(tail.rfind("+"), tail.rfind("-"))
        if sign_at >= 0 and not tail.endswith("Z"):
            try:
                hh, mm = tail[sign_at + 1 :].split(":")
                offset = (int(hh) * 3600 + int(mm) * 60) * (1 if tail[sign_at] == "+" else -1)
            except ValueError:
                return -1
        if key != self._key:
            try:
                self._value = calendar.timegm(time.strptime(key, "%Y-%m-%dT%H:%M:%S"))
            except ValueError:
                return -1
            self._key = key
        return self._value - offset


# ---------------------------------------------------------------- cursor + log file
class _Cursor(msgspec.Struct, kw_only=True):
    """What a resumed follower needs; see the module docstring."""

    container_id: str
    file_size: int = 0  # output.log size consistent with ``buckets``
    floor: int = 0  # first engine second a resume asks for (0 = from the start)
    last_second: int = -1  # latest engine second seen
    buckets: dict[int, int] = {}  # engine second (>= floor) -> frames consumed
    stop_reason: str = ""  # a stop asked for before a restart still names the ending
    stop_kind: str = ""


_cursor_encoder = msgspec.json.Encoder()
_cursor_decoder = msgspec.json.Decoder(_Cursor)


class _LogSink:
    """``output.log`` plus its cursor; every write and every save under one lock."""

    def __init__(self, log_path: Path, cursor_path: Path, cursor: _Cursor, fd: int) -> None:
        self.log_path = log_path
        self.cursor_path = cursor_path
        self.cursor = cursor
        self._lock = threading.Lock()
        self._last_save = 0.0
        self._fd = fd
        self.size = os.fstat(self._fd).st_size
        self._last_byte = self._read_last_byte()

    @classmethod
    def create(
        cls, log_path: Path, cursor_path: Path, cursor: _Cursor, owner: tuple[int | None, ...]
    ) -> _LogSink:
        """Open the job's log (owned by ``owner`` = (uid, gid), never through a link the
        job planted: see jobfs.open_job_log) and the cursor's private directory."""
        jobfs.ensure_private_dir(cursor_path.parent)
        return cls(log_path, cursor_path, cursor, jobfs.open_job_log(log_path.parent, *owner))

    @classmethod
    def resume(
        cls, log_path: Path, cursor_path: Path, container_id: str, owner: tuple[int | None, ...]
    ) -> _LogSink:
        """Open for a re-adopted attempt, cutting the log back to its saved cursor."""
        cursor: _Cursor | None = None
        with contextlib.suppress(OSError, msgspec.DecodeError):
            cursor = _cursor_decoder.decode(jobfs.read_regular(cursor_path, MAX_CURSOR_BYTES))
        if cursor is None or cursor.container_id != container_id:
            sink = cls.create(log_path, cursor_path, _Cursor(container_id=container_id), owner)
            if sink.size:
                sink.marker("[mlsm] log cursor lost: output below may repeat lines above\n")
            return sink
        sink = cls.create(log_path, cursor_path, cursor, owner)
        if sink.size > cursor.file_size:  # cut through the descriptor: no path followed
            os.ftruncate(sink._fd, cursor.file_size)
            sink.size = cursor.file_size
            sink._last_byte = sink._read_last_byte()
        elif sink.size < cursor.file_size:
            log.warning("%s is shorter than its cursor; output in between is lost", log_path)
        return sink

    def _read_last_byte(self) -> bytes:
        if not self.size:
            return b"\n"
        return os.pread(self._fd, 1, self.size - 1) or b"\n"

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.size += len(data)
        if data:
            self._last_byte = data[-1:]

    def write_frame(self, second: int, data: bytes) -> None:
        with self._lock:
            c = self.cursor
            if second < 0:  # no readable timestamp: count it with the newest second
                second = max(c.last_second, c.floor)
            self._write(data)
            c.buckets[second] = c.buckets.get(second, 0) + 1
            c.last_second = max(c.last_second, second)
            if time.monotonic() - self._last_save >= CURSOR_SAVE_INTERVAL_S:
                self._save_locked()

    def marker(self, line: str) -> None:
        """Append an mlsm line (header, cancel marker), on a line of its own, and save."""
        with self._lock:
            data = line.encode()
            if self._last_byte != b"\n":
                data = b"\n" + data
            self._write(data)
            self._save_locked()

    def set_stop(self, reason: str, kind: str) -> None:
        with self._lock:
            self.cursor.stop_reason, self.cursor.stop_kind = reason, kind
            self._save_locked()

    def resume_point(self) -> tuple[int, int]:
        """(``since`` second, frames to skip) for the next read of the engine's log."""
        with self._lock:
            self._advance_floor()
            return self.cursor.floor, sum(self.cursor.buckets.values())

    def _advance_floor(self) -> None:
        c = self.cursor
        c.floor = max(c.floor, c.last_second - RESUME_MARGIN_S, 0)
        c.buckets = {s: n for s, n in c.buckets.items() if s >= c.floor}

    def save(self) -> None:
        with self._lock:
            self._save_locked()

    def _save_locked(self) -> None:
        self._advance_floor()
        self.cursor.file_size = self.size
        tmp = self.cursor_path.with_name(self.cursor_path.name + ".tmp")
        try:
            tmp.write_bytes(_cursor_encoder.encode(self.cursor))
            os.replace(tmp, self.cursor_path)
        except OSError as exc:
            log.warning("cannot save log cursor %s: %s", self.cursor_path, exc)
        self._last_save = time.monotonic()

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def discard_cursor(self) -> None:
        with contextlib.suppress(OSError):
            self.cursor_path.unlink()


# ---------------------------------------------------------------- log follower
class _LogFollower(threading.Thread):
    """Copies the container's log into the sink until the container has ended."""

    def __init__(self, container: Any, sink: _LogSink) -> None:
        super().__init__(name=f"mlsm-docker-log-{container.short_id}", daemon=True)
        self.container = container
        self.sink = sink
        self.streaming = False
        self.vanished = False
        self._closing = threading.Event()
        self._stream: Any = None
        self._parser = _SecondParser()

    def run(self) -> None:
        backoff = RECONNECT_MIN_S
        while not self._closing.is_set():
            opened = time.monotonic()
            try:
                self._pump(follow=True)
                if self._closing.is_set():
                    return
                self.container.reload()
                if self.container.status not in _RUNNING:
                    self._pump(follow=False)  # catch up on anything the stream missed
                    return
                why = "log stream ended while the container runs"
            except docker.errors.NotFound:
                self.vanished = True
                return
            except Exception as exc:  # the engine went away, or anything else: retry
                why = f"engine unreachable ({_why(exc)})"
            if time.monotonic() - opened > RECONNECT_MAX_S:
                backoff = RECONNECT_MIN_S  # it had been streaming fine: reconnect at once
            log.warning("log of %s: %s; reconnecting in %.1fs", self.name, why, backoff)
            self._closing.wait(backoff)
            backoff = min(backoff * 2, RECONNECT_MAX_S)

    def _pump(self, follow: bool) -> None:
        since, skip = self.sink.resume_point()
        stream = self.container.logs(
            stream=True,
            follow=follow,
            stdout=True,
            stderr=True,
            timestamps=True,
            since=since or None,
        )
        self._stream = stream
        self.streaming = follow
        try:
            for frame in stream:
                if self._closing.is_set():
                    return
                stamp, _, data = frame.partition(b" ")
                second = self._parser.second(stamp.decode("ascii", "replace"))
                if second < 0:
                    data = frame
                if skip:
                    skip -= 1
                    continue
                self.sink.write_frame(second, data)
        finally:
            self.streaming = False
            self._stream = None
            with contextlib.suppress(Exception):
                stream.close()

    def kick(self) -> None:
        """End the current stream; the follower checks the container and catches up."""
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()

    def close(self) -> None:
        self._closing.set()
        self.kick()


# ---------------------------------------------------------------- one attempt
class DockerJobHandle:
    """One container attempt. Thread-safe; :meth:`poll` never blocks for long."""

    def __init__(
        self,
        runtime: DockerRuntime,
        record: AdoptRecord,
        *,
        keep_container: bool,
        device_request_ids: list[int],
    ) -> None:
        self.record = record
        self.device_request_ids = device_request_ids
        self.keep_container = keep_container
        self._runtime = runtime
        self._lock = threading.RLock()
        self._container: Any = None
        self._sink: _LogSink | None = None
        self._follower: _LogFollower | None = None
        self._final: JobReport | None = None
        self._stop_reason = ""
        self._stop_kind = ""
        self._stop_grace: float | None = None
        self._last_inspect = 0.0
        self._exited_seen: float | None = None
        self._adopted_at = time.monotonic()

    @property
    def container_id(self) -> str | None:
        return self.record.container_id

    def _attach(self, container: Any, sink: _LogSink) -> None:
        self._container = container
        self._sink = sink
        self.record.container_id = container.id
        if sink.cursor.stop_kind and not self._stop_kind:
            self._stop_reason, self._stop_kind = sink.cursor.stop_reason, sink.cursor.stop_kind
        elif self._stop_kind and not sink.cursor.stop_kind:  # stop() came while unattached
            sink.set_stop(self._stop_reason, self._stop_kind)
            sink.marker(_stop_marker(self.record.job_id, self._stop_reason, self._stop_kind))
            _spawn_stop(container, self._stop_grace or 0.0, self.record.job_id)
        self._follower = _LogFollower(container, sink)
        self._follower.start()

    # -- the JobHandle protocol
    def poll(self) -> JobReport | None:
        with self._lock:
            if self._final is not None:
                return self._final
            if self._container is None and not self._runtime._reattach(self):
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
            except _ENGINE_ERRORS as exc:
                log.warning("job %s: engine unreachable: %s", self.record.job_id, _why(exc))
                return None
            if self._container.status in _RUNNING:
                return None
            return self._finish_if_drained(follower, now)

    def stop(self, reason: str, end_kind: str, grace_s: float) -> None:
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

    # -- internals
    def _check_timeout(self) -> None:
        limit = self.record.timeout_s
        if limit > 0 and not self._stop_kind and time.time() - self.record.started_at >= limit:
            self.stop(
                f"time limit {_fmt_duration(limit)} reached", "timeout", self.record.kill_grace_s
            )

    def _finish_if_drained(self, follower: _LogFollower, now: float) -> JobReport | None:
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
            started_at=_parse_engine_time(state.get("StartedAt", "")) or self.record.started_at,
            ended_at=_parse_engine_time(state.get("FinishedAt", "")) or time.time(),
            exit_code=code,
            signal=code - 128 if isinstance(code, int) and 128 < code <= 128 + 64 else None,
            reason=reason,
            end_kind=kind,  # type: ignore[arg-type]
            log_size=self._sink.size,
        )
        if not self.keep_container:
            try:
                self._container.remove(v=True)
            except docker.errors.NotFound:
                pass
            except _ENGINE_ERRORS as exc:
                log.warning("cannot remove container %s: %s", self._container.short_id, _why(exc))
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
                self._runtime._cursor_path(self.record).unlink()
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
    except _ENGINE_ERRORS as exc:
        log.warning("cannot stop container %s: %s", container.short_id, _why(exc))


# ---------------------------------------------------------------- the runtime
class DockerRuntime:
    """Runs ``env_kind="docker"`` jobs as containers on the local engine."""

    name = "docker"

    def __init__(
        self,
        ctx: RuntimeContext,
        *,
        client_factory: Callable[[], Any] = docker.from_env,
        network: str = "none",
        allowed_networks: Sequence[str] = (),
        allow_pull: bool = False,
        mount_roots: Sequence[str] | None = None,
    ) -> None:
        """``network`` is the node's default network mode; a job may name ``none`` or one
        of ``allowed_networks`` (:data:`ANY_NETWORK` among them: whatever the master's admin
        set for this node). ``mount_roots``, when given, confines every extra mount of every
        job on this node (symlinks resolved), on top of each job's own ``mount_roots``."""
        self.ctx = ctx
        self.network = network
        self.allowed_networks = frozenset({"none", network, *allowed_networks})
        self.allow_pull = allow_pull
        self.mount_roots = list(mount_roots) if mount_roots is not None else None
        self._client_factory = client_factory
        self._client: Any = None
        self._client_lock = threading.Lock()

    # -- engine
    def _engine(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = self._client_factory()
            return self._client

    def available(self) -> tuple[bool, str]:
        try:
            self._engine().ping()
        except Exception as exc:
            return False, f"Docker engine unavailable: {_why(exc)}"
        return True, ""

    def _cursor_path(self, record: AdoptRecord) -> Path:
        return (
            self.ctx.agent_data / "runtimes" / "docker" / f"{record.job_id}-{record.attempt}.json"
        )

    # -- building a container
    def _container_kwargs(
        self, spec: JobSpec, job_dir: Path, acct: Account | None = None
    ) -> dict[str, Any]:
        """Everything ``containers.create`` gets for ``spec``; raises RuntimeStartError.

        ``job_dir`` is the job's own tree on the host, mounted at :data:`OUTPUT_MOUNT`; the
        container runs as ``acct`` (default: the account :func:`resolve_account` gives),
        never as the image's own user, with ``no-new-privileges``.
        """
        if acct is None:
            acct = resolve_account(self.ctx, spec)
        if not spec.image:
            raise RuntimeStartError("a docker job needs an image")
        if not spec.argv:
            raise RuntimeStartError("a docker job needs a command")
        gpus = ",".join(str(i) for i in spec.gpus)
        env = dict(spec.env)
        env.update(self._mlsm_env(spec, gpus))
        labels = {
            "mlsm.managed": "1",
            "mlsm.job": str(spec.job_id),
            "mlsm.attempt": str(spec.attempt),
            "mlsm.node": self.ctx.node_name,
            "mlsm.gpus": gpus,
            "mlsm.keep": "1" if spec.keep_container else "0",
        }
        if spec.user:
            labels["mlsm.user"] = spec.user
        kwargs: dict[str, Any] = {
            "image": spec.image,
            "command": list(spec.argv),
            "name": f"mlsm-job-{spec.job_id}-{spec.attempt}",  # see _create
            "environment": env,
            "labels": labels,
            "mounts": self._mounts(spec, job_dir),
            "network_mode": self._network(spec),
            "init": True,  # PID 1 forwards SIGTERM and reaps; a bare PID 1 ignores SIGTERM
            "tty": False,  # keeps the log stream framed (see the module docstring)
            "detach": True,
        }
        # Like a process job, relative paths land in the output dir unless told otherwise
        # (an image's own WORKDIR would be thrown away with the container).
        kwargs["working_dir"] = spec.workdir or OUTPUT_MOUNT
        # One rule with process jobs: the job's account, by number (the image need not know
        # it), with its supplementary groups; no setuid file or capability can raise it.
        kwargs["user"] = f"{acct.uid}:{acct.gid}"
        extra_groups = [str(g) for g in acct.groups if g != acct.gid]
        if extra_groups:
            kwargs["group_add"] = extra_groups
        kwargs["security_opt"] = ["no-new-privileges"]
        if acct.uid != 0:
            kwargs["cap_drop"] = ["ALL"]
        if spec.cpus > 0:
            kwargs["nano_cpus"] = int(spec.cpus * 1e9)
        if spec.mem_bytes > 0:
            kwargs["mem_limit"] = spec.mem_bytes
            kwargs["memswap_limit"] = spec.mem_bytes  # no swap: over the limit means OOM kill
        if spec.gpus and not self.ctx.simulated_gpus:
            kwargs["device_requests"] = [
                docker.types.DeviceRequest(
                    device_ids=[str(i) for i in spec.gpus], capabilities=[["gpu"]], driver="nvidia"
                )
            ]
        return kwargs

    def _mlsm_env(self, spec: JobSpec, gpus: str) -> dict[str, str]:
        if spec.gpus and not self.ctx.simulated_gpus:
            # The container sees only its GPUs, numbered from 0; NVIDIA's runtime picks them
            # by host index, which also overrides an image's NVIDIA_VISIBLE_DEVICES=all.
            cuda = ",".join(str(i) for i in range(len(spec.gpus)))
            nvidia = gpus
        else:
            cuda = gpus
            nvidia = gpus or "void"
        env = {
            "CUDA_VISIBLE_DEVICES": cuda,
            "NVIDIA_VISIBLE_DEVICES": nvidia,
            "MLSM_GPUS": gpus,
            "MLSM_JOB_ID": str(spec.job_id),
            "MLSM_ATTEMPT": str(spec.attempt),
            "MLSM_NODE": self.ctx.node_name,
            "MLSM_OUTPUT_DIR": OUTPUT_MOUNT,
        }
        if spec.array_index is not None:
            env["MLSM_ARRAY_INDEX"] = str(spec.array_index)
        for name in spec.datasets:
            env[f"MLSM_DATASET_{_env_key(name)}"] = f"{DATASET_MOUNT_ROOT}/{name}"
        return env

    def _mounts(self, spec: JobSpec, job_dir: Path) -> list[docker.types.Mount]:
        mounts = [docker.types.Mount(OUTPUT_MOUNT, str(job_dir), type="bind", read_only=False)]
        for name, path in spec.datasets.items():
            if not _DATASET_NAME.match(name):
                raise RuntimeStartError(f"dataset name {name!r} cannot be a mount point")
            mounts.append(
                docker.types.Mount(
                    f"{DATASET_MOUNT_ROOT}/{name}", path, type="bind", read_only=True
                )
            )
        for m in spec.mounts:
            target = os.path.normpath(m.target) if m.target.startswith("/") else ""
            if target in ("", "/"):
                raise RuntimeStartError(
                    f"mount target {m.target!r} must be an absolute path below /"
                )
            source = self._mount_source(spec, m.source)
            mounts.append(docker.types.Mount(target, source, type="bind", read_only=m.read_only))
        return mounts

    def _mount_source(self, spec: JobSpec, source: str) -> str:
        """The host path to bind for ``source``: symlinks resolved here on the node, and
        confined to the job's ``mount_roots`` (a member's job: the lab's allow-list, which
        the master could only check as text) and to this runtime's own roots.

        The resolved path is what gets mounted, so a link swapped after this check cannot
        redirect the mount.
        """
        if not source.startswith("/") or "\x00" in source:
            raise RuntimeStartError(f"mount source {source!r} must be an absolute host path")
        real = os.path.realpath(source)
        for roots in (spec.mount_roots, self.mount_roots):
            if roots is None or mount_allowed(real, roots):
                continue
            shown = source if real == os.path.normpath(source) else f"{source} (-> {real})"
            allowed = ", ".join(roots) if roots else "none"
            raise RuntimeStartError(
                f"mount {shown} is outside the allowed roots on node {self.ctx.node_name} "
                f"(allowed: {allowed})"
            )
        return real

    def _network(self, spec: JobSpec) -> str:
        wanted = spec.network or self.network
        if wanted.startswith("container:") or not wanted:
            raise RuntimeStartError(f"network {wanted} is not allowed on node {self.ctx.node_name}")
        if wanted not in self.allowed_networks and ANY_NETWORK not in self.allowed_networks:
            raise RuntimeStartError(f"network {wanted} is not allowed on node {self.ctx.node_name}")
        return wanted

    def _ensure_image(self, client: Any, image: str) -> None:
        try:
            client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            if not self.allow_pull:
                raise RuntimeStartError(
                    f"image {image} not present on node {self.ctx.node_name}"
                ) from None
        except _ENGINE_ERRORS as exc:
            raise _start_error(f"image {image} could not be inspected", exc) from exc
        try:
            client.images.pull(image)
        except _ENGINE_ERRORS as exc:
            raise RuntimeStartError(
                f"image {image} could not be pulled on node {self.ctx.node_name}: {_why(exc)}"
            ) from exc

    # -- the Runtime protocol
    def start(self, spec: JobSpec, job_dir: Path) -> DockerJobHandle:
        try:
            client = self._engine()
        except Exception as exc:
            raise RuntimeUnavailable(f"Docker engine unavailable: {_why(exc)}") from exc
        acct = resolve_account(self.ctx, spec)
        kwargs = self._container_kwargs(spec, job_dir, acct)
        self._ensure_image(client, spec.image)
        # The engine binds the tree itself: its host parents need not be reachable by the
        # job's account.
        jobfs.prepare_job_dir(self.ctx, job_dir, acct, reach_by_path=False)
        if not kwargs.get("device_requests") and spec.gpus:
            log.info(
                "job %s: simulated GPUs, no device request for GPUs %s", spec.job_id, spec.gpus
            )
        container = self._create(client, kwargs)
        record = AdoptRecord(
            job_id=spec.job_id,
            attempt=spec.attempt,
            runtime=self.name,
            job_dir=str(job_dir),
            uid=acct.uid,
            gid=acct.gid,
            started_at=time.time(),
            container_id=container.id,
            timeout_s=spec.timeout_s,
            kill_grace_s=spec.kill_grace_s,
            extra={"image": spec.image, "name": kwargs["name"]},
        )
        sink = _LogSink.create(
            job_dir / LOG_NAME,
            self._cursor_path(record),
            _Cursor(container_id=container.id),
            (acct.uid, acct.gid),
        )
        sink.marker(
            f"[mlsm] job {spec.job_id} attempt {spec.attempt} on {self.ctx.node_name} started "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC in image {spec.image} "
            f"as {acct.name}{acct.note} (container {container.short_id})\n"
        )
        try:
            container.start()
        except _ENGINE_ERRORS as exc:
            why = _why(exc)
            sink.marker(f"[mlsm] job {spec.job_id} failed to start: {why}\n")
            sink.close()
            sink.discard_cursor()
            with contextlib.suppress(*_ENGINE_ERRORS):
                container.remove(force=True)
            raise _start_error(f"container for job {spec.job_id} could not start", exc) from exc
        handle = DockerJobHandle(
            self,
            record,
            keep_container=spec.keep_container,
            device_request_ids=list(spec.gpus),
        )
        handle._attach(container, sink)
        return handle

    def _create(self, client: Any, kwargs: dict[str, Any]) -> Any:
        """Create the container; ``kwargs["name"]`` ends up as the name it got.

        Job ids are per master, so another agent sharing this engine (a second lab, a test
        lab) may hold ``mlsm-job-<id>-<attempt>`` already: then the name is qualified with
        this node's name. A leftover of this node that never ran is removed and replaced.
        """
        for _ in range(3):
            name = kwargs["name"]
            try:
                return client.containers.create(**kwargs)
            except docker.errors.APIError as exc:
                whose = self._leftover(client, name) if exc.status_code == 409 else "error"
                if whose == "foreign" and name == _base_name(kwargs):
                    kwargs["name"] = f"{name}.{_name_part(self.ctx.node_name)}"
                    continue
                if whose != "removed":
                    raise RuntimeStartError(
                        f"container {name} could not be created: {_why(exc)}"
                    ) from exc
            except _ENGINE_ERRORS as exc:
                raise _start_error(f"container {name} could not be created", exc) from exc
        raise RuntimeStartError(
            f"container {kwargs['name']} already exists on node {self.ctx.node_name}"
        )

    def _leftover(self, client: Any, name: str) -> str:
        """Who holds ``name``: "foreign" (not this node's), "busy" (this node's, running or
        unreadable) or "removed" (this node's, never ran or ended: removed just now)."""
        try:
            old = client.containers.get(name)
            labels = old.labels
            if not (
                labels.get("mlsm.managed") == "1" and labels.get("mlsm.node") == self.ctx.node_name
            ):
                return "foreign"
            if old.status in _RUNNING:
                return "busy"
            old.remove(force=True)
            return "removed"
        except _ENGINE_ERRORS:
            return "busy"

    def adopt(self, record: AdoptRecord) -> DockerJobHandle | JobReport:
        handle = DockerJobHandle(self, record, keep_container=False, device_request_ids=[])
        if not self._reattach(handle):
            return handle._final or handle
        if handle._container.status in _RUNNING:
            return handle
        # Ended while the agent was down: copy the rest of its log, then report.
        follower = handle._follower
        assert follower is not None
        follower.join(ADOPT_DRAIN_S)
        if follower.is_alive():  # a long log still copying: poll() reports when it is done
            return handle
        with handle._lock:
            return handle._finish_exited()

    def _reattach(self, handle: DockerJobHandle) -> bool:
        """Find the adopted container and start following it; False when not (yet) found.

        Sets ``handle._final`` to a lost report when it is gone for good.
        """
        record = handle.record
        try:
            container = self._find(record)
        except _ENGINE_ERRORS as exc:
            if time.monotonic() - handle._adopted_at > ADOPT_ENGINE_WAIT_S:
                handle._finish_lost(f"Docker engine unavailable while re-adopting: {_why(exc)}")
            return False
        if container is None or container.status == "created":
            handle._finish_lost(VANISHED_WHILE_DOWN)
            if container is not None:
                with contextlib.suppress(*_ENGINE_ERRORS):
                    container.remove(force=True)
            return False
        handle.keep_container = container.labels.get("mlsm.keep") == "1"
        gpus = container.labels.get("mlsm.gpus", "")
        handle.device_request_ids = [int(g) for g in gpus.split(",") if g.isdigit()]
        sink = _LogSink.resume(
            Path(record.job_dir) / LOG_NAME,
            self._cursor_path(record),
            container.id,
            (record.uid, record.gid),
        )
        handle._attach(container, sink)
        return True

    def _find(self, record: AdoptRecord) -> Any:
        client = self._engine()
        if record.container_id:
            try:
                return client.containers.get(record.container_id)
            except docker.errors.NotFound:
                pass
        found = client.containers.list(
            all=True,
            filters={
                "label": [
                    "mlsm.managed=1",
                    f"mlsm.job={record.job_id}",
                    f"mlsm.attempt={record.attempt}",
                    f"mlsm.node={self.ctx.node_name}",
                ]
            },
        )
        return found[0] if found else None


def _base_name(kwargs: dict[str, Any]) -> str:
    labels = kwargs["labels"]
    return f"mlsm-job-{labels['mlsm.job']}-{labels['mlsm.attempt']}"


def _name_part(text: str) -> str:
    """``text`` as characters a container name may hold ([a-zA-Z0-9_.-])."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:64] or "node"


def _env_key(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


__all__ = [
    "ADOPT_ENGINE_WAIT_S",
    "ANY_NETWORK",
    "OUTPUT_MOUNT",
    "VANISHED_WHILE_DOWN",
    "DockerJobHandle",
    "DockerRuntime",
]
