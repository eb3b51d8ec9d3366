"""Access to the node's Docker engine, and what its failures mean for a job.

One client, made on first use (the engine may be down when the agent starts, and come up
later). An engine call fails in one of two ways: the engine is unreachable (no socket, a
broken connection, a timeout), which is not the job's fault, or it answers and refuses
(:class:`docker.errors.APIError`), which is. :func:`start_error` turns either into the
runtime's start error of the right kind.

A job's container carries labels naming its job, attempt and node (:func:`job_labels`); they
find it again after an agent restart, and tell this node's containers from another agent's
on a shared engine.
"""

from __future__ import annotations

import calendar
import threading
import time
from collections.abc import Callable
from typing import Any

import docker
import docker.errors
import requests

from agent.runtimes.base import AdoptRecord, RuntimeStartError, RuntimeUnavailable

RUNNING = frozenset({"running", "paused", "restarting"})  # states of a container not yet ended
ENGINE_ERRORS: tuple[type[BaseException], ...] = (
    docker.errors.DockerException,
    requests.exceptions.RequestException,
    OSError,
)
MAX_WHY_CHARS = 400  # an engine's explanation is cut to this for messages


def why(exc: BaseException) -> str:
    """An engine failure in words: its explanation when it gave one, cut to a sane length."""
    text = str(exc) or type(exc).__name__
    explanation = getattr(exc, "explanation", None)
    if isinstance(explanation, str) and explanation:
        text = explanation
    return text if len(text) <= MAX_WHY_CHARS else text[: MAX_WHY_CHARS - 3] + "..."


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the engine could not be reached at all (no connection, a
    broken one, a timeout), as opposed to an answer from it that refuses something."""
    return isinstance(exc, ENGINE_ERRORS) and not isinstance(exc, docker.errors.APIError)


def start_error(what: str, exc: BaseException) -> RuntimeStartError:
    """The error for a failed engine call: :class:`RuntimeUnavailable` when the engine is
    unreachable (the job is not at fault), else a plain start error naming ``what``."""
    if unreachable(exc):
        return RuntimeUnavailable(f"Docker engine unavailable: {why(exc)}")
    return RuntimeStartError(f"{what}: {why(exc)}")


def parse_engine_time(text: str) -> float | None:
    """Seconds since the epoch from an engine timestamp (RFC 3339, nanoseconds), or None."""
    if not text or text.startswith("0001-"):
        return None
    try:
        head, _, rest = text.partition(".")
        base = calendar.timegm(time.strptime(head[:19], "%Y-%m-%dT%H:%M:%S"))
        digits = "".join(c for c in rest[:9] if c.isdecimal()) if rest else ""
        return base + (int(digits) / 10 ** len(digits) if digits else 0.0)
    except ValueError:
        return None


def job_labels(job_id: int, attempt: int, node_name: str) -> dict[str, str]:
    """The labels that make a container one attempt's on one node."""
    return {
        "mlsm.managed": "1",
        "mlsm.job": str(job_id),
        "mlsm.attempt": str(attempt),
        "mlsm.node": node_name,
    }


class Engine:
    """The local Docker engine, as this node's agent sees it. Thread-safe."""

    def __init__(self, client_factory: Callable[[], Any], node_name: str) -> None:
        self.node_name = node_name
        self._client_factory = client_factory
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        """The engine's client, made on first use; raises what the factory raises."""
        with self._lock:
            if self._client is None:
                self._client = self._client_factory()
            return self._client

    def available(self) -> tuple[bool, str]:
        """(True, "") when the engine answers a ping, else (False, why in words)."""
        try:
            self.client().ping()
        except Exception as exc:
            return False, f"Docker engine unavailable: {why(exc)}"
        return True, ""

    def owns(self, container: Any) -> bool:
        """Whether ``container`` is one of this node's job containers."""
        labels = container.labels
        return bool(labels.get("mlsm.managed") == "1" and labels.get("mlsm.node") == self.node_name)

    def find(self, record: AdoptRecord) -> Any:
        """The container of ``record``'s attempt: by id, else by its labels; None when it is
        gone. Raises one of :data:`ENGINE_ERRORS` while the engine is unreachable."""
        client = self.client()
        if record.container_id:
            try:
                return client.containers.get(record.container_id)
            except docker.errors.NotFound:
                pass
        labels = job_labels(record.job_id, record.attempt, self.node_name)
        found = client.containers.list(
            all=True, filters={"label": [f"{k}={v}" for k, v in labels.items()]}
        )
        return found[0] if found else None
