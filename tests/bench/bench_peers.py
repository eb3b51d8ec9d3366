"""mlsm through its CLI beside Slurm, task-spooler and nq, in one run of the shared harness.

    python tests/bench/bench_peers.py [--n 200] [--lat 20] [--rounds 1] [--peers slurm,tsp,nq]
        [--harness ../shared/peers] [--results DIR] [--name mlsm] [--path-python3]

Starts a real master and one agent (no GPUs) in a temporary directory, then runs, round
after round, the harness's ``bench_slurm.sh``, ``bench_tsp.sh``, ``bench_nq.sh`` and
``bench_mlsm.sh`` (this checkout's ``mlsm``, with ``MLSM_URL``/``MLSM_TOKEN`` of that
master), each writing one JSON line into ``--results``; then prints the harness's table
(``make_table.py``); ``--name`` names mlsm's row, so an older checkout's copy of this
script can add its row to the same results directory. Slurm is brought up with ``slurm_up.sh`` unless it already answers,
and brought down again at the end; a peer whose tool is missing is skipped with a line.

The mlsm calls run in an empty working directory: ``mlsm submit`` ships the directory it
is called from, and the peers ship nothing. ``python3`` on the harness's PATH is this
interpreter itself (a directory put first on PATH holds a ``python3`` link to
``sys.executable``'s real path; the script says so as it starts): ``bench_mlsm.sh`` pipes
every answer through ``python3 -c 'import json...'``, timed with the call, and a version
manager's shim there (pyenv's is a bash script, ~85 ms a call here) would add its own
start-up to every mlsm figure, a cost of this machine that a lab server does not have.
``--path-python3`` leaves PATH's own ``python3`` in place, to show that cost. Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlab import ROOT, BenchLab

PEERS = ("slurm", "tsp", "nq")
#: The executable each peer's script needs (the scripts install a missing one with apt).
PEER_TOOL = {"slurm": "sbatch", "tsp": "tsp", "nq": "nq"}


def _run(script: Path, out: Path, args: list[str], env: dict[str, str], cwd: Path) -> bool:
    print(f"== {script.name} {' '.join(args)} -> {out.name}", file=sys.stderr, flush=True)
    with out.open("wb") as fh:
        rc = subprocess.run(["bash", str(script), *args], stdout=fh, env=env, cwd=cwd).returncode
    if rc != 0:
        print(f"   {script.name} exited {rc}", file=sys.stderr)
        out.unlink(missing_ok=True)
    return rc == 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--lat", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--harness", type=Path, default=ROOT.parent.parent / "shared" / "peers")
    ap.add_argument("--results", type=Path, default=None)
    ap.add_argument("--name", default="mlsm", help="mlsm's results file prefix (its table row)")
    ap.add_argument(
        "--path-python3",
        action="store_true",
        help="keep PATH's python3 (e.g. a pyenv shim) for the harness's JSON parsing",
    )
    args = ap.parse_args()
    harness = args.harness.resolve()
    peers = [p for p in args.peers.split(",") if p]
    results = args.results or Path(tempfile.mkdtemp(prefix="peers-results-"))
    results.mkdir(parents=True, exist_ok=True)
    mlsm = Path(sys.executable).with_name("mlsm")
    # Byte-compiled first, as an install leaves it: with PYTHONDONTWRITEBYTECODE set, every
    # call would otherwise compile each module edited since the last compile from source.
    packages = [str(ROOT / p) for p in ("mlsm", "agent", "tui")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *packages], check=True)
    slurm_started = False
    if "slurm" in peers:
        # Slurm not installed yet: slurm_up.sh installs it (Debian's slurm-wlm)
        ping = ["scontrol", "ping"] if shutil.which("scontrol") else ["true"]
        up = subprocess.run(ping, capture_output=True, text=True, check=False)
        if "UP" not in up.stdout:
            if subprocess.run(["bash", str(harness / "slurm_up.sh")], check=False).returncode:
                print("slurm_up.sh could not start Slurm; comparing without it", file=sys.stderr)
                peers.remove("slurm")
            else:
                slurm_started = True
    try:
        with BenchLab("mlsm-bench-peers-") as lab:
            lab.start_master()
            lab.start_agent("bench")
            lab.wait_online()
            work = lab.dir / "work"  # what `mlsm submit` ships: an empty directory
            work.mkdir()
            path = os.environ.get("PATH", "")
            if args.path_python3:
                print(f"== python3 on PATH: {shutil.which('python3')}", file=sys.stderr)
            else:
                real = Path(sys.executable).resolve()
                links = lab.dir / "python3-bin"
                links.mkdir()
                (links / "python3").symlink_to(real)
                path = f"{links}:{path}"
                print(f"== python3 on PATH: {links}/python3 -> {real}", file=sys.stderr)
            env = {
                **lab.env,
                "PATH": path,
                "MLSM": str(mlsm),
                "MLSM_URL": lab.url,
                "MLSM_TOKEN": lab.token,
                "PEERS_RUNS": str(lab.dir / "runs"),
            }
            for r in range(1, args.rounds + 1):
                print(f"== round {r}/{args.rounds}", file=sys.stderr, flush=True)
                for peer in peers:
                    script = harness / f"bench_{peer}.sh"
                    out = results / f"{peer}_n{args.n}_r{r}.json"
                    if shutil.which(PEER_TOOL[peer]) is None and peer != "slurm":
                        print(
                            f"   {PEER_TOOL[peer]} missing: the script installs it", file=sys.stderr
                        )
                    _run(
                        script,
                        out,
                        [str(args.n), str(args.lat)],
                        {**os.environ, "PATH": path},
                        work,
                    )
                out = results / f"{args.name}_n{args.n}_r{r}.json"
                _run(harness / "bench_mlsm.sh", out, [str(args.n), str(args.lat)], env, work)
    finally:
        if slurm_started:
            subprocess.run(["bash", str(harness / "slurm_down.sh")], check=False)
    table = subprocess.run(
        [sys.executable, str(harness / "make_table.py"), str(results)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    (results / "table.md").write_text(table)
    print(table)
    print(f"results: {results}", file=sys.stderr)


if __name__ == "__main__":
    main()
