"""The node's side of "results out": disk report, removal of finished jobs' directories,
and the outputs served through relay pipes, wired together once for the agent.

:class:`NodeOutputs` owns the pins that keep a directory in use away from removal, the
meter whose report rides in the node info, the sweeper's commands and the outputs server's
pipe commands; the agent only installs it and runs its two loops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.outputs.disk import DiskMeter
from agent.outputs.pins import JobDirPins
from agent.outputs.serve import OutputsServer, Snapshots
from agent.outputs.sweeper import JobDirSweeper
from agent.pacing import env_seconds, nap
from mlsm.wire.outputs import NodeDisk

if TYPE_CHECKING:
    from agent.bulk.service import BulkCommands
    from agent.link import MasterLink

log = logging.getLogger("mlsm.agent.outputs")

DISK_REPORT_S = env_seconds("MLSM_DISK_REPORT_INTERVAL", 60.0)  # re-measure the data dir


class NodeOutputs:
    """Disk hygiene and outputs of one agent; ``on_disk`` hears each new disk report (the
    agent puts it in the node info for the next heartbeat)."""

    def __init__(
        self,
        data_dir: Path,
        link: MasterLink,
        *,
        in_use: Callable[[int], str | None],
        on_disk: Callable[[NodeDisk], None],
        stopping: asyncio.Event,
        snapshots: Snapshots | None = None,
    ) -> None:
        self.stopping = stopping
        self.meter = DiskMeter(data_dir)
        self.disk = NodeDisk(data_dir=str(data_dir))
        self.pins = JobDirPins()
        self._on_disk = on_disk
        self.sweeper = JobDirSweeper(
            data_dir=data_dir,
            link=link,
            pins=self.pins,
            meter=self.meter,
            in_use=in_use,
            on_disk=self._measured,
            stopping=stopping,
        )
        self.server = OutputsServer(data_dir, self.pins, snapshots)

    def install(
        self, handlers: dict[type, Callable[[Any], Awaitable[None]]], bulk: BulkCommands
    ) -> None:
        """Take the sweeper's commands and the outputs' pipe commands."""
        self.server.install(bulk)
        self.sweeper.install(handlers)

    def _measured(self, disk: NodeDisk) -> None:
        self.disk = disk
        self._on_disk(disk)

    async def disk_loop(self) -> None:
        """Measure the data dir now and every :data:`DISK_REPORT_S` (in a thread: a walk)."""
        while not self.stopping.is_set():
            try:
                self._measured(await asyncio.to_thread(self.meter.measure))
            except Exception:
                log.exception("measuring the data dir failed")
            await nap(self.stopping, DISK_REPORT_S)

    def tasks(self) -> list[asyncio.Task[None]]:
        """The agent's loops for this part: the disk report and the removal reports' resend."""
        return [
            asyncio.create_task(self.disk_loop(), name="disk"),
            asyncio.create_task(self.sweeper.resend_loop(), name="removals"),
        ]
