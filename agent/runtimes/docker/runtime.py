"""The docker runtime: a job attempt as one container on the node's Docker engine.

:meth:`DockerRuntime.start` checks the spec into container arguments
(:mod:`.container`), makes sure the image is there (never pulled unless the node allows
it), prepares the job's tree, creates the container, opens its log with a header line and
starts it; a :class:`~agent.runtimes.docker.handle.DockerJobHandle` follows it from there.
:meth:`DockerRuntime.adopt` hands an attempt of an earlier agent to a new handle.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors

from agent.runtimes import jobfs
from agent.runtimes.accounts import Account, resolve_account
from agent.runtimes.base import (
    LOG_NAME,
    AdoptRecord,
    RuntimeContext,
    RuntimeStartError,
    RuntimeUnavailable,
)
from agent.runtimes.docker.container import container_kwargs
from agent.runtimes.docker.engine import ENGINE_ERRORS, RUNNING, Engine, start_error, why
from agent.runtimes.docker.handle import DockerJobHandle
from agent.runtimes.docker.logs import LogSink, cursor_path
from mlsm.wire.agent import JobReport, JobSpec

log = logging.getLogger("mlsm.agent.docker")

CREATE_TRIES = 3  # a taken name is qualified, a leftover removed: then one more try


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
        of ``allowed_networks`` (``ANY_NETWORK`` among them: whatever the master's admin
        set for this node). ``mount_roots``, when given, confines every extra mount of every
        job on this node (symlinks resolved), on top of each job's own ``mount_roots``."""
        self.ctx = ctx
        self.network = network
        self.allowed_networks = frozenset({"none", network, *allowed_networks})
        self.allow_pull = allow_pull
        self.mount_roots = list(mount_roots) if mount_roots is not None else None
        self.engine = Engine(client_factory, ctx.node_name)

    def available(self) -> tuple[bool, str]:
        return self.engine.available()

    # -- the Runtime protocol
    def start(self, spec: JobSpec, job_dir: Path) -> DockerJobHandle:
        try:
            client = self.engine.client()
        except Exception as exc:
            raise RuntimeUnavailable(f"Docker engine unavailable: {why(exc)}") from exc
        acct = resolve_account(self.ctx, spec)
        kwargs = self._container_kwargs(spec, job_dir, acct)
        self._ensure_image(client, spec.image)
        # The engine binds the tree itself: its host parents need not be reachable by the
        # job's account.
        jobfs.prepare_job_dir(self.ctx, job_dir, acct, reach_by_path=False)
        jobfs.code_workdir(self.ctx, spec, job_dir, acct)  # the container's working dir
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
        cursor = cursor_path(self.ctx.agent_data, record)
        sink = LogSink.new(job_dir / LOG_NAME, cursor, container.id, (acct.uid, acct.gid))
        sink.marker(
            f"[mlsm] job {spec.job_id} attempt {spec.attempt} on {self.ctx.node_name} started "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC in image {spec.image} "
            f"as {acct.name}{acct.note} (container {container.short_id})\n"
        )
        try:
            container.start()
        except ENGINE_ERRORS as exc:
            sink.marker(f"[mlsm] job {spec.job_id} failed to start: {why(exc)}\n")
            sink.close()
            sink.discard_cursor()
            with contextlib.suppress(*ENGINE_ERRORS):
                container.remove(force=True)
            raise start_error(f"container for job {spec.job_id} could not start", exc) from exc
        return DockerJobHandle.started(
            record,
            container,
            sink,
            engine=self.engine,
            cursor_path=cursor,
            keep_container=spec.keep_container,
            device_request_ids=spec.gpus,
        )

    def adopt(self, record: AdoptRecord) -> DockerJobHandle | JobReport:
        return DockerJobHandle.adopt(
            record, engine=self.engine, cursor_path=cursor_path(self.ctx.agent_data, record)
        )

    # -- building and creating the container
    def _container_kwargs(
        self, spec: JobSpec, job_dir: Path, acct: Account | None = None
    ) -> dict[str, Any]:
        """``containers.create``'s arguments for ``spec`` under this node's rules, as
        ``acct`` (default: the account :func:`resolve_account` gives)."""
        return container_kwargs(
            self.ctx,
            spec,
            job_dir,
            acct if acct is not None else resolve_account(self.ctx, spec),
            network=self.network,
            allowed_networks=self.allowed_networks,
            mount_roots=self.mount_roots,
        )

    def _ensure_image(self, client: Any, image: str) -> None:
        try:
            client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            if not self.allow_pull:
                raise RuntimeStartError(
                    f"image {image} not present on node {self.ctx.node_name}"
                ) from None
        except ENGINE_ERRORS as exc:
            raise start_error(f"image {image} could not be inspected", exc) from exc
        try:
            client.images.pull(image)
        except ENGINE_ERRORS as exc:
            raise RuntimeStartError(
                f"image {image} could not be pulled on node {self.ctx.node_name}: {why(exc)}"
            ) from exc

    def _create(self, client: Any, kwargs: dict[str, Any]) -> Any:
        """Create the container; ``kwargs["name"]`` ends up as the name it got.

        Job ids are per master, so another agent sharing this engine (a second lab, a test
        lab) may hold ``mlsm-job-<id>-<attempt>`` already: then the name is qualified with
        this node's name. A leftover of this node that never ran is removed and replaced.
        """
        base = kwargs["name"]
        for _ in range(CREATE_TRIES):
            name = kwargs["name"]
            try:
                return client.containers.create(**kwargs)
            except docker.errors.APIError as exc:
                whose = self._leftover(client, name) if exc.status_code == 409 else "error"
                if whose == "foreign" and name == base:
                    kwargs["name"] = f"{name}.{_name_part(self.ctx.node_name)}"
                    continue
                if whose != "removed":
                    raise RuntimeStartError(
                        f"container {name} could not be created: {why(exc)}"
                    ) from exc
            except ENGINE_ERRORS as exc:
                raise start_error(f"container {name} could not be created", exc) from exc
        raise RuntimeStartError(
            f"container {kwargs['name']} already exists on node {self.ctx.node_name}"
        )

    def _leftover(self, client: Any, name: str) -> str:
        """Who holds ``name``: "foreign" (not this node's), "busy" (this node's, running or
        unreadable) or "removed" (this node's, never ran or ended: removed just now)."""
        try:
            old = client.containers.get(name)
            if not self.engine.owns(old):
                return "foreign"
            if old.status in RUNNING:
                return "busy"
            old.remove(force=True)
            return "removed"
        except ENGINE_ERRORS:
            return "busy"


def _name_part(text: str) -> str:
    """``text`` as characters a container name may hold ([a-zA-Z0-9_.-])."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:64] or "node"
