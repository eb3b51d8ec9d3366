"""How long from ``ProcessRuntime.start()`` to the job's first instruction.

The job is ``python -S -c`` writing ``time.time()`` to a file as its first statement, so
the figure includes that interpreter's own start-up. The same job started directly with
``subprocess.Popen`` (no runtime, no shim) is the baseline; the difference is what the
runtime and its shim add. Also how long ``stop()`` takes to return for a running job (it
only signals and arms the kill: the unit test asserts that it returns within the grace,
this prints the time).

    .venv/bin/python tests/bench/bench_job_start.py [RUNS]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from agent.runtimes.base import RuntimeContext  # noqa: E402
from agent.runtimes.process import ProcessRuntime  # noqa: E402
from mlsm.wire.agent import JobSpec  # noqa: E402
from tests.support.wait import wait_until  # noqa: E402

RUNS = 30
WAIT_S = 10.0
FILE_POLL_S = 0.0005  # the figure is in ms: look for the file far more often than that
CODE = "import time; t = time.time(); open('first.txt', 'w').write(repr(t))"
#: A job that is running when it is stopped (SIGTERM ends it at once).
SLEEPER = "import time; open('ready', 'w').close(); time.sleep(60)"
STOP_GRACE_S = 10.0


def _read_time(path: Path) -> float | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return float(text) if text else None


def _wait_file(path: Path) -> float:
    return wait_until(lambda: _read_time(path), WAIT_S, str(path), poll_s=FILE_POLL_S)


def _stats(name: str, ms: list[float]) -> None:
    ms = sorted(ms)
    p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
    print(
        f"{name:<34} median {statistics.median(ms):6.1f} ms   p90 {p90:6.1f} ms   "
        f"min {ms[0]:6.1f} ms   ({len(ms)} runs)"
    )


def main(runs: int = RUNS) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        rt = ProcessRuntime(RuntimeContext(node_name="bench", agent_data=data))
        via_runtime, direct, start_call, stop_call = [], [], [], []
        for i in range(runs):
            job_dir = data / "jobs" / str(i)
            t0 = time.time()
            h = rt.start(JobSpec(job_id=i, argv=[sys.executable, "-S", "-c", CODE]), job_dir)
            start_call.append((time.time() - t0) * 1000)
            via_runtime.append((_wait_file(job_dir / "first.txt") - t0) * 1000)
            wait_until(h.poll, WAIT_S, f"job {i} to end", poll_s=0.001)

            job_dir = data / "jobs" / f"stop-{i}"
            h = rt.start(
                JobSpec(job_id=runs + i, argv=[sys.executable, "-S", "-c", SLEEPER]), job_dir
            )
            wait_until((job_dir / "ready").exists, WAIT_S, f"job {runs + i} to start")
            t0 = time.time()
            h.stop("bench", "cancelled", grace_s=STOP_GRACE_S)
            stop_call.append((time.time() - t0) * 1000)
            wait_until(h.poll, WAIT_S, f"job {runs + i} to end", poll_s=0.001)

            d = data / "direct" / str(i)
            d.mkdir(parents=True)
            t0 = time.time()
            p = subprocess.Popen([sys.executable, "-S", "-c", CODE], cwd=d)
            direct.append((_wait_file(d / "first.txt") - t0) * 1000)
            p.wait()
    print(f"job start latency, {runs} runs ({sys.executable})")
    _stats("start() -> first instruction", via_runtime)
    _stats("Popen -> first instruction (base)", direct)
    _stats("start() call returns", start_call)
    _stats("stop() call returns (job running)", stop_call)
    overhead = [a - b for a, b in zip(sorted(via_runtime), sorted(direct), strict=True)]
    _stats("added by runtime + shim", overhead)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else RUNS)
