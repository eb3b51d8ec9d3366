"""The soak: a real master and 4 real agents on loopback, a stream of short and long jobs,
and a seeded chaos loop, then checks that nothing was lost (issue 19, point 6).

    .venv/bin/python tests/bench/soak.py [--minutes 60] [--seed N] [--keep] [--report F]

Faults, at random intervals from the seeded RNG: ``kill -9`` of an agent and its restart
(same data dir: it must re-adopt its jobs), ``kill -9`` of the master and its restart (same
database; only in the first part of the run, so that the master's memory and open files can
be compared over one process afterwards), a cut of one agent's connection (the agent
reaches the master through a small asyncio TCP proxy in this process that drops every
connection and black-holes new ones, then lets them through again), and a full disk on one
node (its data dir is a tmpfs of a few MiB, filled with a file, then freed).

Every job runs :data:`JOB_SCRIPT`: it writes numbered lines naming its id and attempt to
its log and start/alive/end markers (attempt, node, pid, time) to a directory outside the
agents' disks. After the run, faults stop, the lab settles and these are checked (PASS/FAIL
each): every acknowledged job is final and its state matches its markers; every finished
job's log on the master is byte-equal to its node's file; no job ran twice at once; the
audit chain verifies; the master's RSS and open files did not grow. Exit status 1 when a
check fails. Why one piece: the lab, the fault injectors and the checks share one run's
records, and the script is run as one file by CI (``tests/soak/test_soak.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: make mlsm and tests importable

from mlsm.client import Client  # noqa: E402
from mlsm.wire import api  # noqa: E402
from tests.integration.lab import Lab, kill  # noqa: E402
from tests.support.cutproxy import CutProxy  # noqa: E402
from tests.support.wait import wait_until  # noqa: E402

AGENTS = ("s1", "s2", "s3", "s4")
CUT_AGENT = "s3"  # reaches the master through the proxy
DISK_AGENT = "s4"  # its data dir is a small tmpfs
DISK_SIZE = "16m"
GPUS = "2xA100-80GB"
#: The master's lease in the soak: a cut longer than this loses the node's jobs.
LEASE_S = 10.0
MASTER_ENV = {"MLSM_NODE_LEASE": str(LEASE_S), "MLSM_LOG_LEVEL": "warning"}
# The job stream
SUBMIT_MEAN_GAP_S = 1.5
LONG_SHARE, RETRY_SHARE, FAIL_SHARE, GPU_SHARE = 0.15, 0.3, 0.1, 0.5
SHORT_LINES, SHORT_STEP_S = (3, 12), 0.3
LONG_LINES, LONG_STEP_S = (60, 75), 1.0
FAIL_CODE = 3
# The chaos loop
GAP_S = (6.0, 20.0)  # between two faults
DOWN_S = (0.0, 4.0)  # how long a killed process stays down
CUT_S = (2.0, 2.0 * LEASE_S)  # how long a connection stays cut (some past the lease)
FULL_S = (5.0, 20.0)  # how long the disk stays full
MASTER_KILLS_UNTIL = 0.4  # share of the run with master kills
FILL_CHUNK = 1 << 20
# Settling and the checks
SETTLE_S = 300.0  # after the faults stop: every job final within this
RESTART_S = 60.0
SAMPLE_S = 60.0
WARMUP_S = 60.0  # samples this soon after a master start are not compared
RSS_GROWTH_LIMIT_MIB = 24.0
FD_GROWTH_LIMIT = 16
DETAIL_LINES = 12
LIST_LIMIT = 10_000  # the master's largest page of jobs

#: argv: sh -c JOB_SCRIPT soak-job MARKERS LINES STEP_S CODE. Markers live outside the
#: agents' data dirs (a full node disk cannot hide them); a failed log write ends the job
#: with 70, so a succeeded job wrote every line.
JOB_SCRIPT = r"""
d="$1/$MLSM_JOB_ID"; mkdir -p "$d"; m="$d/$MLSM_ATTEMPT.$MLSM_NODE.$$"
now() { date +%s.%N; }
echo "start $(now)" >> "$m"
trap 'echo "term $(now)" >> "$m"; exit 143' TERM INT
i=0
while [ "$i" -lt "$2" ]; do
    i=$((i + 1))
    echo "job $MLSM_JOB_ID attempt $MLSM_ATTEMPT line $i" || { echo "end $(now) 70" >> "$m"; exit 70; }
    echo "alive $(now)" >> "$m"
    sleep "$3"
done
echo "end $(now) $4" >> "$m"
exit "$4"
"""
JOB_TAG = "soak-job"


def job_argv(markers: Path) -> list[str]:
    """The argv of a soak job before its LINES STEP_S CODE."""
    return ["sh", "-c", JOB_SCRIPT, JOB_TAG, str(markers)]


@dataclass
class Planned:
    lines: int
    code: int
    retries: int


@dataclass
class Run:
    started: float = field(default_factory=time.monotonic)
    acked: dict[int, Planned] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    skipped: dict[str, str] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


# ---------------------------------------------------------------------------- the soak
class Soak:
    def __init__(self, minutes: float, seed: int, root: Path) -> None:
        self.duration = minutes * 60.0
        self.seed = seed
        self.root = root
        self.markers = root / "markers"
        self.markers.mkdir()
        self.lab = Lab(root / "lab")
        self.run = Run()
        self.stop = threading.Event()  # the job stream ends
        self.done = threading.Event()  # the sampling ends
        self.proxy: CutProxy | None = None
        self.disk: Path | None = None
        self.token = ""

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        self.lab.start_master(None, None, **MASTER_ENV)
        self.token = self.lab.add_user("soaker")
        self.proxy = CutProxy(self.lab.port)
        disk = self.lab.root / "agents" / DISK_AGENT
        disk.mkdir(parents=True)
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0755", "tmpfs", str(disk)],
            capture_output=True,
            text=True,
            check=False,
        )
        if mounted.returncode == 0:
            self.disk = disk
        else:
            why = mounted.stderr.strip() or f"mount exited {mounted.returncode}"
            self.run.skipped["disk_full"] = f"no tmpfs for {DISK_AGENT}'s data dir: {why}"
        for name in AGENTS:
            self.start_agent(name, wait=True)

    def start_agent(self, name: str, wait: bool = False) -> None:
        master = self.proxy.url if name == CUT_AGENT and self.proxy else ""
        self.lab.start_agent(name, gpus=GPUS, master=master, wait=wait)

    def elapsed(self) -> float:
        return time.monotonic() - self.run.started

    # ------------------------------------------------------------------ the job stream
    def submitter(self) -> None:
        rng = random.Random(self.seed * 2 + 1)
        with Client(self.lab.url, self.token) as client:
            while not self.stop.wait(rng.expovariate(1.0 / SUBMIT_MEAN_GAP_S)):
                left = self.duration - self.elapsed()
                long = rng.random() < LONG_SHARE and left > LONG_LINES[1] * LONG_STEP_S
                lines = rng.randint(*(LONG_LINES if long else SHORT_LINES))
                step = LONG_STEP_S if long else SHORT_STEP_S
                code = FAIL_CODE if rng.random() < FAIL_SHARE else 0
                retries = 2 if rng.random() < RETRY_SHARE else 0
                spec = api.JobSubmit(
                    argv=[*job_argv(self.markers), str(lines), str(step), str(code)],
                    name=f"soak-{'long' if long else 'short'}",
                    gpus=1 if rng.random() < GPU_SHARE else 0,
                    retries=retries,
                )
                try:
                    reply = client.jobs.submit(spec)
                except Exception as exc:  # the master may be down: not acknowledged
                    with self.run.lock:
                        self.run.refused[type(exc).__name__] += 1
                    continue
                with self.run.lock:
                    self.run.acked[reply.job.id] = Planned(lines, code, retries)

    # ------------------------------------------------------------------ memory samples
    def sampler(self) -> None:
        """A sample each minute, through the run and the settling, until :attr:`done`."""
        while True:
            self.sample()
            if self.done.wait(SAMPLE_S):
                return

    def sample(self, final: bool = False) -> None:
        proc = self.lab.master_proc
        row: dict[str, Any] = {"t": round(self.elapsed()), "final": final}
        with contextlib.suppress(psutil.Error, AttributeError):
            p = psutil.Process(proc.pid)  # type: ignore[union-attr]
            row.update(
                pid=p.pid,
                up_s=round(time.time() - p.create_time()),
                rss_mib=round(p.memory_info().rss / 2**20, 1),
                fds=p.num_fds(),
            )
        with self.run.lock:
            self.run.samples.append(row)

    # ------------------------------------------------------------------ the chaos loop
    def chaos(self) -> None:
        rng = random.Random(self.seed)
        kinds = ["agent_kill", "master_kill", "cut", "disk_full"]
        others = [k for k in kinds if k != "master_kill"]
        # One of each kind first (the master's while it may still be killed), then at random.
        first = ["master_kill", *rng.sample(others, len(others))]
        while self.elapsed() < self.duration:
            time.sleep(rng.uniform(*GAP_S))
            if self.elapsed() >= self.duration:
                break
            kind = first.pop(0) if first else rng.choice(kinds)
            if kind == "master_kill" and self.elapsed() > MASTER_KILLS_UNTIL * self.duration:
                kind = rng.choice(others)
            if kind in self.run.skipped:
                continue
            self.fault(kind, rng)

    def fault(self, kind: str, rng: random.Random) -> None:
        print(f"[{self.elapsed():7.1f}s] fault {kind}", flush=True)
        if kind == "agent_kill":
            name = rng.choice(AGENTS)
            kill(self.lab.agents[name].proc, signal.SIGKILL)
            time.sleep(rng.uniform(*DOWN_S))
            self.start_agent(name)
        elif kind == "master_kill":
            self.lab.stop_master(signal.SIGKILL)
            time.sleep(rng.uniform(*DOWN_S))
            self.lab.start_master(None, None, **MASTER_ENV)
        elif kind == "cut":
            assert self.proxy is not None
            self.proxy.cut()
            time.sleep(rng.uniform(*CUT_S))
            self.proxy.restore()
        elif kind == "disk_full":
            assert self.disk is not None
            filler = self.fill(self.disk)
            time.sleep(rng.uniform(*FULL_S))
            filler.unlink()
        self.run.faults[kind] += 1

    @staticmethod
    def fill(disk: Path) -> Path:
        """Write a file until the filesystem says it is full."""
        path = disk / "soak-fill"
        chunk = b"\0" * FILL_CHUNK
        with open(path, "wb", buffering=0) as fh:
            while chunk:
                try:
                    fh.write(chunk)
                except OSError:
                    chunk = chunk[: len(chunk) // 2]
        return path

    # ------------------------------------------------------------------ settle
    def settle(self) -> list[int]:
        """Every process back up; wait for every acknowledged job to be final."""
        if self.lab.master_proc is None or self.lab.master_proc.poll() is not None:
            self.lab.start_master(None, None, **MASTER_ENV)
        for name in AGENTS:
            if self.lab.agents[name].proc.poll() is not None:
                self.start_agent(name)
        for name in AGENTS:
            self.lab.wait_node_state(name, "online", RESTART_S)
        ids = set(self.run.acked)

        def open_ids() -> set[int]:
            return {j.id for j in self.lab.admin.jobs.list(limit=LIST_LIMIT).jobs} & ids

        pending: set[int] = set()

        def all_final() -> bool:
            nonlocal pending
            pending = open_ids()
            return not pending

        with contextlib.suppress(AssertionError):
            wait_until(all_final, SETTLE_S, "every acknowledged job to be final", poll_s=1.0)
        return sorted(pending)

    # ------------------------------------------------------------------ the whole run
    def main(self) -> int:
        threads = [
            threading.Thread(target=self.submitter, daemon=True),
            threading.Thread(target=self.sampler, daemon=True),
        ]
        try:
            self.setup()
            self.run.started = time.monotonic()
            for t in threads:
                t.start()
            self.chaos()
            self.stop.set()
            threads[0].join()
            print(f"[{self.elapsed():7.1f}s] faults stopped; settling", flush=True)
            pending = self.settle()
            self.done.set()
            threads[1].join()
            self.sample(final=True)
            results = Checks(self, pending).all()
        finally:
            self.stop.set()
            self.done.set()
            self.close()
        return self.report(results)

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        self.lab.close()
        if self.disk is not None:
            subprocess.run(["umount", "-l", str(self.disk)], check=False)

    def report(self, results: list[tuple[str, bool, list[str]]]) -> int:
        r = self.run
        print("\n==== soak: seed", self.seed, f"minutes {self.duration / 60:g}")
        print(f"jobs acknowledged {len(r.acked)}, submissions refused {dict(r.refused)}")
        print("faults injected", dict(r.faults), "skipped", r.skipped or "none")
        print("master per minute (t s, pid, uptime s, RSS MiB, fds):")
        for s in r.samples:
            print(
                f"  {s['t']:6} {s.get('pid', '-')!s:>8} {s.get('up_s', '-')!s:>6}"
                f" {s.get('rss_mib', '-')!s:>8} {s.get('fds', '-')!s:>5}"
            )
        for name, ok, details in results:
            print(f"{'PASS' if ok else 'FAIL'}  {name}")
            for line in details[:DETAIL_LINES]:
                print(f"      {line}")
            if len(details) > DETAIL_LINES:
                print(f"      ... {len(details) - DETAIL_LINES} more")
        self.summary = {
            "seed": self.seed,
            "minutes": self.duration / 60,
            "jobs_acknowledged": len(r.acked),
            "refused": dict(r.refused),
            "faults": dict(r.faults),
            "skipped": r.skipped,
            "samples": r.samples,
            "checks": {n: {"ok": ok, "details": d} for n, ok, d in results},
        }
        return 0 if all(ok for _, ok, _ in results) else 1


# ---------------------------------------------------------------------------- the checks
@dataclass
class Marker:
    attempt: int
    node: str
    pid: int
    start: float
    last: float
    end_code: int | None
    termed: bool


def read_markers(d: Path) -> list[Marker]:
    out = []
    for f in sorted(d.iterdir()) if d.is_dir() else []:
        attempt, node, pid = f.name.split(".")
        start = last = 0.0
        code: int | None = None
        termed = False
        for line in f.read_text().splitlines():
            word, *rest = line.split()
            if not rest:
                continue  # a line cut short by a kill
            t = float(rest[0])
            if word == "start":
                start = last = t
            last = max(last, t)
            if word == "end" and len(rest) > 1:
                code = int(rest[1])
            termed |= word == "term"
        out.append(Marker(int(attempt), node, int(pid), start, last, code, termed))
    return out


class Checks:
    def __init__(self, soak: Soak, pending: list[int]) -> None:
        self.soak = soak
        self.pending = pending
        self.jobs: dict[int, api.Job] = {}
        for jid in sorted(soak.run.acked):
            self.jobs[jid] = soak.lab.admin.jobs.get(jid)

    def all(self) -> list[tuple[str, bool, list[str]]]:
        return [
            self.states(),
            self.logs(),
            self.no_overlap(),
            self.audit(),
            self.growth(),
        ]

    def states(self) -> tuple[str, bool, list[str]]:
        bad: list[str] = [f"job {j} not final after {SETTLE_S:g} s" for j in self.pending]
        seen: Counter[str] = Counter()
        for jid, job in self.jobs.items():
            seen[job.state] += 1
            planned = self.soak.run.acked[jid]
            marks = read_markers(self.soak.markers / str(jid))
            final = [m for m in marks if m.attempt == job.attempt and m.node == job.node]
            ran_ok = [m for m in final if m.end_code == 0]
            if job.state not in api.FINAL_STATES:
                continue  # named above
            if job.state == "succeeded":
                if not ran_ok:
                    bad.append(f"job {jid} succeeded without a completed run: {marks}")
                elif not self.wrote_every_line(job, planned):
                    bad.append(f"job {jid} succeeded but its node log lacks lines")
            elif ran_ok:
                bad.append(
                    f"job {jid} {job.state} ({job.reason!r}) but attempt "
                    f"{job.attempt} on {job.node} ran to completion with exit 0"
                )
            elif not job.reason:
                bad.append(f"job {jid} {job.state} without a reason")
            elif job.state == "failed" and job.exit_code is not None:
                codes = {m.end_code for m in final if m.end_code is not None}
                if codes and job.exit_code not in codes:
                    bad.append(f"job {jid} failed with {job.exit_code}, its run ended {codes}")
        return (
            f"1. every acknowledged job is final, as it really ended ({dict(seen)})",
            not bad,
            bad,
        )

    def node_log(self, job: api.Job) -> bytes | None:
        if not job.node or job.outputs_removed_at is not None:
            return None
        try:
            return self.soak.lab.agents[job.node].job_log(job.id)
        except (FileNotFoundError, KeyError):
            return None

    def wrote_every_line(self, job: api.Job, planned: Planned) -> bool:
        log = self.node_log(job)
        want = [f"job {job.id} attempt {job.attempt} line {i}" for i in range(1, planned.lines + 1)]
        got = (log or b"").decode(errors="replace").splitlines()
        return log is not None and all(w in got for w in want)

    def logs(self) -> tuple[str, bool, list[str]]:
        bad, compared, without = [], 0, 0
        for jid, job in self.jobs.items():
            if job.state not in api.FINAL_STATES or not job.node:
                continue
            on_node = self.node_log(job)
            if on_node is None:
                without += 1
                continue
            on_master = b"".join(self.soak.lab.admin.jobs.log(jid))
            compared += 1
            if on_master != on_node:
                bad.append(
                    f"job {jid} ({job.state} on {job.node}): master has "
                    f"{len(on_master)} bytes, node {len(on_node)}"
                )
        name = (
            f"2. finished jobs' logs on the master == the node's file ({compared} compared, "
            f"{without} with no file on the node)"
        )
        return (name, not bad and compared > 0, bad)

    def no_overlap(self) -> tuple[str, bool, list[str]]:
        bad = []
        for jid in self.jobs:
            marks = sorted(read_markers(self.soak.markers / str(jid)), key=lambda m: m.start)
            for a, b in itertools.pairwise(marks):
                if b.start < a.last:
                    bad.append(
                        f"job {jid}: attempt {a.attempt} on {a.node} (pid {a.pid}) "
                        f"ran until {a.last:.2f}, attempt {b.attempt} on {b.node} "
                        f"started at {b.start:.2f}"
                    )
        left = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if JOB_TAG in (p.info["cmdline"] or []) and str(self.soak.markers) in (
                    p.info["cmdline"] or []
                ):
                    left.append(f"job process {p.pid} still running after every job ended")
        return ("3. no job ran twice at the same time", not bad and not left, bad + left)

    def audit(self) -> tuple[str, bool, list[str]]:
        v = self.soak.lab.admin.audit.verify()
        return (
            f"4. the audit chain verifies ({v.rows} rows)",
            v.ok,
            [] if v.ok else [f"first broken row {v.first_broken}: {v.message}"],
        )

    def growth(self) -> tuple[str, bool, list[str]]:
        samples = self.soak.run.samples
        last_pid = samples[-1].get("pid")
        mine = [s for s in samples if s.get("pid") == last_pid and s["up_s"] >= WARMUP_S]
        if len(mine) < 2:
            return (
                "5. master memory and open files flat",
                False,
                [f"only {len(mine)} samples of the last master after its warm-up"],
            )
        k = max(1, len(mine) // 3)
        rss0 = statistics.median(s["rss_mib"] for s in mine[:k])
        rss1 = statistics.median(s["rss_mib"] for s in mine[-k:])
        fd0 = statistics.median(s["fds"] for s in mine[:k])
        fd1 = statistics.median(s["fds"] for s in mine[-k:])
        ok = rss1 - rss0 <= RSS_GROWTH_LIMIT_MIB and fd1 - fd0 <= FD_GROWTH_LIMIT
        name = (
            f"5. master memory and open files flat (RSS {rss0:g} -> {rss1:g} MiB, "
            f"fds {fd0:g} -> {fd1:g}, over {len(mine)} samples of pid {last_pid})"
        )
        return (name, ok, [])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--keep", action="store_true", help="keep the lab's directory")
    ap.add_argument("--report", type=Path, help="write the figures as JSON here")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mlsm-soak-"))
    soak = Soak(args.minutes, args.seed, root)
    rc = soak.main()
    if args.report:
        args.report.write_text(json.dumps(soak.summary, indent=1))
    if args.keep or rc:
        print("lab directory kept:", root)
    else:
        shutil.rmtree(root, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
