"""The node's job runtimes by environment kind, with a Docker runtime that comes and goes.

The process runtime serves ``process``, ``venv`` and ``conda``. The Docker runtime serves
``docker`` while its engine answers; it is kept while the engine is down (or goes away
under a job's start), checked every :data:`DOCKER_CHECK_S`, and serves again once the
engine is back. What the node offers is reported to the master in its node info.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from agent.pacing import env_seconds
from agent.runtimes.base import AdoptRecord, Runtime, RuntimeContext
from agent.runtimes.process import ProcessRuntime

log = logging.getLogger("mlsm.agent")

DOCKER_CHECK_S = env_seconds("MLSM_DOCKER_CHECK_INTERVAL", 15.0)  # re-check the Docker engine


class Runtimes:
    """Which runtime runs which env kind on this node now; owned by the agent's event loop."""

    def __init__(self, ctx: RuntimeContext) -> None:
        proc = ProcessRuntime(ctx)
        self._by_kind: dict[str, Runtime] = dict.fromkeys(proc.env_kinds, proc)
        self.docker_error = ""
        self._docker: Any = None  # kept even while the engine is down, to notice it coming back
        try:
            from agent.runtimes.docker import ANY_NETWORK, DockerRuntime

            # The network mode comes with each job: the node's admin sets it on the master
            # (`mlsm node set NAME --docker-network ...`), which this agent already trusts.
            self._docker = DockerRuntime(ctx, allowed_networks=(ANY_NETWORK,))
            ok, why = self._docker.available()
            if ok:
                self._by_kind["docker"] = self._docker
            else:
                self.docker_error = why
        except Exception as exc:  # docker SDK missing or broken: no container jobs here
            self.docker_error = f"Docker unavailable: {exc}"
        self._docker_checked = time.monotonic()

    def get(self, env_kind: str) -> Runtime | None:
        return self._by_kind.get(env_kind)

    def for_record(self, record: AdoptRecord) -> Runtime | None:
        """The runtime that re-adopts ``record``; None for a Docker one while Docker is away."""
        if record.runtime == "docker":
            return self._by_kind.get("docker")
        return self._by_kind.get(record.runtime) or self._by_kind["process"]

    def docker_client(self) -> Any:
        """The Docker engine's client (a shell or a forward into a container job);
        raises when this node has no engine."""
        if self._docker is None:
            raise RuntimeError(self.docker_error or "no Docker engine on this node")
        return self._docker.engine.client()

    @property
    def kinds(self) -> list[str]:
        return sorted(self._by_kind)

    @property
    def docker_available(self) -> bool:
        return "docker" in self._by_kind

    def docker_check_due(self) -> bool:
        return (
            self._docker is not None and time.monotonic() - self._docker_checked >= DOCKER_CHECK_S
        )

    async def check_docker(self) -> bool:
        """Notice the engine going away or coming back; True when that changed what this
        node offers."""
        self._docker_checked = time.monotonic()
        ok, why = await asyncio.to_thread(self._docker.available)
        if ok == self.docker_available:
            return False
        if ok:
            self._by_kind["docker"] = self._docker
            self.docker_error = ""
            log.info("the Docker engine is available again: container jobs are accepted")
        else:
            self._by_kind.pop("docker", None)
            self.docker_error = why
            log.warning("%s: no new container jobs until it is back", why)
        return True

    def drop_docker(self, why: str) -> bool:
        """The engine went away under a job's start: no container jobs until a check finds
        it back. True when Docker was offered until now."""
        if self._by_kind.pop("docker", None) is None:
            return False
        self.docker_error = why
        self._docker_checked = time.monotonic()
        log.warning("%s: no new container jobs until it is back", why)
        return True
