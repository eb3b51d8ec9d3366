"""The node's half of the lease fence (see :mod:`mlsm.master.services.jobs.lost`).

The master declares a node lost when it has heard nothing from it for the lease, and runs
the jobs that have retries left again elsewhere, but only once the lease, a stop's grace and
a margin have passed since it last heard the node. This node stops those attempts (the ones
started with ``stop_when_lost``) once it has had no contact with the master for the lease,
so an attempt and its retry never run at once, whether the master, the link or the node
failed. Jobs without retries run on through any outage.

Contact is a request the master answered, timed when it was *sent*: the master heard the
node no sooner than that, so this node's clock never runs behind the master's. The latest
contact (wall time) and the lease are kept in ``<agent data>/last-contact``, so an agent
restarted while the master is out of reach counts from the real last contact, not from its
own start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.pacing import env_seconds, nap

log = logging.getLogger("mlsm.agent")

CONTACT_FILE = "last-contact"
#: How often the fence looks at the time since the last contact.
CHECK_S = env_seconds("MLSM_FENCE_CHECK_INTERVAL", 1.0)
#: The file is rewritten at most this often, or every quarter lease if that is shorter.
SAVE_EVERY_S = 5.0


class LeaseFence:
    def __init__(self, data_dir: Path, lease: float = 30.0) -> None:
        self.path = data_dir / CONTACT_FILE
        self.lease = lease
        now_mono, now_wall = time.monotonic(), time.time()
        self._last = now_mono  # monotonic time of the latest contact
        self._saved = 0.0
        saved = self._read()
        if saved is not None:
            wall, lease = saved
            self.lease = lease
            self._last = now_mono - max(0.0, now_wall - wall)
        self._away_logged = False

    def _read(self) -> tuple[float, float] | None:
        try:
            wall, lease = self.path.read_text().split()
            return float(wall), float(lease)
        except (OSError, ValueError):
            return None

    @property
    def away_s(self) -> float:
        """Seconds since the latest contact with the master."""
        return time.monotonic() - self._last

    def contact(self, sent_mono: float, lease: float | None = None) -> None:
        """A request sent at ``sent_mono`` (monotonic) was answered by the master."""
        if lease is not None:
            self.lease = lease
        if sent_mono <= self._last:
            return
        self._last = sent_mono
        if self._away_logged:
            log.info("the master answered again; attempts it would retry run as usual")
            self._away_logged = False
        # A job's shim reads the file to keep the fence if the agent dies (a quarter lease
        # of slack: see agent/runtimes/process/shim.py).
        if sent_mono - self._saved >= min(SAVE_EVERY_S, self.lease / 4):
            self._saved = sent_mono
            wall = time.time() - (time.monotonic() - sent_mono)
            tmp = self.path.with_name(CONTACT_FILE + ".tmp")
            with contextlib.suppress(OSError):  # a full disk must not stop the agent
                tmp.write_text(f"{wall:.3f} {self.lease:.3f}\n")
                os.replace(tmp, self.path)

    async def run(
        self, stopping: asyncio.Event, stop_lost: Callable[[str], Awaitable[list[int]]]
    ) -> None:
        """Stop the attempts the master would retry once the lease has passed without it."""
        while not stopping.is_set():
            away = self.away_s
            if away > self.lease:
                reason = (
                    f"stopped: no contact with the master for {away:.0f} s (lease "
                    f"{self.lease:.0f} s); the master runs this job again elsewhere"
                )
                stopped = await stop_lost(reason)
                if stopped:
                    log.warning(
                        "no contact with the master for %.0f s (lease %.0f s): stopping "
                        "job(s) %s, which the master retries elsewhere",
                        away,
                        self.lease,
                        ", ".join(map(str, stopped)),
                    )
                self._away_logged = True
                await nap(stopping, CHECK_S)
            else:  # nothing can be due before the lease runs out; contact may push it on
                await nap(stopping, max(CHECK_S, self.lease - away + CHECK_S / 10))
