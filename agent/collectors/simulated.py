"""SIMULATED GPUs, for tests and demos only: nothing here reads real hardware.

``mlsm agent --simulate-gpus SPEC`` makes the agent report made-up GPUs, so the scheduler,
the dashboard and the integration tests can be run on a laptop. Every sample says
``simulated=True`` and every name starts with "Simulated", so a simulated GPU is never
mistaken for a real one.

Spec: comma-separated ``COUNTxMODEL[-MEMGB]`` items, e.g. ``4xA100-80GB``,
``2xH100-80GB,1xRTX4090-24GB`` or ``1xA100``. Known models (:data:`MODELS`) bring their
memory and power figures; any other model name needs its memory, e.g. ``1xMYGPU-24GB``.

Behaviour: values move smoothly, one step per ``sample()`` call (no clock, no sleeps, so a
test gets the same curve however fast it samples). An idle GPU hovers at low utilisation,
temperature and power; after :meth:`SimulatedProbe.set_busy` (called by the agent when it
starts or stops a job on that GPU) it climbs to high utilisation, the job's memory, and
high temperature and power within a few samples. Values stay inside physical limits:
utilisation 0..100 %, memory <= total, power <= the model's limit.

Control file (JSON, re-read only when its mtime, size or inode changes) injects what a real
lab has and a test machine lacks::

    {"foreign": [{"index": 0, "pid": 4242, "user": "bob", "used_mem": 2000000000,
                  "name": "python", "util": 30}],
     "fail": [1], "util": {"0": 3}}

``foreign``: processes mlsm did not start; they are listed on that GPU and their memory (and
optional ``util`` %) count as used. ``fail``: GPU indices that report
``error="simulated failure"`` instead of readings. ``util``: GPU index -> the utilisation
(%) that GPU settles at whether or not a job runs on it (a job that holds its GPU but does
no work, for the idle-GPU policy's tests). A missing file means no injection; an
unreadable one is logged and ignored until it changes again.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import msgspec
import psutil

from agent.collectors.probe import ProbeKind
from mlsm.wire.agent import GpuProcess, GpuSample

log = logging.getLogger(__name__)

GIB = 1 << 30
MAX_SIMULATED_GPUS = 64
MAX_SIMULATED_MEM_GB = 1024
FAILURE_MESSAGE = "simulated failure"


@dataclass(frozen=True)
class GpuModel:
    """Figures of a simulated model: memory (GiB), power limit and idle power (W)."""

    mem_gb: int
    power_limit_w: float
    idle_power_w: float


#: Common lab GPUs; the memory of a model offered in several sizes is its largest.
MODELS: dict[str, GpuModel] = {
    "A100": GpuModel(80, 400.0, 55.0),
    "H100": GpuModel(80, 700.0, 70.0),
    "H200": GpuModel(141, 700.0, 75.0),
    "B200": GpuModel(180, 1000.0, 120.0),
    "V100": GpuModel(32, 300.0, 40.0),
    "A10": GpuModel(24, 150.0, 20.0),
    "A30": GpuModel(24, 165.0, 30.0),
    "A40": GpuModel(48, 300.0, 30.0),
    "A6000": GpuModel(48, 300.0, 25.0),
    "L4": GpuModel(24, 72.0, 16.0),
    "L40": GpuModel(48, 300.0, 35.0),
    "L40S": GpuModel(48, 350.0, 35.0),
    "T4": GpuModel(16, 70.0, 10.0),
    "RTX3090": GpuModel(24, 350.0, 25.0),
    "RTX4090": GpuModel(24, 450.0, 25.0),
}
#: Power figures of a model the table does not know (only its memory was given).
_UNKNOWN_POWER_LIMIT_W = 300.0
_UNKNOWN_IDLE_POWER_W = 30.0

_ITEM = re.compile(r"^(\d+)\s*[xX]\s*([A-Za-z0-9]+)(?:-(\d+)\s*[gG][iI]?[bB])?$")

# Model of a GPU's state; each sample moves the state this fraction of the way to its target.
_UTIL_RESPONSE = 0.5
_MEM_RESPONSE = 0.7  # jobs allocate their memory early and all at once
_TEMP_RESPONSE = 0.2  # thermal inertia: temperature lags utilisation
_POWER_RESPONSE = 0.5
_IDLE_UTIL = 1.0  # %
_BUSY_UTIL = 95.0  # %
_UTIL_NOISE = 1.5  # % standard deviation per sample
_MEM_UTIL_PER_UTIL = 0.45  # memory-controller load follows SM load
_IDLE_MEM_FRACTION = 0.002  # driver context of an idle GPU
_DEFAULT_BUSY_MEM_FRACTION = 0.8  # a job's memory when the agent does not say
_AMBIENT_C = 30.0
_BUSY_C = 74.0
_MAX_C = 90.0
_TEMP_NOISE = 0.3
_BUSY_POWER_FRACTION = 0.9  # of the power limit at full utilisation
_POWER_NOISE_FRACTION = 0.01  # of the power limit
_PCT_MAX = 100.0


def parse_spec(spec: str) -> list[tuple[str, int, GpuModel]]:
    """``"2xA100-80GB,1xT4"`` -> one ``(model, mem_bytes, figures)`` per GPU.

    Raises ``ValueError`` with a message fit to show the user.
    """
    gpus: list[tuple[str, int, GpuModel]] = []
    items = [item.strip() for item in spec.split(",")]
    if not spec.strip() or not all(items):
        raise ValueError(f"empty GPU spec in {spec!r}: expected e.g. 2xA100-80GB,1xT4")
    for item in items:
        match = _ITEM.match(item)
        if match is None:
            raise ValueError(
                f"bad GPU spec {item!r}: expected COUNTxMODEL[-MEMGB], e.g. 2xA100-80GB"
            )
        count, model, mem_gb = int(match[1]), match[2].upper(), match[3]
        known = MODELS.get(model)
        if mem_gb is None and known is None:
            raise ValueError(
                f"unknown GPU model {match[2]!r} in {item!r}: give its memory, e.g. "
                f"1x{match[2]}-24GB (known models: {', '.join(MODELS)})"
            )
        figures = known or GpuModel(0, _UNKNOWN_POWER_LIMIT_W, _UNKNOWN_IDLE_POWER_W)
        gb = int(mem_gb) if mem_gb is not None else figures.mem_gb
        if not 1 <= gb <= MAX_SIMULATED_MEM_GB:
            raise ValueError(f"GPU memory in {item!r} must be 1..{MAX_SIMULATED_MEM_GB} GB")
        if count < 1:
            raise ValueError(f"GPU count in {item!r} must be at least 1")
        gpus += [(f"{model}-{gb}GB", gb * GIB, figures)] * count
    if len(gpus) > MAX_SIMULATED_GPUS:
        raise ValueError(
            f"GPU spec {spec!r} asks for {len(gpus)} GPUs; at most {MAX_SIMULATED_GPUS}"
        )
    return gpus


# ------------------------------------------------------------------ control file
class _Foreign(msgspec.Struct, forbid_unknown_fields=True):
    index: int
    pid: int
    user: str = ""
    used_mem: int = 0
    name: str = ""
    util: float = 0.0


class _Control(msgspec.Struct, forbid_unknown_fields=True):
    foreign: list[_Foreign] = []
    fail: list[int] = []
    util: dict[int, float] = {}


_decode_control = msgspec.json.Decoder(_Control).decode


class _ControlFile:
    """The injected state, re-read only when the file changed (one ``stat`` per sample)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._key: tuple[int, int, int] | None = None
        self._state = _Control()

    def current(self) -> _Control:
        if self._path is None:
            return self._state
        try:
            st = self._path.stat()
        except OSError:  # no file (any more): nothing injected
            self._key, self._state = None, _Control()
            return self._state
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key != self._key:
            self._key = key
            try:
                self._state = _decode_control(self._path.read_bytes())
            except (OSError, msgspec.DecodeError) as err:
                log.warning("ignoring simulated-GPU control file %s: %s", self._path, err)
        return self._state


# ------------------------------------------------------------------ one GPU
def _approach(value: float, target: float, response: float) -> float:
    return value + (target - value) * response


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


class _SimGpu:
    """The smooth state of one simulated GPU."""

    def __init__(self, index: int, label: str, mem_total: int, figures: GpuModel, tag: str):
        self.index = index
        self.name = f"Simulated {label}"
        self.uuid = f"GPU-sim-{tag}-{index}"
        # Spread like a real multi-GPU board: a few buses apart, then a new PCI domain.
        self.bus_id = f"{index // 16:08X}:{0x07 + 0x10 * (index % 16):02X}:00.0"
        self.mem_total = mem_total
        self.power_limit_w = figures.power_limit_w
        self.idle_power_w = figures.idle_power_w
        self.busy = False
        self.busy_mem = 0
        self.busy_pid: int | None = None
        self.util = _IDLE_UTIL
        self.mem_used = _IDLE_MEM_FRACTION * mem_total
        self.temperature = _AMBIENT_C
        self.power_w = figures.idle_power_w

    def step(self, rng: random.Random, foreign_util: float, pinned: float | None = None) -> None:
        target_util = max(_BUSY_UTIL if self.busy else _IDLE_UTIL, foreign_util)
        if pinned is not None:
            target_util = _clamp(pinned, 0.0, _PCT_MAX)
        self.util = _clamp(
            _approach(self.util, target_util, _UTIL_RESPONSE) + rng.gauss(0, _UTIL_NOISE),
            0.0,
            _PCT_MAX,
        )
        idle_mem = _IDLE_MEM_FRACTION * self.mem_total
        target_mem = max(self.busy_mem, idle_mem) if self.busy else idle_mem
        self.mem_used = _clamp(
            _approach(self.mem_used, target_mem, _MEM_RESPONSE), 0, self.mem_total
        )
        target_c = _AMBIENT_C + (_BUSY_C - _AMBIENT_C) * self.util / _PCT_MAX
        self.temperature = _clamp(
            _approach(self.temperature, target_c, _TEMP_RESPONSE) + rng.gauss(0, _TEMP_NOISE),
            _AMBIENT_C - 5.0,
            _MAX_C,
        )
        busy_w = _BUSY_POWER_FRACTION * self.power_limit_w
        target_w = self.idle_power_w + (busy_w - self.idle_power_w) * self.util / _PCT_MAX
        noise_w = rng.gauss(0, _POWER_NOISE_FRACTION * self.power_limit_w)
        self.power_w = _clamp(
            _approach(self.power_w, target_w, _POWER_RESPONSE) + noise_w, 0.0, self.power_limit_w
        )

    def reading(self, foreign: list[_Foreign]) -> GpuSample:
        processes = [
            GpuProcess(pid=f.pid, used_mem=max(f.used_mem, 0), user=f.user, name=f.name)
            for f in foreign
        ]
        if self.busy and self.busy_pid is not None:
            user, name = _owner(self.busy_pid)
            own = GpuProcess(pid=self.busy_pid, used_mem=int(self.mem_used), user=user, name=name)
            processes.insert(0, own)
        used = int(self.mem_used) + sum(p.used_mem for p in processes if p.pid != self.busy_pid)
        return GpuSample(
            index=self.index,
            uuid=self.uuid,
            name=self.name,
            bus_id=self.bus_id,
            mem_total=self.mem_total,
            mem_used=min(used, self.mem_total),
            util=round(self.util, 1),
            mem_util=round(_clamp(self.util * _MEM_UTIL_PER_UTIL, 0.0, _PCT_MAX), 1),
            temperature=round(self.temperature, 1),
            power_w=round(self.power_w, 1),
            power_limit_w=self.power_limit_w,
            ecc_errors=0,
            processes=processes,
            simulated=True,
        )

    def failed(self) -> GpuSample:
        return GpuSample(
            index=self.index,
            uuid=self.uuid,
            name=self.name,
            bus_id=self.bus_id,
            error=FAILURE_MESSAGE,
            simulated=True,
        )


def _owner(pid: int) -> tuple[str, str]:
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            return proc.username(), proc.name()
    except (psutil.Error, OSError):
        return "", ""


# ------------------------------------------------------------------ the probe
class SimulatedProbe:
    """Made-up GPUs for tests and demos (see the module docstring).

    ``identity`` feeds the stable UUIDs and the noise seed; it defaults to the host name,
    so two agents simulating on one host should pass their node names.
    """

    kind: ProbeKind = "simulated"

    def __init__(
        self, spec: str, control_file: Path | None = None, *, identity: str | None = None
    ) -> None:
        tag = hashlib.sha256((identity or socket.gethostname()).encode()).hexdigest()[:8]
        self._gpus = [
            _SimGpu(index, label, mem, figures, tag)
            for index, (label, mem, figures) in enumerate(parse_spec(spec))
        ]
        self._rng = random.Random(tag)  # same host, same curves: repeatable demos
        self._control = _ControlFile(control_file)
        self._lock = threading.Lock()  # set_busy comes from the event loop, sample from a thread

    def describe(self) -> dict[str, str]:
        return {"driver_version": "simulated", "cuda_version": ""}

    def set_busy(
        self, index: int, busy: bool, mem_bytes: int | None = None, *, pid: int | None = None
    ) -> None:
        """Mark GPU ``index`` as running (or no longer running) a job of ``mem_bytes``.

        ``pid``, when given, is listed as the GPU's process, like NVML lists a job's.
        """
        if not 0 <= index < len(self._gpus):
            raise IndexError(f"no simulated GPU {index} (there are {len(self._gpus)})")
        gpu = self._gpus[index]
        with self._lock:
            gpu.busy = busy
            if mem_bytes is None:
                mem_bytes = int(_DEFAULT_BUSY_MEM_FRACTION * gpu.mem_total)
            gpu.busy_mem = min(max(mem_bytes, 0), gpu.mem_total) if busy else 0
            gpu.busy_pid = pid if busy else None

    def sample(self) -> list[GpuSample]:
        control = self._control.current()
        fail = set(control.fail)
        samples = []
        with self._lock:
            for gpu in self._gpus:
                foreign = [f for f in control.foreign if f.index == gpu.index]
                gpu.step(
                    self._rng,
                    max((f.util for f in foreign), default=0.0),
                    control.util.get(gpu.index),
                )
                samples.append(gpu.failed() if gpu.index in fail else gpu.reading(foreign))
        return samples

    def close(self) -> None:
        return None
