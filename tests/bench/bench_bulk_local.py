"""Benchmark: mlsm.bulk source -> sink on local disk (no network), beside cp -r and rsync -a.

Run: ``.venv/bin/python tests/bench/bench_bulk_local.py [--big-mib 1024] [--small 5000]
[--small-kib 2] [--dir PATH] [--repeat 3]`` (or through pytest:
``.venv/bin/pytest tests/bench/bench_bulk_local.py -s``).

Two data sets, made in ``--dir`` (default: the temp dir, on disk): one file of
``--big-mib`` MiB and ``--small`` files of ``--small-kib`` KiB (in directories of 100).
Each is copied, in the same run and on the same (page-cached) data, by:

- ``cp -r`` and ``rsync -a`` (Debian's, whole-file: both local);
- mlsm.bulk with the source and the sink in two threads joined by a bounded queue (what a
  transfer between two processes does: one reads and frames, the other writes and
  hashes), with ``durable=False`` (like cp and rsync: nothing forced to disk) and with
  ``durable=True`` (the sink's default: the kernel is asked to write each 8 MiB out as
  it comes, the file system is flushed every 10 s or 1 GiB, and before the rename);
- mlsm.bulk in one thread (``pump``), ``durable=False``.

The manifest is built first (that reads and hashes the source once: the sender's cost,
timed and printed on its own line); the copy figures are for the transfer given the
manifest, as a dataset copy is (the agent has its dataset's manifest). The best of
``--repeat`` runs is printed as MiB/s and files/s; every copy is checked byte-exact once.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mlsm.bulk import Manifest, Sink, Source, Want, build_manifest, pump
from mlsm.bulk.fstree import remove_tree

QUEUE_CHUNKS = 16  # ~16 MiB in flight between the two threads
PER_DIR = 100


def make_big(root: Path, mib: int) -> None:
    root.mkdir(parents=True)
    block = bytearray(os.urandom(1 << 20))
    with open(root / "big.bin", "wb") as f:
        for i in range(mib):
            block[:8] = i.to_bytes(8, "little")
            f.write(block)


def make_small(root: Path, count: int, kib: int) -> None:
    payload = os.urandom(kib << 10)
    for i in range(count):
        d = root / f"d{i // PER_DIR:03d}"
        if i % PER_DIR == 0:
            d.mkdir(parents=True)
        (d / f"f{i:05d}.bin").write_bytes(i.to_bytes(4, "little") + payload[4:])


def _threaded(src: Path, manifest: Manifest, sink: Sink) -> None:
    """Source in a thread, sink in this one, a bounded queue between (two parties)."""

    def fetch(want: Want) -> Iterator[bytes]:
        q: queue.Queue[list[bytes] | None] = queue.Queue(QUEUE_CHUNKS)
        errors: list[BaseException] = []

        def produce() -> None:
            try:
                with Source.from_tree(src, manifest) as source:
                    for batch in source.batches(want):
                        q.put(batch)
            except BaseException as exc:
                errors.append(exc)
            finally:
                q.put(None)

        t = threading.Thread(target=produce, daemon=True)
        t.start()
        while (batch := q.get()) is not None:
            yield from batch
        t.join()
        if errors:
            raise errors[0]

    pump(sink, fetch)


def _single(src: Path, manifest: Manifest, sink: Sink) -> None:
    with Source.from_tree(src, manifest) as source:
        pump(sink, source.chunks)


def mlsm_copy(
    how: Callable[[Path, Manifest, Sink], None], durable: bool
) -> Callable[[Path, Path, Manifest], None]:
    def copy(src: Path, dest: Path, manifest: Manifest) -> None:
        work = dest.with_name(dest.name + ".work")
        sink = Sink(manifest, work, durable=durable)
        how(src, manifest, sink)
        sink.finish(dest)

    return copy


def cp(src: Path, dest: Path, manifest: Manifest) -> None:
    subprocess.run(["cp", "-r", str(src), str(dest)], check=True)


def rsync(src: Path, dest: Path, manifest: Manifest) -> None:
    subprocess.run(["rsync", "-a", f"{src}/", str(dest)], check=True)


def _fresh(dest: Path) -> None:
    for p in (dest, dest.with_name(dest.name + ".work")):
        if os.path.lexists(p):
            remove_tree(p)


def bench(
    label: str, src: Path, out: Path, repeat: int, files: int, nbytes: int
) -> list[tuple[str, float]]:
    t = time.perf_counter()
    manifest = build_manifest(src)
    print(
        f"\n{label}: manifest built (read + sha256 of the source) in {time.perf_counter() - t:.3f} s"
    )
    tools: list[tuple[str, Callable[[Path, Path, Manifest], None]]] = [
        ("cp -r", cp),
        ("rsync -a", rsync),
        ("mlsm.bulk 2 threads", mlsm_copy(_threaded, False)),
        ("mlsm.bulk 2 threads, durable", mlsm_copy(_threaded, True)),
        ("mlsm.bulk 1 thread", mlsm_copy(_single, False)),
    ]
    results: list[tuple[str, float]] = []
    checked = False
    for name, tool in tools:
        best = float("inf")
        for _ in range(repeat):
            dest = out / "dest"
            _fresh(dest)
            subprocess.run(["sync"], check=True)
            t = time.perf_counter()
            tool(src, dest, manifest)
            best = min(best, time.perf_counter() - t)
            if name.startswith("mlsm") and not checked:
                assert build_manifest(dest).digest() == manifest.digest(), "copy differs"
                checked = True
        _fresh(out / "dest")
        results.append((name, best))
        print(
            f"  {name:<30} {best:7.3f} s  {nbytes / best / (1 << 20):9.1f} MiB/s"
            f"  {files / best:10,.0f} files/s"
        )
    return results


def run(big_mib: int, small: int, small_kib: int, where: str | None, repeat: int) -> None:
    if shutil.which("rsync") is None:
        raise SystemExit("rsync is not installed (apt-get install rsync)")
    base = Path(tempfile.mkdtemp(prefix="mlsm-bench-bulk-", dir=where))
    try:
        print(f"data under {base}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
        big = base / "big"
        make_big(big, big_mib)
        bench(f"one file of {big_mib} MiB", big, base, repeat, 1, big_mib << 20)
        remove_tree(big)
        many = base / "small"
        make_small(many, small, small_kib)
        bench(
            f"{small:,} files of {small_kib} KiB",
            many,
            base,
            repeat,
            small,
            small * (small_kib << 10),
        )
    finally:
        remove_tree(base)


@pytest.mark.bench
def test_bench_bulk_local() -> None:
    run(int(os.environ.get("MLSM_BENCH_BIG_MIB", "1024")), 5000, 2, None, 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--big-mib", type=int, default=1024)
    p.add_argument("--small", type=int, default=5000)
    p.add_argument("--small-kib", type=int, default=2)
    p.add_argument("--dir", default=None, help="where to make the data (default: temp dir)")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    run(a.big_mib, a.small, a.small_kib, a.dir, a.repeat)


if __name__ == "__main__":
    main()
