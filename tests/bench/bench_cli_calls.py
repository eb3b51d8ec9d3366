"""What one CLI call costs: ``mlsm jobs --json``, ``mlsm submit`` and ``mlsm job show``
against a real master (with one agent, which runs the submitted jobs).

    python tests/bench/bench_cli_calls.py [--runs 20] [--tree DIR]

Each command runs ``--runs`` times as the ``mlsm`` executable (in an empty directory:
``submit`` ships it); prints the wall time and the process's CPU time (user + system,
which a loaded machine inflates less than wall time), min and median. ``--tree`` runs
another checkout's code (an older commit unpacked there) through the same executable and
master, for a before/after. The checkouts are byte-compiled first, as an install leaves
them. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlab import BenchLab

COMMANDS = {
    "jobs --json": ["jobs", "--json"],
    "submit (ships an empty dir)": ["submit", "--json", "--", "/bin/true"],
    "submit --no-code": ["submit", "--no-code", "--json", "--", "/bin/true"],
    "job show --json": ["job", "show", "1", "--json"],  # job 1: the first submit's
}


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--tree", type=Path, default=None)
    args = ap.parse_args()
    mlsm = str(Path(sys.executable).with_name("mlsm"))
    with BenchLab("mlsm-bench-cli-") as lab:
        lab.start_master()
        lab.start_agent("bench")  # as in the peers harness: the submitted jobs run
        lab.wait_online()
        work = lab.dir / "work"
        work.mkdir()
        env = {**lab.env, "MLSM_URL": lab.url, "MLSM_TOKEN": lab.token}
        if args.tree is not None:
            env["PYTHONPATH"] = str(args.tree.resolve())
        code = Path(env.get("PYTHONPATH") or Path(__file__).resolve().parents[2])
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(code / "mlsm")],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        print(f"code: {code}; load average {os.getloadavg()[0]:.1f}")
        for name, argv in COMMANDS.items():
            walls, cpus = [], []
            for _ in range(args.runs):
                c0, t0 = _children_cpu(), time.perf_counter()
                subprocess.run([mlsm, *argv], env=env, cwd=work, capture_output=True, check=True)
                walls.append((time.perf_counter() - t0) * 1000)
                cpus.append((_children_cpu() - c0) * 1000)
            print(
                f"{name:28} wall min {min(walls):6.1f} median {statistics.median(walls):6.1f} ms"
                f" | CPU min {min(cpus):6.1f} median {statistics.median(cpus):6.1f} ms"
            )
        print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
