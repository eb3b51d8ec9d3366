"""The catalog reporter: a full report first, deltas after, and a full one again whenever
the master may hold a stale catalog (a failed report, or it asked for one)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from agent.datasets.catalog import CatalogReporter
from agent.datasets.scan import DatasetScanner
from agent.link import MasterLink
from mlsm import errors
from mlsm.wire import agent as w


class Master:
    """The master's ``datasets`` route: keeps what it got; ``down`` plays it away."""

    def __init__(self) -> None:
        self.reports: list[w.DatasetReport] = []
        self.down = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        self.reports.append(w.decode_dataset_report(request.content))
        return httpx.Response(200, content=w.encoder.encode(w.Ack()))


def make_dataset(root: Path, name: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "data.bin").write_bytes(name.encode() * 8)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "datasets"
    make_dataset(root, "mnist")
    return root


def reporter(tmp_path: Path, root: Path, master: Master) -> CatalogReporter:
    link = MasterLink("http://master.test", tmp_path, transport=httpx.MockTransport(master.handle))
    return CatalogReporter(DatasetScanner([root]), link)


def names(report: w.DatasetReport) -> list[str]:
    return [e.name for e in report.upsert]


async def test_a_full_report_first_then_only_what_changed(tmp_path: Path, root: Path) -> None:
    master = Master()
    catalog = reporter(tmp_path, root, master)
    assert catalog.digest == ""
    await catalog.report()
    await catalog.report()  # nothing changed: nothing sent
    make_dataset(root, "cifar")
    await catalog.report()
    assert [(r.full, names(r)) for r in master.reports] == [(True, ["mnist"]), (False, ["cifar"])]
    assert catalog.digest == master.reports[-1].catalog_digest


async def test_after_a_failed_report_the_next_one_is_full(tmp_path: Path, root: Path) -> None:
    master = Master()
    catalog = reporter(tmp_path, root, master)
    await catalog.report()
    master.down = True
    make_dataset(root, "cifar")
    with pytest.raises(errors.Unreachable):
        await catalog.report()
    master.down = False
    await catalog.report()
    assert [(r.full, names(r)) for r in master.reports] == [
        (True, ["mnist"]),
        (True, ["cifar", "mnist"]),
    ]


async def test_the_master_asking_for_a_full_catalog_gets_one(tmp_path: Path, root: Path) -> None:
    master = Master()
    catalog = reporter(tmp_path, root, master)
    await catalog.report()
    catalog.want_full()
    await catalog.report()
    assert [r.full for r in master.reports] == [True, True]
