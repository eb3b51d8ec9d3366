"""Host telemetry: what a node is (:meth:`HostCollector.info`) and how it is doing now
(:meth:`HostCollector.sample`).

``sample()`` runs on every heartbeat (every couple of seconds), so it only makes cheap,
non-blocking reads: CPU use is measured since the previous call instead of over a wait, and
the network rate comes from the counter delta between two samples. Nothing here raises for
a missing path or an absent counter; a node with odd hardware still heartbeats.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import psutil

from mlsm.wire.agent import DiskUsage, HostSample, NodeInfo

#: Bounds of the wire's ``ShortStr``/``LongStr``; longer text is cut so a struct we build
#: always decodes on the master.
_SHORT_MAX = 256
_LONG_MAX = 4096

_CPUINFO = Path("/proc/cpuinfo")
#: Keys of /proc/cpuinfo that name the CPU, in order of preference (x86, then Arm/POWER).
_CPU_MODEL_KEYS = ("model name", "Model", "Hardware", "cpu")
#: Interfaces left out of the network rate: loopback traffic (the agent talking to a local
#: master, say) is not the node's network load.
_LOOPBACK_PREFIX = "lo"

_Role = Literal["data", "dataset_root"]


def _short(text: str) -> str:
    return text[:_SHORT_MAX]


def _read_cpu_model() -> str:
    """The CPU's marketing name, or what :mod:`platform` knows when /proc says nothing."""
    try:
        text = _CPUINFO.read_text(errors="replace")
    except OSError:
        text = ""
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if sep and value and key in _CPU_MODEL_KEYS and key not in found:
            found[key] = value
    for key in _CPU_MODEL_KEYS:
        if key in found:
            return found[key]
    return platform.processor() or platform.machine()


def _read_os_name() -> str:
    """PRETTY_NAME from os-release, e.g. "Debian GNU/Linux 12 (bookworm)"."""
    try:
        pretty = platform.freedesktop_os_release().get("PRETTY_NAME", "")
    except OSError:
        pretty = ""
    return pretty or f"{platform.system()} {platform.release()}".strip()


def _disk(path: Path, role: _Role) -> DiskUsage | None:
    """Usage of the filesystem holding ``path``; ``None`` when it does not exist (yet)."""
    try:
        usage = psutil.disk_usage(str(path))
    except OSError:  # missing, not a directory, no permission
        return None
    return DiskUsage(
        path=str(path)[:_LONG_MAX],
        total=usage.total,
        used=usage.used,
        free=usage.free,
        role=role,
    )


def _net_bytes() -> tuple[int, int]:
    """Bytes received and sent so far on every non-loopback interface."""
    rx = tx = 0
    for name, counters in psutil.net_io_counters(pernic=True).items():
        if name.startswith(_LOOPBACK_PREFIX):
            continue
        rx += counters.bytes_recv
        tx += counters.bytes_sent
    return rx, tx


class HostCollector:
    """Reads host facts and telemetry for one agent.

    ``data_dir`` is the agent's data directory and ``dataset_roots`` the directories it
    keeps datasets in; both are reported as disks so the scheduler and the dashboard see
    free space where jobs and datasets actually land.
    """

    def __init__(
        self,
        data_dir: Path,
        dataset_roots: Sequence[Path] = (),
        import_roots: Sequence[Path] = (),
    ) -> None:
        self._data_dir = Path(data_dir)
        self._dataset_roots = tuple(Path(root) for root in dataset_roots)
        self._import_roots = tuple(Path(root) for root in import_roots)
        self._boot_time = psutil.boot_time()
        self._prev_net: tuple[float, int, int] | None = None
        # The first non-blocking cpu_percent() call has nothing to compare with and
        # returns 0.0; make it here so the first sample already measures something.
        psutil.cpu_percent(interval=None)

    def info(self) -> NodeInfo:
        """Static facts about this node; the agent adds its own version and GPU facts."""
        return NodeInfo(
            hostname=_short(socket.gethostname()),
            os=_short(_read_os_name()),
            kernel=_short(platform.release()),
            arch=_short(platform.machine()),
            cpu_model=_short(_read_cpu_model()),
            cpu_cores=psutil.cpu_count(logical=True) or 0,
            cpu_physical=psutil.cpu_count(logical=False) or 0,
            mem_total=psutil.virtual_memory().total,
            python=_short(platform.python_version()),
            runs_as_root=os.geteuid() == 0,
            dataset_roots=[str(root)[:_LONG_MAX] for root in self._dataset_roots],
            import_roots=[str(root)[:_LONG_MAX] for root in self._import_roots],
        )

    def sample(self) -> HostSample:
        """One telemetry sample; cheap enough for every heartbeat."""
        now = time.time()
        load1, load5, load15 = psutil.getloadavg()
        mem = psutil.virtual_memory()
        swap = psutil.swap_memory()
        rx_bps, tx_bps = self._net_rate()
        return HostSample(
            ts=now,
            cpu_percent=min(max(psutil.cpu_percent(interval=None), 0.0), 100.0),
            load1=load1,
            load5=load5,
            load15=load15,
            mem_total=mem.total,
            mem_used=mem.used,
            mem_available=mem.available,
            swap_total=swap.total,
            swap_used=swap.used,
            disks=self._disks(),
            net_rx_bps=rx_bps,
            net_tx_bps=tx_bps,
            uptime_s=max(now - self._boot_time, 0.0),
        )

    def _disks(self) -> list[DiskUsage]:
        paths: list[tuple[Path, _Role]] = [(self._data_dir, "data")]
        paths += [(root, "dataset_root") for root in self._dataset_roots]
        return [disk for path, role in paths if (disk := _disk(path, role)) is not None]

    def _net_rate(self) -> tuple[float, float]:
        """Bytes per second since the previous sample; 0 on the first one."""
        stamp = time.monotonic()
        rx, tx = _net_bytes()
        prev, self._prev_net = self._prev_net, (stamp, rx, tx)
        if prev is None:
            return 0.0, 0.0
        elapsed = stamp - prev[0]
        if elapsed <= 0:
            return 0.0, 0.0
        # An interface that went away makes the sum drop; report 0, never a negative rate.
        return max(rx - prev[1], 0) / elapsed, max(tx - prev[2], 0) / elapsed
