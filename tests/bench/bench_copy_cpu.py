"""Benchmark: where a direct dataset copy's CPU goes, party by party.

Run: ``.venv/bin/python tests/bench/bench_copy_cpu.py [--mib 1024] [--rounds 3]``.

A real master and two real agents on loopback (``src`` with the data set, ``dst``), one
file of ``--mib`` MiB, copied ``--rounds`` times directly from ``src`` to ``dst`` (the
target's copy deleted between rounds, the disk flushed before each). For each copy: its
time, the user and system CPU seconds of the source agent, the target agent and the master
(``psutil``, read before and after), and the target's own account from its log (the
receive, the sink's share of it, the finish). Nothing else runs in the lab, unlike
``bench_transfers.py``, which also runs rsync, a relaying agent and the cut test.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.bench_transfers import Bench, make_sets
from tests.bench.benchlab import BenchLab, wait


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    rows: list[dict[str, float]] = []
    with BenchLab(prefix="mlsm-bench-copy-cpu-") as lab:
        src_root, dst_root = lab.dir / "roots" / "src", lab.dir / "roots" / "dst"
        src_root.mkdir(parents=True)
        dst_root.mkdir(parents=True)
        make_sets(src_root, args.mib, 0, 0)
        lab.start_master()
        src = lab.start_agent("src", "--dataset-root", str(src_root))
        env = lab.env
        lab.env = {**env, "MLSM_LOG_LEVEL": "info"}  # the target's "received ... in" lines
        dst = lab.start_agent("dst", "--dataset-root", str(dst_root))
        lab.env = env
        lab.wait_online(2)
        assert lab.master is not None
        bench = Bench(lab, src_root, dst_root)
        wait(lambda: "src" in bench.copies("big"), 300, "the data set scanned")
        parties = {
            "src": psutil.Process(src.pid),
            "dst": psutil.Process(dst.pid),
            "master": psutil.Process(lab.master.pid),
        }
        print(f"one file of {args.mib} MiB, direct, {os.cpu_count()} CPUs", flush=True)
        for _ in range(args.rounds):
            before = {k: p.cpu_times() for k, p in parties.items()}
            took, _line = bench.copy("big", "src")
            after = {k: p.cpu_times() for k, p in parties.items()}
            row = {"seconds": took}
            for k in parties:
                row[f"{k}.user"] = after[k].user - before[k].user
                row[f"{k}.sys"] = after[k].system - before[k].system
            cpu = sum(v for k, v in row.items() if k != "seconds")
            print(
                f"copy {took:.2f} s, CPU {cpu:.2f} s ({cpu / took:.2f} cores): "
                + ", ".join(
                    f"{k} {row[f'{k}.user']:.2f} user + {row[f'{k}.sys']:.2f} sys" for k in parties
                )
                + f"; target: {bench.last_split}",
                flush=True,
            )
            rows.append(row)
            bench.drop("big")
    return rows


def test_copy_cpu_bench_small() -> None:
    """The script end to end on a small file (the figures are printed, not asserted)."""
    rows = main(["--mib", "32", "--rounds", "1"])
    assert len(rows) == 1 and rows[0]["dst.user"] > 0


if __name__ == "__main__":
    main()
