"""A node as the master holds it in memory, and what other services hear about nodes.

:class:`LiveNode` is the hot state of one node (what its last heartbeat said, its command
outbox, its long-poll's wake-up), owned by the :class:`~mlsm.master.services.nodes.NodeRegistry`.
Services that must hear about nodes implement :class:`NodeListener` (usually by extending
:class:`NodeEvents`) and are subscribed to the registry once, by the service container.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from mlsm import PROTOCOL_VERSION
from mlsm.wire import agent as w


@dataclass(eq=False)
class LiveNode:
    id: int
    name: str
    secret_hash: str
    labels: dict[str, str]
    registered_at: float
    draining: bool = False
    docker_network: str = "none"
    info: w.NodeInfo = field(default_factory=w.NodeInfo)
    last_seen: float | None = None
    host: w.HostSample | None = None
    gpus: list[w.GpuSample] = field(default_factory=list)
    gpu_error: str | None = None
    jobs: dict[int, w.JobReport] = field(default_factory=dict)
    #: Counts the changes of ``gpus`` and ``jobs`` (each heartbeat and job event): views
    #: built from them are kept while it stays the same.
    seq: int = 0
    protocol: int = PROTOCOL_VERSION
    datasets_digest: str = ""
    outbox: dict[int, w.Command] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    dirty: bool = False
    info_dirty: bool = False
    lost: bool = False  # lease expired and its jobs were handled
    # The master holds attempts placed here: every heartbeat goes to the listeners, even one
    # that names no job (an agent that lost a StartJob, its node otherwise idle). True until
    # the job service has read a full report (a restarted master knows nothing yet).
    has_work: bool = True


class NodeListener(Protocol):
    """What the registry tells other services; :class:`NodeEvents` ignores every event."""

    async def node_reported(self, node: LiveNode, reports: list[w.JobReport], full: bool) -> None:
        """Job reports: every job the agent runs (``full``, a heartbeat) or changes (an event)."""

    async def node_transfers(self, node: LiveNode, progress: list[w.TransferProgress]) -> None:
        """Progress of the dataset commands the node runs (with its heartbeat)."""

    async def node_lost(self, node: LiveNode) -> None:
        """The node missed its lease: what ran there is lost."""

    def node_changed(self) -> None:
        """Something that can let queued work start: a node came back or was resumed, or a
        node's datasets changed."""


class NodeEvents:
    """A :class:`NodeListener` that ignores every event: listeners override what they need."""

    async def node_reported(self, node: LiveNode, reports: list[w.JobReport], full: bool) -> None:
        return None

    async def node_transfers(self, node: LiveNode, progress: list[w.TransferProgress]) -> None:
        return None

    async def node_lost(self, node: LiveNode) -> None:
        return None

    def node_changed(self) -> None:
        return None
