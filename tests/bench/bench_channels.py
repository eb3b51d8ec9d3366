"""Shells and forwards through the master, on loopback: what the relay costs.

A real master and a real agent (tests/integration/lab.py). One job runs an HTTP server
(``python -m http.server``) over a directory with a 100 MiB file.

- **Keystroke round trip**: a shell into the job through the client's channel (the code
  ``mlsm shell`` runs); one key is sent and the time until its echo comes back is taken
  (CLI -> master -> agent -> PTY -> agent -> master -> CLI). Keys alternate ``x`` and
  backspace, so the line never grows.
- **Forward throughput**: the 100 MiB file downloaded through ``mlsm forward`` (the real
  CLI process, one local connection relayed as WebSocket messages of at most 64 KiB)
  against the same download straight from the job's port, in the same run.

    .venv/bin/python tests/bench/bench_channels.py [KEYS] [DOWNLOADS]
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from mlsm.client import Client  # noqa: E402
from mlsm.client.channels import open_channel, shell_path  # noqa: E402
from tests.integration.lab import Lab  # noqa: E402
from tests.support.procs import free_port  # noqa: E402
from tests.support.wait import wait_until  # noqa: E402

KEYS = 300
DOWNLOADS = 3
FILE_MIB = 100
MIB = 1 << 20
DEADLINE_S = 60.0
READ_CHUNK = 1 << 20
RSS_SAMPLE_S = 0.02


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def keystrokes(client: Client, job_id: int, n: int) -> list[float]:
    """Round trips in ms of ``n`` keys through a shell into ``job_id``."""
    out: list[float] = []
    async with open_channel(client, shell_path(job_id), {"rows": 24, "cols": 80}) as ch:
        await ch.send(b"PS1='$ '\n")
        seen = b""
        while not seen.endswith(b"$ "):  # the new prompt: the shell is ready
            msg = await ch.recv()
            if isinstance(msg, bytes):
                seen += msg
        for i in range(n):
            key = b"x" if i % 2 == 0 else b"\x7f"
            want = b"x" if key == b"x" else b"\b"
            t0 = time.perf_counter()
            await ch.send(key)
            got = b""
            while want not in got:
                msg = await ch.recv()
                if isinstance(msg, bytes):
                    got += msg
            out.append((time.perf_counter() - t0) * 1000)
        await ch.send(b"exit\n")
    return out


def download(url: str) -> float:
    """MiB/s of one download of ``url`` (its whole body read and counted)."""
    t0 = time.perf_counter()
    size = 0
    with httpx.stream("GET", url, timeout=DEADLINE_S) as resp:
        resp.raise_for_status()
        for chunk in resp.iter_raw(READ_CHUNK):
            size += len(chunk)
    assert size == FILE_MIB * MIB, size
    return size / MIB / (time.perf_counter() - t0)


def main(keys: int = KEYS, downloads: int = DOWNLOADS) -> None:
    root = Path(tempfile.mkdtemp(prefix="mlsm-bench-channels-"))
    site = root / "site"
    site.mkdir()
    with open(site / "big.bin", "wb") as f:
        f.truncate(FILE_MIB * MIB)
    with Lab(root / "lab") as lab:
        lab.start_master()
        lab.start_agent("bench", gpus="")
        port = free_port()
        argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
        job_id = lab.submit("--no-code", "--workdir", str(site), "--", *argv)
        lab.wait_job(job_id, "running")
        direct = f"http://127.0.0.1:{port}/big.bin"

        def up() -> bool:
            try:
                return httpx.head(direct).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, DEADLINE_S, "the job's HTTP server")
        client = Client(lab.url, lab.token)
        rtt = asyncio.run(keystrokes(client, job_id, keys))
        print(
            f"keystroke round trip (CLI->master->agent->PTY and back): median "
            f"{statistics.median(rtt):.2f} ms   p99 {_pct(rtt, 0.99):.2f} ms   "
            f"max {max(rtt):.2f} ms   ({len(rtt)} keys)"
        )
        local = free_port()
        fwd = lab.cli_popen("forward", str(job_id), str(port), str(local))
        assert fwd.stderr is not None
        fwd.stderr.readline()
        relayed = f"http://127.0.0.1:{local}/big.bin"
        d_rates, f_rates = [], []
        assert lab.master_proc is not None
        master = psutil.Process(lab.master_proc.pid)
        rss: list[int] = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(RSS_SAMPLE_S):
                rss.append(master.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        for _ in range(downloads):
            d_rates.append(download(direct))
            if not sampler.is_alive():
                sampler.start()
            f_rates.append(download(relayed))
        sampling.set()
        sampler.join()
        fwd.terminate()
        fwd.wait(timeout=DEADLINE_S)
        dm, fm = statistics.median(d_rates), statistics.median(f_rates)
        print(
            f"{FILE_MIB} MiB download, direct from the job's port: median {dm:8.1f} MiB/s "
            f"({', '.join(f'{r:.0f}' for r in d_rates)})"
        )
        print(
            f"{FILE_MIB} MiB download through mlsm forward:        median {fm:8.1f} MiB/s "
            f"({', '.join(f'{r:.0f}' for r in f_rates)})  = {fm / dm:.0%} of direct"
        )
        print(
            f"master RSS during the relayed downloads: {min(rss) / MIB:.1f} to "
            f"{max(rss) / MIB:.1f} MiB (max - min {(max(rss) - min(rss)) / MIB:.1f} MiB, "
            f"{len(rss)} samples)"
        )
    subprocess.run(["rm", "-rf", str(root)], check=False)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
