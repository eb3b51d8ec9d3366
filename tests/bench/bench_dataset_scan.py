"""Benchmark: dataset scan and digest speed on a generated tree.

Run: ``.venv/bin/python tests/bench/bench_dataset_scan.py [--files 200000] [--dir PATH]``
(or through pytest: ``.venv/bin/pytest tests/bench/bench_dataset_scan.py -s``).
Prints the time and files/s of a first (full) scan, a re-scan of the unchanged tree,
a re-scan after touching one file, and the content digest of a 10k-file sample; and the
longest a thread that wakes every 50 ms waited during the full scan (the scanner yields
the GIL every ``CHECKPOINT_EVERY`` entries, so this stays near 50 ms on an idle machine;
tests/unit/agent/test_dataset_scan.py asserts the checkpoints, not this time). The tree is
made in tmpfs (/dev/shm) when available, else in the temp dir, unless --dir says where.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.datasets import DatasetScanner, digest

PER_DIR = 1000
TICK_S = 0.05  # the other thread's wake-up interval during the full scan


def make_tree(base: Path, files: int, size: int) -> Path:
    root = base / "root"
    ds = root / "many"
    payload = b"x" * size
    for i in range(max(1, files // PER_DIR)):
        sub = ds / f"d{i:04d}"
        sub.mkdir(parents=True)
        for j in range(min(PER_DIR, files - i * PER_DIR)):
            fd = os.open(sub / f"f{j:04d}", os.O_CREAT | os.O_WRONLY, 0o644)
            if payload:
                os.write(fd, payload)
            os.close(fd)
    return root


@contextmanager
def ticker() -> Iterator[list[float]]:
    """A thread that sleeps ``TICK_S`` at a time; yields the gaps between its wake-ups."""
    gaps: list[float] = []
    done = threading.Event()

    def run() -> None:
        last = time.monotonic()
        while not done.is_set():
            time.sleep(TICK_S)  # the measured thing: how late each wake-up comes
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    t = threading.Thread(target=run)
    t.start()
    try:
        yield gaps
    finally:
        done.set()
        t.join()


def _line(label: str, seconds: float, files: int) -> None:
    print(f"{label:<28} {seconds:8.3f} s  {files / seconds:12,.0f} files/s")


def run(files: int, size: int, where: str | None) -> None:
    base_dir = where or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    base = Path(tempfile.mkdtemp(prefix="mlsm-bench-scan-", dir=base_dir))
    try:
        t = time.perf_counter()
        root = make_tree(base, files, size)
        print(
            f"tree: {files:,} files of {size} B under {base} (made in "
            f"{time.perf_counter() - t:.1f} s), python {sys.version.split()[0]}"
        )
        scanner = DatasetScanner([root])
        with ticker() as gaps:
            t = time.perf_counter()
            report = scanner.scan()
            _line("full scan", time.perf_counter() - t, files)
        print(f"{'longest 50 ms-ticker wait':<28} {max(gaps, default=0.0):8.3f} s")
        assert report.upsert[0].files == files
        t = time.perf_counter()
        report = scanner.scan()
        _line("re-scan, unchanged", time.perf_counter() - t, files)
        assert report.upsert == []
        with open(root / "many" / "d0000" / "f0000", "ab") as f:
            f.write(b"more")
        t = time.perf_counter()
        report = scanner.scan()
        _line("re-scan, one file grown", time.perf_counter() - t, files)
        assert len(report.upsert) == 1
        dirs = [d for d in sorted((root / "many").iterdir())[:10]]
        n = sum(1 for d in dirs for _ in d.iterdir())
        t = time.perf_counter()
        for d in dirs:
            digest(d)
        _line(f"digest of {n:,} files", time.perf_counter() - t, n)
    finally:
        shutil.rmtree(base)


@pytest.mark.bench
def test_bench_dataset_scan() -> None:
    run(int(os.environ.get("MLSM_BENCH_FILES", "200000")), 1, None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=200_000)
    p.add_argument("--size", type=int, default=1, help="bytes per file")
    p.add_argument("--dir", default=None, help="where to make the tree")
    a = p.parse_args()
    run(a.files, a.size, a.dir)


if __name__ == "__main__":
    main()
