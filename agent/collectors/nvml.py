"""The probe for real NVIDIA GPUs, through NVML (``nvidia-ml-py``, imported as ``pynvml``).

Reading a GPU is a dozen NVML calls, and on a real lab server any one of them can fail:
a consumer card does not support ECC counters, a container cannot see power readings, a
GPU falls off the bus. Each call is therefore wrapped on its own (:class:`_Reading`):
"not supported" just leaves that field empty, any other error is written into that GPU's
``error`` while the rest is still read, and an error after which the GPU cannot answer at
all (lost, needs a reset) ends that GPU's reading with an error entry under its index.
The other GPUs are read as usual in every case.

Process owners come from ``/proc`` through psutil. NVML reports host pids, so an agent
inside a container sees only the processes of its own pid namespace; the others are
listed with their memory but an empty ``user`` and ``name``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import psutil
import pynvml

from agent.collectors.probe import GpuProbeUnavailable, ProbeKind
from mlsm.wire.agent import GpuProcess, GpuSample

T = TypeVar("T")

_MW_PER_W = 1000.0
_PCT_MAX = 100.0
_ERROR_MAX = 4096  # the wire's LongStr bound
_SHORT_MAX = 256  # the wire's ShortStr bound
#: NVML encodes the CUDA version as 1000 * major + 10 * minor (12040 -> "12.4").
_CUDA_MAJOR_DIV = 1000
_CUDA_MINOR_DIV = 10

#: Why NVML could not start, in words a user can act on; keyed by NVML error code.
_INIT_REASONS = {
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: "NVIDIA driver not found (libnvidia-ml.so.1 missing)",
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: (
        "NVIDIA driver not loaded (the nvidia kernel module is not running)"
    ),
    pynvml.NVML_ERROR_NO_PERMISSION: (
        "no permission to use the NVIDIA driver (check access to /dev/nvidia*)"
    ),
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH: (
        "NVIDIA driver and libnvidia-ml.so versions differ (reboot or reload the driver)"
    ),
    pynvml.NVML_ERROR_FUNCTION_NOT_FOUND: "NVIDIA driver too old for this NVML library",
}

#: NVML errors after which a GPU answers nothing more: stop reading it and report it lost.
_LOST_ERRORS: tuple[type[Exception], ...] = tuple(
    getattr(pynvml, name)
    for name in (
        "NVMLError_GpuIsLost",
        "NVMLError_ResetRequired",
        "NVMLError_GpuNotFound",
        "NVMLError_Uninitialized",
    )
    if hasattr(pynvml, name)
)


def _text(value: object) -> str:
    """NVML strings come back as ``str`` or ``bytes`` depending on the binding version."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def _clamp_pct(value: float) -> float:
    return min(max(float(value), 0.0), _PCT_MAX)


def _init_reason(err: Exception) -> str:
    if isinstance(err, pynvml.NVMLError):
        reason = _INIT_REASONS.get(getattr(err, "value", None))
        if reason:
            return reason
    return f"NVML could not start: {err}"


class _Reading:
    """Runs the NVML calls for one GPU, so one failing call never spoils the others."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.lost: str | None = None

    def call(self, what: str, fn: Callable[..., T], *args: Any) -> T | None:
        """``fn(*args)``, or ``None`` when unsupported, failed (noted) or the GPU is lost."""
        if self.lost is not None:
            return None
        try:
            return fn(*args)
        except pynvml.NVMLError_NotSupported:
            return None
        except _LOST_ERRORS as err:
            self.lost = f"{err} (while reading {what})"
        except Exception as err:  # one bad call must not spoil the GPU's other readings
            self.errors.append(f"{what}: {err}")
        return None

    def error(self) -> str | None:
        if self.lost is not None:
            return self.lost[:_ERROR_MAX]
        return "; ".join(self.errors)[:_ERROR_MAX] or None


def _process_owner(pid: int) -> tuple[str, str]:
    """Unix user and name of ``pid``; empty when it is not visible from here."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            return proc.username()[:_SHORT_MAX], proc.name()[:_SHORT_MAX]
    except (psutil.Error, OSError):
        return "", ""


class NvmlProbe:
    """Reads every NVIDIA GPU of this node through NVML.

    ``nvml`` is the binding module; tests pass a stand-in to play failures a healthy GPU
    never shows. NVML is initialised once here; a node without a usable driver raises
    :class:`GpuProbeUnavailable` with the reason.
    """

    kind: ProbeKind = "nvml"

    def __init__(self, *, nvml: Any = pynvml) -> None:
        self._nvml = nvml
        self._closed = False
        try:
            nvml.nvmlInit()
        except Exception as err:  # NVMLError, or OSError from a broken library
            raise GpuProbeUnavailable(_init_reason(err)) from err
        try:
            # Fixed at start: a GPU that later falls off the bus keeps its index and is
            # reported as an error entry instead of silently shifting the others.
            self._count = int(nvml.nvmlDeviceGetCount())
        except Exception as err:
            self.close()
            raise GpuProbeUnavailable(f"NVML cannot count GPUs: {err}") from err
        if self._count == 0:
            self.close()
            raise GpuProbeUnavailable("NVIDIA driver is loaded but reports no GPUs")

    def describe(self) -> dict[str, str]:
        reading = _Reading()
        driver = reading.call("driver version", self._nvml.nvmlSystemGetDriverVersion)
        cuda = reading.call("CUDA version", self._nvml.nvmlSystemGetCudaDriverVersion_v2)
        cuda_text = ""
        if cuda:
            cuda_text = f"{cuda // _CUDA_MAJOR_DIV}.{cuda % _CUDA_MAJOR_DIV // _CUDA_MINOR_DIV}"
        return {"driver_version": _text(driver or "")[:_SHORT_MAX], "cuda_version": cuda_text}

    def sample(self) -> list[GpuSample]:
        if self._closed:
            return []
        return [self._read_gpu(index) for index in range(self._count)]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # shutting down a broken driver has nothing left to report
            return

    # ------------------------------------------------------------ one GPU
    def _read_gpu(self, index: int) -> GpuSample:
        nvml, reading = self._nvml, _Reading()
        handle = reading.call("handle", nvml.nvmlDeviceGetHandleByIndex, index)
        if handle is None:
            return GpuSample(index=index, error=reading.error() or "no NVML handle")
        name = reading.call("name", nvml.nvmlDeviceGetName, handle)
        uuid = reading.call("UUID", nvml.nvmlDeviceGetUUID, handle)
        pci = reading.call("PCI info", nvml.nvmlDeviceGetPciInfo, handle)
        mem_total, mem_used = self._memory(reading, handle)
        rates = reading.call("utilisation", nvml.nvmlDeviceGetUtilizationRates, handle)
        temperature = reading.call(
            "temperature", nvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU
        )
        power_mw = reading.call("power", nvml.nvmlDeviceGetPowerUsage, handle)
        limit_mw = reading.call("power limit", nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        ecc = reading.call(
            "ECC errors",
            nvml.nvmlDeviceGetTotalEccErrors,
            handle,
            pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
            pynvml.NVML_VOLATILE_ECC,
        )
        processes = self._processes(reading, handle)
        found = GpuSample(
            index=index,
            uuid=_text(uuid or "")[:_SHORT_MAX],
            name=_text(name or "")[:_SHORT_MAX],
            bus_id=_text(pci.busId)[:_SHORT_MAX] if pci is not None else "",
        )
        if reading.lost is not None:  # the readings taken before it went are not trusted
            return msgspec.structs.replace(found, error=reading.error())
        return msgspec.structs.replace(
            found,
            mem_total=mem_total,
            mem_used=min(mem_used, mem_total) if mem_total else mem_used,
            util=_clamp_pct(rates.gpu) if rates is not None else 0.0,
            mem_util=_clamp_pct(rates.memory) if rates is not None else 0.0,
            temperature=float(temperature or 0),
            power_w=(power_mw or 0) / _MW_PER_W,
            power_limit_w=(limit_mw or 0) / _MW_PER_W,
            ecc_errors=int(ecc) if ecc is not None else None,
            processes=processes,
            error=reading.error(),
        )

    def _memory(self, reading: _Reading, handle: object) -> tuple[int, int]:
        """Total and used bytes; v2 leaves out driver-reserved memory, as nvidia-smi does."""
        try:
            info = self._nvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
        except Exception:  # old driver or binding without v2: fall back to v1 below
            info = reading.call("memory", self._nvml.nvmlDeviceGetMemoryInfo, handle)
        if info is None:
            return 0, 0
        return int(info.total), int(info.used)

    def _processes(self, reading: _Reading, handle: object) -> list[GpuProcess]:
        """Compute and graphics processes; a pid in both lists is counted once."""
        used_by_pid: dict[int, int] = {}
        calls = (
            ("compute processes", self._nvml.nvmlDeviceGetComputeRunningProcesses),
            ("graphics processes", self._nvml.nvmlDeviceGetGraphicsRunningProcesses),
        )
        for what, fn in calls:
            for proc in reading.call(what, fn, handle) or ():
                used = int(proc.usedGpuMemory or 0)  # None where the driver cannot tell
                used_by_pid[proc.pid] = max(used_by_pid.get(proc.pid, 0), used)
        processes = []
        for pid, used in sorted(used_by_pid.items()):
            user, name = _process_owner(pid)
            processes.append(GpuProcess(pid=pid, used_mem=used, user=user, name=name))
        return processes
