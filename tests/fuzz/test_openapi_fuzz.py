"""A bounded schemathesis run against a real master's OpenAPI document, as a superadmin.

Every operation in ``/schema/openapi.json`` is fuzzed (coverage, fuzzing and stateful
phases, valid and invalid data). The run fails on any 5xx, and on a response whose status
code, content type, headers or body the document does not describe. A 5xx found here is a
bug of the master, to fix where it arises, never to exclude.

Two budgets, chosen by ``MLSM_FUZZ``:

- ``quick`` (the default, what ``scripts/test`` runs): few examples per operation, the
  stateful phase short; about a minute on 2 cores.
- ``full`` (``.ci/run``'s own ``fuzz`` phase): more examples, all phases, repeated until
  180 s of fuzzing are spent (about 4 minutes in all on 2 cores).

The summary (operations fuzzed, test cases run, the seed) is printed, and the JSON report
stays in the test's tmp dir. ``MLSM_FUZZ_SEED=<seed>`` replays a run with that seed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.helpers import ADMIN, ADMIN_PASSWORD, Master

REPO = Path(__file__).resolve().parents[2]
ST = str(Path(sys.executable).with_name("st"))
#: Every check that holds for this API: no 5xx, and responses as documented.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
REQUEST_TIMEOUT_S = 30.0
#: Logins are rate-limited per minute; the fuzzer logs in again after each logout it makes.
FUZZ_LOGIN_ATTEMPTS_PER_MINUTE = 100_000
STAND_IN = "fuzz-stand-in"
#: The account whose session sends the fuzzed password changes (see the hooks).
PASSWORD_CHANGER = "fuzz-password-changer"
#: How long a run may take past its fuzzing budget (loading, phases without a time box,
#: a slow shared machine) before it is stopped as hung.
RUN_SLACK_S = 480


@dataclass(frozen=True)
class Budget:
    examples: int  # per operation and phase
    phases: str
    max_time_s: int | None  # None: every phase runs its examples once
    workers: int


#: One worker: schemathesis runs workers as threads, and on Python 3.11 two threads building
#: ASTs at once (hypothesis does, drawing some strategies) can fail inside CPython with
#: "SystemError: AST constructor recursion depth mismatch" (CPython gh-106905, fixed after 3.11.7).
FUZZ_WORKERS = 1
BUDGETS = {
    "quick": Budget(
        examples=3, phases="coverage,fuzzing,stateful", max_time_s=None, workers=FUZZ_WORKERS
    ),
    "full": Budget(
        examples=50, phases="coverage,fuzzing,stateful", max_time_s=180, workers=FUZZ_WORKERS
    ),
}


MODE = os.environ.get("MLSM_FUZZ", "quick")
SEED = os.environ.get("MLSM_FUZZ_SEED", "")
BUDGET = BUDGETS.get(MODE, BUDGETS["quick"])
RUN_LIMIT_S = (BUDGET.max_time_s or 0) + RUN_SLACK_S
#: pytest's own limit for this test: the run's, plus the master's start and stop.
TEST_TIMEOUT_S = RUN_LIMIT_S + 60


@pytest.fixture
def fuzz_master(tmp_path: Path) -> Iterator[Master]:
    m = Master(
        tmp_path / "master",
        env={"MLSM_LOGIN_ATTEMPTS_PER_MINUTE": str(FUZZ_LOGIN_ATTEMPTS_PER_MINUTE)},
    )
    m.start()
    try:
        m.create_user("member", STAND_IN)
        m.create_user("member", PASSWORD_CHANGER)
        yield m
    finally:
        m.stop()


def _operations(url: str) -> list[str]:
    doc = httpx.get(f"{url}/schema/openapi.json", timeout=REQUEST_TIMEOUT_S).json()
    methods = {"get", "put", "post", "patch", "delete"}
    return [f"{m.upper()} {p}" for p, item in doc["paths"].items() for m in item if m in methods]


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_openapi_fuzz(
    fuzz_master: Master, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if MODE not in BUDGETS:
        pytest.fail(f"MLSM_FUZZ={MODE!r}: expected one of {sorted(BUDGETS)}", pytrace=False)
    budget = BUDGET
    report_path = tmp_path / "schemathesis.json"
    url = fuzz_master.url
    args = [
        ST,
        "run",
        f"{url}/schema/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        budget.phases,
        "--max-examples",
        str(budget.examples),
        "--workers",
        str(budget.workers),
        "--request-timeout",
        str(REQUEST_TIMEOUT_S),
        "--report",
        "json",
        "--report-json-path",
        str(report_path),
        "--output-truncate",
        "false",
    ]
    if budget.max_time_s is not None:
        args += ["--max-time", str(budget.max_time_s)]
    if SEED:
        args += ["--seed", SEED]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "SCHEMATHESIS_HOOKS": "tests.fuzz.schemathesis_hooks",
        "MLSM_FUZZ_URL": url,
        "MLSM_FUZZ_USER": ADMIN,
        "MLSM_FUZZ_PASSWORD": ADMIN_PASSWORD,
        "MLSM_FUZZ_STAND_IN": STAND_IN,
        "MLSM_FUZZ_PASSWORD_CHANGER_TOKEN": fuzz_master.login(PASSWORD_CHANGER),
        "NO_COLOR": "1",
    }
    proc = subprocess.run(
        args,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT_S,
        check=False,
    )
    assert report_path.exists(), proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(report_path.read_text())
    operations = _operations(url)
    cases = report["test_cases"]
    summary = (
        f"schemathesis: {report['operations']['tested']} of {len(operations)} operations, "
        f"{cases['generated']} test cases, {cases['unique_failures']} failures, "
        f"{cases['errored']} errored, {report['running_time']:.0f} s, "
        f"phases {budget.phases}, seed {report['seed']}"
    )
    with capsys.disabled():
        print(f"\n{summary}")
    (tmp_path / "summary.txt").write_text(summary + "\n")
    assert proc.returncode == 0, f"{summary}\n{proc.stdout[-12000:]}\n{proc.stderr[-4000:]}"
    assert not report["failures"] and not report["errors"], summary
    assert report["operations"]["tested"] == len(operations), summary
    server_errors = [
        r
        for r in fuzz_master.log_records()
        if r.get("status", 0) >= 500 or r.get("level") == "error"
    ]
    assert not server_errors, server_errors[:5]
