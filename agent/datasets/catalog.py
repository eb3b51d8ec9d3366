"""This node's dataset catalog as the master knows it: scanned here, reported there.

The scanner finds what changed on disk since its last report; :class:`CatalogReporter`
sends that delta. A report is full the first time, after the master asked for one (it lost
track of this node's datasets) and after a report that failed, so the master never keeps a
stale catalog. The periodic scan and the rescan after a dataset command share one reporter,
which makes one report at a time.
"""

from __future__ import annotations

import asyncio

from agent.datasets.scan import DatasetScanner
from agent.link import MasterLink


class CatalogReporter:
    def __init__(self, scanner: DatasetScanner, link: MasterLink) -> None:
        self.scanner = scanner
        self._link = link
        self._want_full = True
        self._lock = asyncio.Lock()

    @property
    def digest(self) -> str:
        """The digest of the catalog last scanned ("" before the first), for heartbeats."""
        return self.scanner.catalog_digest

    def want_full(self) -> None:
        """Make the next report a full one."""
        self._want_full = True

    async def report(self) -> None:
        """Scan and send what changed. Raises what the scan or the link raised; the next
        report is then a full one."""
        async with self._lock:
            full, self._want_full = self._want_full, False
            try:
                report = await asyncio.to_thread(self.scanner.scan, full)
                if report.full or report.upsert or report.removed:
                    await self._link.send_datasets(report)
            except BaseException:
                self._want_full = True
                raise
