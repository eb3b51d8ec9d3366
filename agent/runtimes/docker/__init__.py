"""The docker runtime: a job attempt as one container on the node's Docker engine.

A container is created (never pulled unless the node allows it) with the job's argv as its
command, its GPUs as a device request, its job dir at ``/mlsm/output`` and its datasets
read-only under ``/datasets/<name>``, then started. A follower thread copies the
container's log from the engine into ``<job dir>/output.log``, byte-exact across agent
restarts.

One module a responsibility: :mod:`.engine` (the engine client, what its errors mean),
:mod:`.container` (a spec as container arguments), :mod:`.logs` (the log copy and how it
resumes), :mod:`.handle` (one attempt: poll, stop, end, re-adopt) and :mod:`.runtime`
(create, start, adopt). The names below are the public face.
"""

from agent.runtimes.docker.container import ANY_NETWORK, DATASET_MOUNT_ROOT, OUTPUT_MOUNT
from agent.runtimes.docker.handle import (
    ADOPT_ENGINE_WAIT_S,
    VANISHED_WHILE_DOWN,
    DockerJobHandle,
)
from agent.runtimes.docker.runtime import DockerRuntime

__all__ = [
    "ADOPT_ENGINE_WAIT_S",
    "ANY_NETWORK",
    "DATASET_MOUNT_ROOT",
    "OUTPUT_MOUNT",
    "VANISHED_WHILE_DOWN",
    "DockerJobHandle",
    "DockerRuntime",
]
