"""Dashboard benchmark: time to first data, idle CPU on the overview, resident memory.

Default (``--real``, when ``tmux`` is installed): starts a real ``mlsm master``, registers
100 nodes through the agent protocol and keeps them alive from a background thread with
heartbeats of 8 simulated GPUs every 2 s (values change every beat, as a real lab's do),
submits 1,000 jobs (most queued: they want a label no node has), then runs the real
``mlsm ui`` in tmux at 160x48 and measures that process from outside with psutil.

``--fake``: the app in this process, headless (``App.run_test``), over the FAKE data
source of ``tests/tui/fakes.py`` (a static lab): the dashboard alone, no network.

    .venv/bin/python tests/bench/bench_tui.py [--fake] [--idle-s 20] [--settle-s 4.5]
        [--nodes 100 --jobs 1000]

Figures only; targets (issue 7): first data < 1.5 s, idle CPU < 5% of a core, RSS < 200 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agent.collectors import HostCollector, SimulatedProbe  # noqa: E402
from mlsm import PROTOCOL_VERSION  # noqa: E402
from mlsm.wire import agent as w  # noqa: E402
from tests.support.master import MasterProcess  # noqa: E402
from tests.support.wait import pilot_until, wait_until  # noqa: E402

MLSM = str(Path(sys.executable).parent / "mlsm")
PASSWORD = "bench-password-1"
HEARTBEAT_S = 2.0
FIRST_DATA_TIMEOUT_S = 30.0
SCREEN_POLL_S = 0.02  # capture-pane cadence while waiting for the first data
JOBS_PER_SUBMIT = 250  # array jobs: one request submits this many


class Lab:
    """A real master with ``nodes`` heartbeat-driven simulated nodes and ``jobs`` jobs."""

    def __init__(self, tmp: Path, nodes: int, jobs: int, changing: int | None = None) -> None:
        self.tmp = tmp
        #: Nodes whose telemetry moves every beat; the others resend their first sample
        #: (a lab where most servers sit idle). None: every node.
        self.changing = nodes if changing is None else changing
        self._steady: dict[str, tuple[w.HostSample, list[w.GpuSample]]] = {}
        self.server = MasterProcess(
            tmp / "m",
            log_path=tmp / "master.log",
            home=tmp,
            admin="root",
            password=PASSWORD,
            env={"MLSM_LOG_LEVEL": "warning"},
        )
        self.port = self.server.port
        self.url = self.server.url
        self._stop = threading.Event()
        self.server.start()
        self.token = self.server.session_token()
        auth = {"Authorization": f"Bearer {self.token}"}
        join = httpx.post(
            f"{self.url}/api/v1/join-tokens", json={"uses": nodes, "ttl_s": 3600}, headers=auth
        ).json()["token"]
        self.secrets: list[tuple[str, str]] = []
        with httpx.Client(base_url=self.url) as c:
            for i in range(nodes):
                name = f"gpu{i:03d}"
                req = w.RegisterRequest(protocol=PROTOCOL_VERSION, join_token=join, name=name)
                r = c.post(
                    "/agent/v1/register",
                    content=w.encoder.encode(req),
                    headers={"content-type": w.MSGPACK},
                )
                r.raise_for_status()
                self.secrets.append((name, w.decode_register_reply(r.content).node_secret))
        self.probes = {
            name: SimulatedProbe("8xA100-80GB", identity=name) for name, _ in self.secrets
        }
        self.host = HostCollector(tmp)
        self._beat_once()
        self.beater = threading.Thread(target=self._beat, daemon=True)
        self.beater.start()
        with httpx.Client(base_url=self.url, headers=auth, timeout=60) as c:
            left = jobs
            while left > 0:
                n = min(left, JOBS_PER_SUBMIT)
                spec = {
                    "argv": ["python", "train.py"],
                    "name": "bench",
                    "gpus": 1,
                    "labels": {"pool": "nowhere"},
                    "array": f"1-{n}" if n > 1 else "",
                }
                c.post("/api/v1/jobs", json=spec).raise_for_status()
                left -= n
            self.jobs = c.get("/api/v1/jobs", params={"all": "true", "limit": 1}).json()["total"]

    def _beat_once(self, client: httpx.Client | None = None) -> None:
        own = client is None
        c = client or httpx.Client(base_url=self.url)
        host = self.host.sample()
        try:
            for seq, (name, secret) in enumerate(self.secrets):
                if seq < self.changing:
                    sample, gpus = host, self.probes[name].sample()
                else:
                    sample, gpus = self._steady.setdefault(name, (host, self.probes[name].sample()))
                hb = w.Heartbeat(
                    protocol=PROTOCOL_VERSION,
                    seq=seq,
                    sent_at=time.time(),
                    host=sample,
                    gpus=gpus,
                )
                c.post(
                    "/agent/v1/heartbeat",
                    content=w.encoder.encode(hb),
                    headers={"content-type": w.MSGPACK, "authorization": f"Node {secret}"},
                )
        finally:
            if own:
                c.close()

    def _beat(self) -> None:
        with httpx.Client(base_url=self.url) as c:
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    self._beat_once(c)
                except httpx.HTTPError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self.server.stop()


def _pane(session: str) -> str:
    return subprocess.run(
        ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
    ).stdout


def _dashboard_process(session: str) -> psutil.Process:
    pid = int(
        subprocess.run(
            ["tmux", "display", "-p", "-t", session, "#{pane_pid}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    proc = psutil.Process(pid)
    for p in [proc, *proc.children(recursive=True)]:
        if any("mlsm" in part for part in p.cmdline()):
            return p
    return proc


def _py_spy(out: str, pid: int, seconds: float) -> subprocess.Popen[bytes] | None:
    """Profile ``pid`` for ``seconds`` into ``out`` (collapsed stacks), when asked: py-spy
    is not a dependency (``pip install py-spy`` into the venv to profile)."""
    if not out:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    argv = [spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-f", "raw", "-o", out]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure_real(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="mlsm-bench-tui-"))
    session = f"mlsm-bench-{os.getpid()}"
    lab = Lab(tmp, args.nodes, args.jobs, args.changing)
    try:
        env = {
            "HOME": str(tmp),
            "MLSM_URL": lab.url,
            "MLSM_TOKEN": lab.token,
            "TERM": "xterm-256color",
        }
        if os.environ.get("PYTHONPATH"):  # lets a before/after run point at another tui/
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        start = time.monotonic()
        subprocess.run(
            [
                "tmux",
                "new-session",
                "-d",
                "-s",
                session,
                "-x",
                "160",
                "-y",
                "48",
                f"env {exports} {MLSM} ui",
            ],
            check=True,
        )
        wait_until(
            lambda: "gpu000" in _pane(session),
            FIRST_DATA_TIMEOUT_S,
            lambda: "data on screen:\n" + _pane(session),
            poll_s=SCREEN_POLL_S,
        )
        first = time.monotonic() - start
        proc = _dashboard_process(session)
        time.sleep(args.settle_s)  # settle: a couple of polls (the sparklines fill in 20)
        spy = _py_spy(args.py_spy, proc.pid, args.idle_s)
        cpu0 = proc.cpu_times()
        t0 = time.monotonic()
        time.sleep(args.idle_s)  # the measured idle period
        cpu1 = proc.cpu_times()
        if spy is not None:
            spy.wait()
        wall = time.monotonic() - t0
        busy = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        rss = proc.memory_info().rss
        screen = _pane(session)
        print(
            f"lab: real master, {args.nodes} nodes x 8 simulated GPUs heartbeating every "
            f"{HEARTBEAT_S:.0f} s, {lab.jobs} jobs; `mlsm ui` in tmux 160x48 (pid {proc.pid})"
        )
        print(f"time to first data on screen: {first * 1000:.0f} ms (from tmux spawn)")
        print(
            f"CPU while idle on the overview ({args.idle_s:.0f} s, polling every 2 s): "
            f"{busy / wall * 100:.1f}% of one core"
        )
        print(f"resident memory: {rss / 2**20:.0f} MiB")
        if args.show:
            print(screen)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        lab.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def measure_fake(args: argparse.Namespace) -> None:
    from tests.tui.fakes import FakeSource, big_lab
    from tui.app import MlsmApp

    proc = psutil.Process()
    app = MlsmApp(FakeSource(lab=big_lab(args.nodes, args.jobs)), poll_s=2.0)
    start = time.monotonic()
    async with app.run_test(size=(160, 48)) as pilot:
        first_at = await pilot_until(
            pilot, lambda: app.first_data_at, "first data", FIRST_DATA_TIMEOUT_S, pause_s=0.01
        )
        first = first_at - start
        await pilot.pause(2.5)  # one more poll so the history is filled and caches are warm
        cpu0 = proc.cpu_times()
        t0 = time.monotonic()
        await asyncio.sleep(args.idle_s)
        cpu1 = proc.cpu_times()
        wall = time.monotonic() - t0
        busy = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        rss = proc.memory_info().rss
        rows = app.screen.query_one("#nodes").row_count
    print(
        f"lab: {args.nodes} nodes x 8 GPUs, {args.jobs} jobs "
        "(FAKE source, static, in process, headless 160x48)"
    )
    print(f"rows on the overview: {rows}")
    print(f"time to first data: {first * 1000:.0f} ms")
    print(
        f"CPU while idle on the overview ({args.idle_s:.0f} s, polling every 2 s): "
        f"{busy / wall * 100:.1f}% of one core"
    )
    print(f"resident memory: {rss / 2**20:.0f} MiB")


async def measure_scroll(args: argparse.Namespace) -> None:
    """Frame time of the jobs table: each key's time until the screen has handled it and
    composed the frame, and the process CPU the key cost until the app was idle again (a
    poll landing between keys is in that figure: its p99 shows the poll's hitch)."""
    from tests.tui.fakes import FakeSource, big_lab
    from tui.app import MlsmApp
    from tui.widgets.table import LabTable

    app = MlsmApp(FakeSource(lab=big_lab(args.nodes, args.jobs)), poll_s=2.0)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot_until(pilot, lambda: app.first_data_at, "first data", FIRST_DATA_TIMEOUT_S)
        app.action_view("jobs")

        def filled() -> LabTable | None:
            tables = app.screen.query("#jobs").results(LabTable)
            return next((t for t in tables if t.row_count), None)

        table = await pilot_until(pilot, filled, "jobs on screen", FIRST_DATA_TIMEOUT_S)
        await pilot.pause(0.5)
        print(f"jobs table: {table.row_count} rows (FAKE source, {args.jobs} jobs, 160x48)")
        for key in ("down", "pagedown", "up", "pageup"):
            frames, cpus = [], []
            for _ in range(args.scroll):
                c0, t0 = time.process_time(), time.perf_counter()
                await pilot.press(key)  # returns once the screen has handled the key
                app.screen._on_timer_update()  # compose the frame now, not at the next tick
                frames.append(time.perf_counter() - t0)
                await pilot.pause()  # idle again (a poll that landed meanwhile is in here)
                cpus.append(time.process_time() - c0)
            print(
                f"{key:>8} x{len(frames)}: frame median {_ms(frames, 0.5)}, p99 "
                f"{_ms(frames, 0.99)}; CPU per key median {_ms(cpus, 0.5)}, p99 {_ms(cpus, 0.99)}"
                f" (cursor at row {table.cursor_row})"
            )


def _ms(values: list[float], q: float) -> str:
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000:.1f} ms"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--real", action="store_true", help="real master + mlsm ui in tmux")
    mode.add_argument("--fake", action="store_true", help="in-process app over the fake lab")
    mode.add_argument(
        "--scroll", type=int, default=0, help="Pilot: N presses of each scroll key, jobs table"
    )
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument(
        "--settle-s",
        type=float,
        default=2 * HEARTBEAT_S + 0.5,
        help="--real: wait this long after the first data before measuring (45: the "
        "history sparklines full, as on a dashboard left open)",
    )
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument(
        "--changing",
        type=int,
        default=None,
        help="--real: only this many nodes' telemetry moves each beat (default: all); the "
        "others resend their first sample, as idle servers with steady readings",
    )
    parser.add_argument("--show", action="store_true", help="print the screen at the end")
    parser.add_argument("--py-spy", default="", help="--real: profile the idle window into FILE")
    args = parser.parse_args()
    if args.scroll:
        asyncio.run(measure_scroll(args))
    elif args.fake or (not args.real and not shutil.which("tmux")):
        asyncio.run(measure_fake(args))
    else:
        if not shutil.which("tmux"):
            raise SystemExit("--real needs tmux")
        measure_real(args)
