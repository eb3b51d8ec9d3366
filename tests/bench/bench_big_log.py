"""A 100 MB job log through the whole path, watching the master's and the CLI's memory.

    python tests/bench/bench_big_log.py [--mib 100]

A real master and agent; a job writes ``--mib`` MiB to stdout; the agent ships it in 1 MiB
chunks; then ``mlsm logs ID`` streams it to a file. Prints the time each step took, the
master's resident memory before and after (psutil), the CLI's peak resident memory
(``ru_maxrss`` of the child), and checks the copy equals the node's file byte for byte.
"""

from __future__ import annotations

import argparse
import filecmp
import resource
import subprocess
import sys
import time

import httpx
import psutil
from benchlab import BenchLab, wait


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=100)
    args = ap.parse_args()
    with BenchLab("mlsm-bench-log-") as lab:
        lab.start_master()
        assert lab.master is not None
        master, url, h, tok, tmp = lab.master, lab.url, lab.headers, lab.token, lab.dir
        env = lab.env
        mlsm = [sys.executable, "-m", "mlsm"]
        lab.start_agent("log")
        lab.wait_online()
        rss0 = psutil.Process(master.pid).memory_info().rss
        code = (
            "import sys\n"
            "line = (b'x' * 1023) + b'\\n'\n"
            f"for i in range({args.mib} * 1024):\n"
            "    sys.stdout.buffer.write(line)\n"
        )
        t0 = time.monotonic()
        jid = httpx.post(
            f"{url}/api/v1/jobs", json={"argv": [sys.executable, "-c", code]}, headers=h
        ).json()["job"]["id"]
        wait(
            lambda: httpx.get(f"{url}/api/v1/jobs/{jid}", headers=h).json()["state"] == "succeeded",
            600,
            "job end",
        )
        t_ship = time.monotonic() - t0
        rss1 = psutil.Process(master.pid).memory_info().rss
        out = tmp / "copy.log"
        t1 = time.monotonic()
        with open(out, "wb") as fh:
            subprocess.run(
                [*mlsm, "logs", str(jid)],
                env=dict(env, MLSM_URL=url, MLSM_TOKEN=tok),
                stdout=fh,
                check=True,
            )
        t_read = time.monotonic() - t1
        cli_peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        rss2 = psutil.Process(master.pid).memory_info().rss
        node_file = lab.agent_dir("log") / "jobs" / str(jid) / "output.log"
        same = filecmp.cmp(node_file, out, shallow=False)
        size = node_file.stat().st_size
        print(
            f"log of {size / 2**20:.1f} MiB: written and shipped in {t_ship:.1f} s, read back by `mlsm logs` in {t_read:.1f} s"
        )
        print(
            f"master RSS: {rss0 / 2**20:.0f} MiB before, {rss1 / 2**20:.0f} MiB after shipping, {rss2 / 2**20:.0f} MiB after streaming"
        )
        print(
            f"`mlsm logs` peak RSS: {cli_peak_kib / 1024:.0f} MiB (the only child that has exited)"
        )
        print(f"copy identical to the node's output.log: {same}")


if __name__ == "__main__":
    main()
