"""Copying a container's log into the job's ``output.log``, resumable across agent restarts.

A :class:`LogFollower` thread reads the engine's log stream of one container and writes it
through a :class:`LogSink`, which owns ``output.log`` and the follower's cursor.

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
import os
import threading
import time
from pathlib import Path
from typing import Any

import docker.errors
import msgspec

from agent.runtimes import jobfs
from agent.runtimes.base import AdoptRecord
from agent.runtimes.docker.engine import RUNNING, why

log = logging.getLogger("mlsm.agent.docker")

CURSOR_SAVE_INTERVAL_S = 0.5  # at most this long between cursor saves while output flows
RESUME_MARGIN_S = 2  # seconds of log a resume asks the engine for again
MAX_CURSOR_BYTES = 1 << 20  # a cursor is a few hundred bytes
RECONNECT_MIN_S = 0.5  # follower back-off while the engine is away
RECONNECT_MAX_S = 10.0


def cursor_path(agent_data: Path, record: AdoptRecord) -> Path:
    """Where the cursor of ``record``'s attempt is saved: the agent's own data, never the
    job dir the container can write."""
    return agent_data / "runtimes" / "docker" / f"{record.job_id}-{record.attempt}.json"


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
class Cursor(msgspec.Struct, kw_only=True):
    """What a resumed follower needs; see the module docstring."""

    container_id: str
    file_size: int = 0  # output.log size consistent with ``buckets``
    floor: int = 0  # first engine second a resume asks for (0 = from the start)
    last_second: int = -1  # latest engine second seen
    buckets: dict[int, int] = {}  # engine second (>= floor) -> frames consumed
    stop_reason: str = ""  # a stop asked for before a restart still names the ending
    stop_kind: str = ""


_cursor_encoder = msgspec.json.Encoder()
_cursor_decoder = msgspec.json.Decoder(Cursor)


class LogSink:
    """``output.log`` plus its cursor; every write and every save under one lock."""

    def __init__(self, log_path: Path, cursor_path: Path, cursor: Cursor, fd: int) -> None:
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
        cls, log_path: Path, cursor_path: Path, cursor: Cursor, owner: tuple[int | None, ...]
    ) -> LogSink:
        """Open the job's log (owned by ``owner`` = (uid, gid), never through a link the
        job planted: see jobfs.open_job_log) and the cursor's private directory."""
        jobfs.ensure_private_dir(cursor_path.parent)
        return cls(log_path, cursor_path, cursor, jobfs.open_job_log(log_path.parent, *owner))

    @classmethod
    def new(
        cls, log_path: Path, cursor_path: Path, container_id: str, owner: tuple[int | None, ...]
    ) -> LogSink:
        """Open for a container just created: the cursor starts empty."""
        return cls.create(log_path, cursor_path, Cursor(container_id=container_id), owner)

    @classmethod
    def resume(
        cls, log_path: Path, cursor_path: Path, container_id: str, owner: tuple[int | None, ...]
    ) -> LogSink:
        """Open for a re-adopted attempt, cutting the log back to its saved cursor."""
        cursor: Cursor | None = None
        with contextlib.suppress(OSError, msgspec.DecodeError):
            cursor = _cursor_decoder.decode(jobfs.read_regular(cursor_path, MAX_CURSOR_BYTES))
        if cursor is None or cursor.container_id != container_id:
            sink = cls.create(log_path, cursor_path, Cursor(container_id=container_id), owner)
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
class LogFollower(threading.Thread):
    """Copies the container's log into the sink until the container has ended."""

    def __init__(self, container: Any, sink: LogSink) -> None:
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
                if self.container.status not in RUNNING:
                    self._pump(follow=False)  # catch up on anything the stream missed
                    return
                reason = "log stream ended while the container runs"
            except docker.errors.NotFound:
                self.vanished = True
                return
            except Exception as exc:  # the engine went away, or anything else: retry
                reason = f"engine unreachable ({why(exc)})"
            if time.monotonic() - opened > RECONNECT_MAX_S:
                backoff = RECONNECT_MIN_S  # it had been streaming fine: reconnect at once
            log.warning("log of %s: %s; reconnecting in %.1fs", self.name, reason, backoff)
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
