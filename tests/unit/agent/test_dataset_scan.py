"""The dataset scanner: what is a dataset, deltas, digests, and not starving other threads."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from agent.datasets import DatasetCancelled, DatasetScanner, digest, scan_entry
from agent.datasets.scan import catalog_digest


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    _write(r / "alpha" / "a.txt", b"aaa")
    _write(r / "alpha" / "sub" / "b.txt", b"bbbbb")
    _write(r / "beta.bin", b"1234567")
    return r


def _by_name(entries) -> dict:
    return {e.name: e for e in entries}


def test_first_scan_is_full_with_sizes_counts_and_top(root: Path) -> None:
    report = DatasetScanner([root]).scan()
    assert report.full is True
    assert report.removed == []
    got = _by_name(report.upsert)
    assert set(got) == {"alpha", "beta.bin"}
    alpha = got["alpha"]
    assert (alpha.size, alpha.files, alpha.top) == (8, 2, ["a.txt", "sub"])
    assert alpha.path == str(root / "alpha") and alpha.root == str(root)
    assert alpha.modified >= (root / "alpha" / "sub" / "b.txt").stat().st_mtime
    beta = got["beta.bin"]
    assert (beta.size, beta.files, beta.top) == (7, 1, [])
    assert report.catalog_digest.startswith("sha256:")


def test_rescan_of_unchanged_tree_is_an_empty_delta_with_same_digest(root: Path) -> None:
    scanner = DatasetScanner([root])
    first = scanner.scan()
    second = scanner.scan()
    assert second.full is False
    assert second.upsert == [] and second.removed == []
    assert second.catalog_digest == first.catalog_digest == scanner.catalog_digest


def test_delta_reports_new_grown_and_removed(root: Path) -> None:
    scanner = DatasetScanner([root])
    first = scanner.scan()
    _write(root / "gamma" / "g.txt", b"g")  # new
    with open(root / "alpha" / "a.txt", "ab") as f:  # grown in place
        f.write(b"more")
    os.unlink(root / "beta.bin")  # removed
    delta = scanner.scan()
    assert delta.full is False
    assert {e.name for e in delta.upsert} == {"gamma", "alpha"}
    assert _by_name(delta.upsert)["alpha"].size == 12
    assert delta.removed == [str(root / "beta.bin")]
    assert delta.catalog_digest != first.catalog_digest


def test_full_on_request_lists_everything(root: Path) -> None:
    scanner = DatasetScanner([root])
    scanner.scan()
    report = scanner.scan(full=True)
    assert report.full is True
    assert {e.name for e in report.upsert} == {"alpha", "beta.bin"}


def test_catalog_digest_is_independent_of_order(root: Path) -> None:
    entries = DatasetScanner([root]).scan().upsert
    assert catalog_digest(entries) == catalog_digest(list(reversed(entries)))


def test_skips_hidden_temp_symlinks_special_and_bad_names(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _write(outside / "huge.bin", b"x" * 1000)
    (root / ".mlsm-import-x-123").mkdir()
    (root / ".hidden").mkdir()
    (root / "link-out").symlink_to(outside)
    os.mkfifo(root / "pipe")
    (root / "bad\nname").mkdir()
    (root / "-dash").mkdir()
    scanner = DatasetScanner([root])
    report = scanner.scan()
    assert {e.name for e in report.upsert} == {"alpha", "beta.bin"}
    assert sorted(os.path.basename(p) for p in scanner.skipped) == [
        "-dash",
        "bad\nname",
        "link-out",
        "pipe",
    ]


def test_symlinks_inside_a_dataset_are_not_followed_or_counted(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _write(outside / "huge.bin", b"x" * 1000)
    (root / "alpha" / "escape").symlink_to(outside)
    (root / "alpha" / "file-link").symlink_to(outside / "huge.bin")
    entry = _by_name(DatasetScanner([root]).scan().upsert)["alpha"]
    assert (entry.size, entry.files) == (8, 2)


def test_several_roots_and_a_missing_root(root: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    _write(other / "delta" / "d.txt", b"d")
    scanner = DatasetScanner([root, other, tmp_path / "missing"])
    report = scanner.scan()
    assert {e.name for e in report.upsert} == {"alpha", "beta.bin", "delta"}
    shutil.rmtree(other)
    delta = scanner.scan()
    assert delta.removed == [str(other / "delta")]


def test_noted_digest_is_sent_until_the_dataset_changes(root: Path) -> None:
    scanner = DatasetScanner([root])
    scanner.scan()
    path = str(root / "alpha")
    d, _ = digest(path)
    scanner.note_digest(path, d)
    delta = scanner.scan()
    assert [e.digest for e in delta.upsert] == [d]
    _write(root / "alpha" / "new.txt", b"n")
    delta = scanner.scan()
    assert [e.digest for e in delta.upsert] == [None]


def test_scan_entry_of_one_dataset(root: Path) -> None:
    entry = scan_entry(root, "alpha")
    assert (entry.name, entry.size, entry.files) == ("alpha", 8, 2)


def test_stop_event_ends_a_scan(root: Path) -> None:
    stop = threading.Event()
    stop.set()
    scanner = DatasetScanner([root], should_stop=stop, checkpoint_every=1)
    with pytest.raises(DatasetCancelled):
        scanner.scan()


# ------------------------------------------------------------------ digest
def test_digest_is_stable_and_lists_every_file(root: Path) -> None:
    d1, manifest = digest(root / "alpha")
    d2, _ = digest(root / "alpha")
    assert d1 == d2 and d1.startswith("sha256:")
    assert sorted(manifest) == ["a.txt", "sub/b.txt"]
    assert manifest["a.txt"] == "9834876dcfb05cb167a5c24953eba58c4ac89b1adf57f28f2f9d09af107ee8f0"


def test_digest_changes_with_one_byte(root: Path) -> None:
    before, _ = digest(root / "alpha")
    _write(root / "alpha" / "a.txt", b"aab")
    after, _ = digest(root / "alpha")
    assert before != after


def test_digest_of_a_file_equals_a_directory_holding_it(root: Path, tmp_path: Path) -> None:
    _write(tmp_path / "wrapped" / "beta.bin", (root / "beta.bin").read_bytes())
    assert digest(root / "beta.bin") == digest(tmp_path / "wrapped")


def test_digest_ignores_symlinks(root: Path, tmp_path: Path) -> None:
    before = digest(root / "alpha")
    (root / "alpha" / "link").symlink_to(tmp_path)
    assert digest(root / "alpha") == before


def test_digest_streams_large_files(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)
    _write(tmp_path / "ds" / "big.bin", data)
    import hashlib

    _, manifest = digest(tmp_path / "ds")
    assert manifest["big.bin"] == hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ not starving others
class CountingStop(threading.Event):
    """A real stop event that counts how often the scanner looked at it."""

    def __init__(self) -> None:
        super().__init__()
        self.looks = 0

    def is_set(self) -> bool:
        self.looks += 1
        return super().is_set()


def test_a_scan_checkpoints_every_n_entries(tmp_path: Path) -> None:
    """Every ``checkpoint_every`` entries the scanner yields the GIL and looks at its stop
    event, all through a big tree: other threads run and a stop is honoured mid-walk.
    (How long another thread waits during a 200k-file scan is a figure of
    tests/bench/bench_dataset_scan.py: a time, which a loaded machine may stretch.)"""
    files, every = 600, 25
    for i in range(files):
        _write(tmp_path / "root" / "many" / f"d{i % 6}" / f"f{i:04d}", b"")
    stop = CountingStop()
    report = DatasetScanner([tmp_path / "root"], should_stop=stop, checkpoint_every=every).scan()
    assert report.upsert[0].files == files
    assert stop.looks >= files // every
