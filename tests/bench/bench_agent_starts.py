"""How fast one agent starts a stream of jobs: N trivial jobs submitted through the API a
fixed gap apart (no CLI in the way), each writing its own start time.

    python tests/bench/bench_agent_starts.py [--jobs 60] [--gap 0.05]

Prints the submit-to-start delay (median, p90, max) and how long until the master shows
every job ended. When the agent starts jobs slower than they come, the delay grows along
the stream. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx
from benchlab import BenchLab, wait

END_TIMEOUT_S = 300.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=60)
    ap.add_argument("--gap", type=float, default=0.05)
    args = ap.parse_args()
    with BenchLab("mlsm-bench-starts-") as lab:
        lab.start_master()
        lab.start_agent("bench")
        lab.wait_online()
        out = lab.dir / "starts"
        out.mkdir()
        submitted: dict[int, tuple[int, float]] = {}
        with httpx.Client(base_url=lab.url, headers=lab.headers) as c:
            t0 = time.time()
            for i in range(args.jobs):
                argv = ["/bin/sh", "-c", f"date +%s.%N > {out}/{i}"]
                at = time.time()
                job = c.post("/api/v1/jobs", json={"argv": argv}).json()["job"]
                submitted[job["id"]] = (i, at)
                time.sleep(args.gap)

            def all_ended() -> bool:
                jobs = c.get("/api/v1/jobs", params={"all": "true", "limit": 10000}).json()
                ended = {j["id"] for j in jobs["jobs"] if j["state"] == "succeeded"}
                return set(submitted) <= ended

            wait(all_ended, END_TIMEOUT_S, "every job ended")
            t_end = time.time()
        delays = sorted(
            (float((out / str(i)).read_text()) - at) * 1000 for i, at in submitted.values()
        )
        print(
            f"{args.jobs} jobs {args.gap * 1000:.0f} ms apart: submit->start median "
            f"{statistics.median(delays):.0f} ms, p90 {delays[int(len(delays) * 0.9) - 1]:.0f} "
            f"ms, max {delays[-1]:.0f} ms; all ended {t_end - t0:.2f} s after the first submit"
        )


if __name__ == "__main__":
    main()
