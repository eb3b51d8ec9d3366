"""GPU probes: the simulated probe, the no-GPU path, the async sampler, and NvmlProbe.

NvmlProbe's error handling is exercised against a stand-in NVML module (``FakeNvml``, a
test double) because a healthy GPU never fails on cue; the real driver is exercised by the
``gpu``-marked tests, which skip with the reason when NVML cannot start here.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import psutil
import pynvml
import pytest

from agent.collectors import (
    AsyncGpuSampler,
    GpuProbeUnavailable,
    NoGpuProbe,
    NvmlProbe,
    ProbeKind,
    SimulatedProbe,
    make_probe,
)
from agent.collectors.sampler import PROBE_THREAD_NAME, TIMED_OUT
from agent.collectors.simulated import GIB, parse_spec
from mlsm.wire.agent import GpuSample
from tests.support.wait import wait_until_async

DEADLINE_S = 10.0  # generous bound for conditions polled in these tests
SHORT_TIMEOUT_S = 0.2  # sampler timeout for the hanging-probe tests
#: A sample that takes this long past its timeout hangs (a busy 2-core CI only delays it).
HANG_S = DEADLINE_S


def _nvml_error() -> pynvml.NVMLError | None:
    """Why NVML cannot start here, or ``None`` when it can."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        return err
    pynvml.nvmlShutdown()
    return None


def _valid(sample: GpuSample) -> GpuSample:
    """Round-trip through MessagePack so the wire's bounds (Pct, NonNeg ...) are checked."""
    return msgspec.msgpack.decode(msgspec.msgpack.encode(sample), type=GpuSample)


# ------------------------------------------------------------------ spec parsing
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("4xA100-80GB", [("A100-80GB", 80)] * 4),
        ("2xH100-80GB,1xRTX4090-24GB", [("H100-80GB", 80)] * 2 + [("RTX4090-24GB", 24)]),
        ("1xA100", [("A100-80GB", 80)]),
        ("1xa100-40gb", [("A100-40GB", 40)]),
        ("1xMYGPU-12GB", [("MYGPU-12GB", 12)]),
        (" 2 x T4 , 1xL4 ", [("T4-16GB", 16)] * 2 + [("L4-24GB", 24)]),
    ],
)
def test_parse_spec_accepts_good_specs(spec: str, expected: list[tuple[str, int]]) -> None:
    assert [(label, mem // GIB) for label, mem, _ in parse_spec(spec)] == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty GPU spec"),
        ("2xA100,,1xT4", "empty GPU spec"),
        ("A100", "expected COUNTxMODEL"),
        ("2xA100-80", "expected COUNTxMODEL"),
        ("2xFOO", "unknown GPU model 'FOO'"),
        ("0xA100", "at least 1"),
        ("1xA100-0GB", "must be 1.."),
        ("65xA100", "at most 64"),
    ],
)
def test_parse_spec_rejects_bad_specs_readably(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        SimulatedProbe(spec)


# ------------------------------------------------------------------ simulated probe
def test_simulated_gpus_are_labelled_and_identified() -> None:
    samples = SimulatedProbe("2xA100-80GB,1xRTX4090-24GB", identity="node-a").sample()

    assert [s.index for s in samples] == [0, 1, 2]
    assert all(s.simulated for s in samples)
    assert [s.name for s in samples] == ["Simulated A100-80GB"] * 2 + ["Simulated RTX4090-24GB"]
    assert [s.mem_total for s in samples] == [80 * GIB, 80 * GIB, 24 * GIB]
    assert all(re.fullmatch(r"GPU-sim-[0-9a-f]{8}-\d+", s.uuid) for s in samples)
    assert all(re.fullmatch(r"[0-9A-F]{8}:[0-9A-F]{2}:00\.0", s.bus_id) for s in samples)
    assert len({s.uuid for s in samples}) == len({s.bus_id for s in samples}) == 3


def test_simulated_uuids_are_stable_per_identity() -> None:
    def uuids(identity: str) -> list[str]:
        return [s.uuid for s in SimulatedProbe("2xT4", identity=identity).sample()]

    assert uuids("node-a") == uuids("node-a")
    assert uuids("node-a") != uuids("node-b")


def test_simulated_describe_says_simulated() -> None:
    assert SimulatedProbe("1xT4").describe()["driver_version"] == "simulated"


def test_simulated_values_stay_within_physical_bounds() -> None:
    probe = SimulatedProbe("3xA100-80GB,1xT4")
    for step in range(600):
        if step % 50 == 0:  # toggle load now and then, with odd memory asks
            probe.set_busy(step // 50 % 4, busy=step % 100 == 0, mem_bytes=10**15)
        for sample in probe.sample():
            _valid(sample)
            assert 0.0 <= sample.util <= 100.0
            assert 0.0 <= sample.mem_util <= 100.0
            assert 0 <= sample.mem_used <= sample.mem_total
            assert 0.0 <= sample.power_w <= sample.power_limit_w
            assert 20.0 <= sample.temperature <= 90.0


def test_idle_simulated_gpu_hovers_low() -> None:
    probe = SimulatedProbe("1xH100-80GB")
    samples = [probe.sample()[0] for _ in range(100)]
    assert max(s.util for s in samples) < 10.0
    assert max(s.mem_used for s in samples) < 0.05 * samples[0].mem_total
    assert max(s.power_w for s in samples) < 0.3 * samples[0].power_limit_w
    assert max(s.temperature for s in samples) < 45.0


def test_set_busy_raises_util_memory_and_power_then_falls_back() -> None:
    probe = SimulatedProbe("2xA100-80GB")
    idle = probe.sample()[0]
    probe.set_busy(0, True, mem_bytes=40 * GIB)
    busy = [probe.sample() for _ in range(5)][-1]

    assert busy[0].util > 80.0
    assert 0.9 * 40 * GIB <= busy[0].mem_used <= 40 * GIB
    assert busy[0].power_w > 2 * idle.power_w
    assert busy[0].temperature > idle.temperature
    assert busy[1].util < 10.0  # the other GPU stays idle

    probe.set_busy(0, False)
    after = [probe.sample()[0] for _ in range(10)][-1]
    assert after.util < 10.0
    assert after.mem_used < GIB


def test_set_busy_without_memory_uses_most_of_the_gpu() -> None:
    probe = SimulatedProbe("1xT4")
    probe.set_busy(0, True)
    sample = [probe.sample()[0] for _ in range(8)][-1]
    assert sample.mem_used > 0.5 * sample.mem_total


def test_set_busy_with_pid_lists_that_process() -> None:
    probe = SimulatedProbe("1xA100")
    probe.set_busy(0, True, mem_bytes=8 * GIB, pid=os.getpid())
    (proc,) = probe.sample()[0].processes
    me = psutil.Process()
    assert (proc.pid, proc.user, proc.name) == (os.getpid(), me.username(), me.name())
    assert 0 < proc.used_mem <= 8 * GIB


def test_set_busy_rejects_unknown_index() -> None:
    with pytest.raises(IndexError, match="no simulated GPU 2"):
        SimulatedProbe("2xT4").set_busy(2, True)


# ------------------------------------------------------------------ control file
def _write_control(path: Path, content: dict[str, Any], mtime_ns: int | None = None) -> None:
    path.write_text(json.dumps(content))
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


FOREIGN = {"index": 0, "pid": 4242, "user": "bob", "used_mem": 2_000_000_000, "name": "python"}


def test_control_file_injects_foreign_process_and_failure(tmp_path: Path) -> None:
    control = tmp_path / "control.json"
    _write_control(control, {"foreign": [FOREIGN], "fail": [1]})
    probe = SimulatedProbe("3xA100-80GB", control)
    baseline = SimulatedProbe("3xA100-80GB").sample()[0].mem_used

    gpu0, gpu1, gpu2 = probe.sample()
    (proc,) = gpu0.processes
    assert (proc.pid, proc.user, proc.name, proc.used_mem) == (4242, "bob", "python", 2 * 10**9)
    assert gpu0.mem_used >= baseline + 2 * 10**9
    assert gpu1.error == "simulated failure"
    assert gpu1.simulated and gpu1.uuid
    assert gpu2.error is None and gpu2.processes == []


def test_control_file_pins_a_gpus_utilisation_even_under_a_job(tmp_path: Path) -> None:
    """A job that holds its GPU and does no work (the idle-GPU policy's tests)."""
    control = tmp_path / "control.json"
    _write_control(control, {"util": {"0": 2}})
    probe = SimulatedProbe("2xA100-80GB", control)
    probe.set_busy(0, True)
    probe.set_busy(1, True)
    for _ in range(20):
        pinned, free = probe.sample()
    assert pinned.util < 10.0  # the job's GPU sits near 2 %
    assert free.util > 80.0  # the other job's GPU works as before


def test_control_file_is_reread_only_when_it_changes(tmp_path: Path) -> None:
    control = tmp_path / "control.json"
    _write_control(control, {"fail": [0]}, mtime_ns=1_000_000_000_000_000_000)
    probe = SimulatedProbe("2xT4", control)
    assert [s.error for s in probe.sample()] == ["simulated failure", None]

    # Same size, same mtime: not read again, the old injection stays.
    _write_control(control, {"fail": [1]}, mtime_ns=1_000_000_000_000_000_000)
    assert [s.error for s in probe.sample()] == ["simulated failure", None]

    os.utime(control, ns=(1_000_000_001_000_000_000,) * 2)
    assert [s.error for s in probe.sample()] == [None, "simulated failure"]

    control.unlink()
    assert [s.error for s in probe.sample()] == [None, None]


def test_unreadable_control_file_is_ignored(tmp_path: Path) -> None:
    control = tmp_path / "control.json"
    control.write_text("{not json")
    samples = SimulatedProbe("1xT4", control).sample()
    assert samples[0].error is None


# ------------------------------------------------------------------ make_probe / none
def test_make_probe_without_driver_gives_none_probe_with_reason() -> None:
    error = _nvml_error()
    if error is None:
        pytest.skip("a real NVIDIA driver is present here; the no-GPU path cannot be seen")
    probe, reason = make_probe("")
    assert isinstance(probe, NoGpuProbe)
    assert probe.kind == "none"
    assert reason is not None and reason == probe.reason
    if isinstance(error, pynvml.NVMLError_LibraryNotFound):
        assert reason == "NVIDIA driver not found (libnvidia-ml.so.1 missing)"
    assert probe.sample() == []


def test_make_probe_simulate_wins() -> None:
    probe, reason = make_probe("2xA100-80GB")
    assert isinstance(probe, SimulatedProbe)
    assert probe.kind == "simulated"
    assert reason is None
    assert len(probe.sample()) == 2


def test_make_probe_bad_simulate_spec_raises() -> None:
    with pytest.raises(ValueError, match="bad GPU spec"):
        make_probe("lots of GPUs")


# ------------------------------------------------------------------ AsyncGpuSampler
class HangingProbe:
    """TEST DOUBLE: answers once, then blocks in sample() until ``release`` is set."""

    kind: ProbeKind = "simulated"

    def __init__(self, hang_after: int = 0) -> None:
        self.release = threading.Event()
        self.calls = 0
        self._hang_after = hang_after

    def describe(self) -> dict[str, str]:
        return {}

    def sample(self) -> list[GpuSample]:
        self.calls += 1
        if self.calls > self._hang_after:
            self.release.wait()
        return [GpuSample(index=0, uuid="GPU-test", util=float(self.calls))]

    def close(self) -> None:
        return None


class RaisingProbe(HangingProbe):
    """TEST DOUBLE: a probe whose driver call fails."""

    def sample(self) -> list[GpuSample]:
        raise RuntimeError("driver exploded")


def _probe_threads() -> int:
    return sum(t.name == PROBE_THREAD_NAME for t in threading.enumerate())


async def test_sampler_returns_probe_samples() -> None:
    samples, error = await AsyncGpuSampler(SimulatedProbe("2xT4")).sample()
    assert error is None
    assert len(samples) == 2


async def test_hanging_probe_times_out_without_piling_up_threads() -> None:
    probe = HangingProbe()
    sampler = AsyncGpuSampler(probe, timeout_s=SHORT_TIMEOUT_S)
    threads_before = _probe_threads()  # a released probe of an earlier test may still exit
    try:
        for _ in range(3):
            started = time.monotonic()
            samples, error = await sampler.sample()
            assert time.monotonic() - started < SHORT_TIMEOUT_S + HANG_S
            assert (samples, error) == ([], TIMED_OUT)
        assert probe.calls == 1
        assert _probe_threads() - threads_before <= 1
        assert sampler.in_flight
    finally:
        probe.release.set()

    async def answered() -> list[GpuSample] | None:
        samples, error = await sampler.sample()
        return samples if error is None else None

    samples = await wait_until_async(
        answered, DEADLINE_S, "a sample once the probe is released", poll_s=0
    )
    assert samples[0].uuid == "GPU-test"


async def test_timed_out_sample_repeats_last_good_marked_stale() -> None:
    probe = HangingProbe(hang_after=1)
    sampler = AsyncGpuSampler(probe, timeout_s=SHORT_TIMEOUT_S)
    try:
        good, error = await sampler.sample()
        assert error is None
        stale, error = await sampler.sample()
        assert error == TIMED_OUT
        assert [(s.uuid, s.util, s.error) for s in stale] == [("GPU-test", 1.0, TIMED_OUT)]
        assert good[0].error is None  # the earlier answer was not changed in place
    finally:
        probe.release.set()


async def test_hanging_probe_does_not_block_the_event_loop() -> None:
    probe = HangingProbe()
    sampler = AsyncGpuSampler(probe, timeout_s=SHORT_TIMEOUT_S)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        await sampler.sample()
        assert ticks > 1
    finally:
        task.cancel()
        probe.release.set()


async def test_raising_probe_becomes_error_string() -> None:
    samples, error = await AsyncGpuSampler(RaisingProbe()).sample()
    assert samples == []
    assert error is not None and "driver exploded" in error


# ------------------------------------------------------------------ NvmlProbe, stand-in NVML
class FakeNvml:
    """TEST DOUBLE for the ``pynvml`` module: GPUs whose calls fail on cue.

    ``gpus`` holds one dict per GPU; ``fail`` maps a call name to the NVML error it raises.
    Constants and error classes still come from the real ``pynvml``.
    """

    def __init__(self, gpus: list[dict[str, Any]], init_error: Exception | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.shutdowns = 0

    def _call(self, handle: int, what: str, value: Any) -> Any:
        error = self.gpus[handle].get("fail", {}).get(what)
        if error is not None:
            raise error
        return value

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        return 12040

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return self._call(index, "handle", index)

    def nvmlDeviceGetName(self, h: int) -> str:
        return self._call(h, "name", "NVIDIA A100-SXM4-80GB")

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return self._call(h, "uuid", f"GPU-0000000{h}-fake")

    def nvmlDeviceGetPciInfo(self, h: int) -> Any:
        return self._call(h, "pci", SimpleNamespace(busId=f"00000000:0{h}:00.0".encode()))

    def nvmlDeviceGetMemoryInfo(self, h: int, version: int | None = None) -> Any:
        return self._call(h, "memory", SimpleNamespace(total=80 * GIB, used=GIB, free=79 * GIB))

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return self._call(h, "util", SimpleNamespace(gpu=42, memory=17))

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        return self._call(h, "temperature", 55)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return self._call(h, "power", 123_456)

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        return self._call(h, "power_limit", 400_000)

    def nvmlDeviceGetTotalEccErrors(self, h: int, error_type: int, counter: int) -> int:
        return self._call(h, "ecc", 0)

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[Any]:
        return self._call(h, "compute", self.gpus[h].get("compute", []))

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: int) -> list[Any]:
        return self._call(h, "graphics", self.gpus[h].get("graphics", []))


def _proc(pid: int, used: int | None) -> SimpleNamespace:
    return SimpleNamespace(pid=pid, usedGpuMemory=used)


def test_nvml_probe_reads_every_field() -> None:
    probe = NvmlProbe(nvml=FakeNvml([{}]))
    (gpu,) = probe.sample()
    assert _valid(gpu) == gpu
    assert (gpu.index, gpu.name, gpu.uuid, gpu.bus_id) == (
        0,
        "NVIDIA A100-SXM4-80GB",
        "GPU-00000000-fake",
        "00000000:00:00.0",
    )
    assert (gpu.mem_total, gpu.mem_used, gpu.util, gpu.mem_util) == (80 * GIB, GIB, 42.0, 17.0)
    assert (gpu.temperature, gpu.power_w, gpu.power_limit_w) == (55.0, 123.456, 400.0)
    assert gpu.ecc_errors == 0
    assert gpu.error is None
    assert not gpu.simulated
    assert probe.describe() == {"driver_version": "550.54.15", "cuda_version": "12.4"}


def test_nvml_one_failing_call_sets_error_and_keeps_the_rest() -> None:
    broken = {"fail": {"power": pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)}}
    gpu0, gpu1 = NvmlProbe(nvml=FakeNvml([broken, {}])).sample()
    assert gpu0.error is not None and gpu0.error.startswith("power:")
    assert gpu0.power_w == 0.0
    assert (gpu0.temperature, gpu0.util, gpu0.mem_total) == (55.0, 42.0, 80 * GIB)
    assert gpu1.error is None and gpu1.power_w > 0


def test_nvml_not_supported_leaves_field_empty_without_error() -> None:
    fails = {"ecc": pynvml.NVMLError_NotSupported(), "util": pynvml.NVMLError_NotSupported()}
    (gpu,) = NvmlProbe(nvml=FakeNvml([{"fail": fails}])).sample()
    assert gpu.ecc_errors is None
    assert gpu.util == 0.0
    assert gpu.error is None


@pytest.mark.parametrize("call", ["handle", "temperature"])
def test_nvml_lost_gpu_is_an_error_entry_with_its_index(call: str) -> None:
    lost = {"fail": {call: pynvml.NVMLError_GpuIsLost()}}
    gpu0, gpu1 = NvmlProbe(nvml=FakeNvml([{}, lost])).sample()
    assert gpu0.error is None
    assert gpu1.index == 1
    assert gpu1.error == f"GPU is lost (while reading {call})"
    assert gpu1.mem_total == 0 and gpu1.processes == []


def test_nvml_processes_merge_compute_and_graphics_with_owners() -> None:
    me, invisible = os.getpid(), 2**22 + 12345  # above pid_max: never a visible process
    gpus = [{"compute": [_proc(me, 3 * GIB), _proc(invisible, None)], "graphics": [_proc(me, GIB)]}]
    (gpu,) = NvmlProbe(nvml=FakeNvml(gpus)).sample()
    this = psutil.Process()
    assert [(p.pid, p.used_mem, p.user, p.name) for p in gpu.processes] == [
        (me, 3 * GIB, this.username(), this.name()),
        (invisible, 0, "", ""),
    ]


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (pynvml.NVMLError_LibraryNotFound(), "NVIDIA driver not found"),
        (pynvml.NVMLError_DriverNotLoaded(), "NVIDIA driver not loaded"),
        (pynvml.NVMLError_NoPermission(), "no permission"),
    ],
)
def test_nvml_init_failure_is_unavailable_with_reason(error: Exception, reason: str) -> None:
    with pytest.raises(GpuProbeUnavailable, match=reason):
        NvmlProbe(nvml=FakeNvml([{}], init_error=error))


def test_nvml_without_gpus_is_unavailable_and_shuts_down() -> None:
    fake = FakeNvml([])
    with pytest.raises(GpuProbeUnavailable, match="no GPUs"):
        NvmlProbe(nvml=fake)
    assert fake.shutdowns == 1


def test_nvml_close_is_idempotent_and_stops_sampling() -> None:
    fake = FakeNvml([{}])
    probe = NvmlProbe(nvml=fake)
    probe.close()
    probe.close()
    assert fake.shutdowns == 1
    assert probe.sample() == []


# ------------------------------------------------------------------ NvmlProbe, real driver
@pytest.fixture
def real_nvml() -> Any:
    error = _nvml_error()
    if error is not None:
        pytest.skip(f"no usable NVIDIA driver here: {error}")
    probe = NvmlProbe()
    yield probe
    probe.close()


@pytest.mark.gpu
def test_real_nvml_samples_are_plausible(real_nvml: NvmlProbe) -> None:
    samples = real_nvml.sample()
    assert samples
    for gpu in samples:
        _valid(gpu)
        assert gpu.error is None, gpu.error
        assert gpu.name
        assert gpu.uuid.startswith("GPU-")
        assert gpu.mem_total > 0 and gpu.mem_used <= gpu.mem_total
        assert gpu.temperature > 0
        assert gpu.power_limit_w > 0


@pytest.mark.gpu
def test_real_nvml_describe_has_driver_version(real_nvml: NvmlProbe) -> None:
    facts = real_nvml.describe()
    assert facts["driver_version"]
    assert re.fullmatch(r"\d+\.\d+", facts["cuda_version"])
