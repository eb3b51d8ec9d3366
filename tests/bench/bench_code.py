"""What shipping the submit directory costs: ``mlsm submit`` of a 50 MiB / 2,000-file tree.

A real master and a real agent on loopback (:class:`tests.integration.lab.Lab`), the real
CLI. In the same run, from the same directory: a plain ``--no-code`` submit (the baseline:
CLI start, login, one request), the first submit that ships the tree (hash 50 MiB, offer the
manifest, upload every file), and a resubmit after one file changed (the hash cache reads
only that file; one file goes up). Each figure is the CLI's wall time until ``submitted
job N``; "extra" is over the baseline's median. The package is byte-compiled first, as an
install leaves it (a checkout run with PYTHONDONTWRITEBYTECODE would compile every module
on every call, and more of them on the shipping path).

    .venv/bin/python tests/bench/bench_code.py [RUNS]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.integration.lab import Lab  # noqa: E402

FILES = 2000
TOTAL_BYTES = 50 << 20
RUNS = 5


def make_tree(root: Path) -> None:
    """The tree, its files dated an hour back (a project's files are older than the
    submit; a file written within seconds of being hashed is hashed again next time)."""
    size = TOTAL_BYTES // FILES
    then = time.time() - 3600
    for i in range(FILES):
        d = root / f"pkg{i % 20}"
        d.mkdir(exist_ok=True)
        f = d / f"f{i}.bin"
        f.write_bytes(os.urandom(size))
        os.utime(f, (then, then))
    (root / "train.py").write_text("print('ok')\n")
    os.utime(root / "train.py", (then, then))


def timed(lab: Lab, cwd: Path, *args: str) -> float:
    t0 = time.perf_counter()
    res = lab.cli("submit", *args, "--", "true", cwd=cwd)
    took = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr
    return took


def main(runs: int) -> None:
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "mlsm")], check=True)
    with tempfile.TemporaryDirectory() as tmp, Lab(Path(tmp) / "lab") as lab:
        lab.start_master()
        lab.start_agent("bench", gpus="")
        base, first, again = [], [], []
        for run in range(runs):
            tree = Path(tmp) / f"tree{run}"  # a new tree each run: the first submit is cold
            tree.mkdir()
            make_tree(tree)
            base.append(timed(lab, tree, "--no-code"))
            first.append(timed(lab, tree))
            (tree / "pkg3" / "f3.bin").write_bytes(os.urandom(TOTAL_BYTES // FILES))
            again.append(timed(lab, tree))
        b = statistics.median(base)
        print(f"tree: {FILES} files, {TOTAL_BYTES >> 20} MiB; {runs} runs (medians)")
        print(f"submit --no-code        {b * 1000:8.0f} ms")
        f, a = statistics.median(first), statistics.median(again)
        print(f"first submit (ships)    {f * 1000:8.0f} ms   extra {(f - b) * 1000:6.0f} ms")
        print(f"resubmit, 1 file new    {a * 1000:8.0f} ms   extra {(a - b) * 1000:6.0f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else RUNS)
