"""HostCollector against the real host (no psutil mocks): facts and samples are sane."""

from __future__ import annotations

import os
import platform
import socket
import time
from pathlib import Path

import msgspec
import psutil
import pytest

from agent.collectors import HostCollector
from mlsm.wire.agent import HostSample, NodeInfo


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "agent-data"
    path.mkdir()
    return path


def _roundtrip(struct: msgspec.Struct, kind: type) -> object:
    """Encode and decode as the master does, so the wire's bounds are checked too."""
    return msgspec.msgpack.decode(msgspec.msgpack.encode(struct), type=kind)


def test_info_describes_this_host(data_dir: Path) -> None:
    info = HostCollector(data_dir, [data_dir / "datasets"]).info()

    assert info.hostname == socket.gethostname()
    assert info.os
    assert info.kernel == platform.release()
    assert info.arch == platform.machine()
    assert info.cpu_model
    assert info.cpu_cores == psutil.cpu_count(logical=True)
    assert 0 < info.cpu_physical <= info.cpu_cores
    assert info.mem_total == psutil.virtual_memory().total
    assert info.python == platform.python_version()
    assert info.runs_as_root == (os.geteuid() == 0)
    assert info.dataset_roots == [str(data_dir / "datasets")]
    assert _roundtrip(info, NodeInfo) == info


def test_info_os_is_pretty_name_from_os_release(data_dir: Path) -> None:
    try:
        expected = platform.freedesktop_os_release()["PRETTY_NAME"]
    except (OSError, KeyError):
        pytest.skip("this host has no /etc/os-release PRETTY_NAME to compare with")
    assert HostCollector(data_dir).info().os == expected


def test_sample_fields_are_sane(data_dir: Path) -> None:
    collector = HostCollector(data_dir)
    before = time.time()
    sample = collector.sample()

    assert before <= sample.ts <= time.time()
    assert 0.0 <= sample.cpu_percent <= 100.0
    assert min(sample.load1, sample.load5, sample.load15) >= 0.0
    assert sample.mem_total == psutil.virtual_memory().total
    assert 0 < sample.mem_used <= sample.mem_total
    assert 0 < sample.mem_available <= sample.mem_total
    assert 0 <= sample.swap_used <= sample.swap_total or sample.swap_total == 0
    expected_uptime = time.time() - psutil.boot_time()
    assert abs(sample.uptime_s - expected_uptime) < 5.0
    assert _roundtrip(sample, HostSample) == sample


def test_disks_report_data_dir_and_existing_dataset_roots(data_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    root.mkdir()
    missing = tmp_path / "not-yet"
    disks = HostCollector(data_dir, [root, missing]).sample().disks

    assert [(d.path, d.role) for d in disks] == [
        (str(data_dir), "data"),
        (str(root), "dataset_root"),
    ]
    expected = psutil.disk_usage(str(data_dir))
    assert disks[0].total == expected.total
    for disk in disks:
        assert disk.total > 0
        assert disk.used + disk.free <= disk.total


def test_missing_data_dir_is_skipped_not_raised(tmp_path: Path) -> None:
    disks = HostCollector(tmp_path / "gone", [tmp_path]).sample().disks
    assert [d.role for d in disks] == ["dataset_root"]


def test_dataset_root_appearing_later_is_reported(data_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "later"
    collector = HostCollector(data_dir, [root])
    assert [d.role for d in collector.sample().disks] == ["data"]
    root.mkdir()
    assert [d.role for d in collector.sample().disks] == ["data", "dataset_root"]


def test_net_rate_is_zero_first_then_non_negative(data_dir: Path) -> None:
    collector = HostCollector(data_dir)
    first = collector.sample()
    assert (first.net_rx_bps, first.net_tx_bps) == (0.0, 0.0)
    for _ in range(3):
        later = collector.sample()
        assert later.net_rx_bps >= 0.0
        assert later.net_tx_bps >= 0.0
