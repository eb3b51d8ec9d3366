"""Code in: ``mlsm submit`` ships the directory it runs in, the job runs in its own copy.

A real master and real agents on loopback, the real CLI run from a fresh directory: the
README's first example, ignore rules and a hostile link, resubmit dedup measured by the
bytes the master received, arrays and retries sharing one snapshot (fetched once per node),
a member who cannot use another member's snapshot, and the lab's limits. On SQLite and
PostgreSQL both.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlsm.bulk import Manifest, build_manifest, encode_frame, encode_manifest
from mlsm.bulk.frames import NO_INDEX, Flag
from tests.integration.helpers import BOTH_DATABASES
from tests.integration.lab import Lab
from tests.support.wait import wait_until

JOB_DEADLINE_S = 60.0
TRAIN_PY = "import os\nprint('trained in', os.getcwd(), 'out', os.environ['MLSM_OUTPUT_DIR'])\n"


@pytest.fixture(scope="module", params=BOTH_DATABASES)
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp(f"code-{request.param}")) as lab:
        if request.param == "postgresql":
            lab.database_url = str(request.getfixturevalue("module_postgres_url"))
        lab.start_master()
        lab.start_agent("ca", gpus="2xA100-80GB")
        yield lab


def _project(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
    return root


def _received(lab: Lab, since: int) -> list[int]:
    """The file bytes the master received in each code upload audited after row ``since``."""
    rows = lab.admin.call("GET", "/api/v1/audit", params={"action": "code.upload"})
    return [r["details"].get("received_bytes", 0) for r in rows if r["id"] > since]


def _last_audit_id(lab: Lab) -> int:
    rows = lab.admin.call("GET", "/api/v1/audit", params={"limit": 1})
    return rows[0]["id"] if rows else 0


def test_readme_example_runs_in_the_shipped_directory(lab: Lab, tmp_path: Path) -> None:
    proj = _project(tmp_path / "proj", {"train.py": TRAIN_PY, "data/x.txt": "x"})
    res = lab.cli("submit", "--gpus", "1", "--", "python3", "train.py", cwd=proj)
    assert res.returncode == 0, res.stderr
    assert "shipping" in res.stderr and "2 file(s)" in res.stderr, res.stderr
    jid = int(re.search(r"submitted job (\d+)", res.stdout).group(1))
    job = lab.wait_job(jid, timeout=JOB_DEADLINE_S)
    log = lab.log(jid).decode()
    assert job.state == "succeeded", log
    job_dir = lab.agents["ca"].data_dir / "jobs" / str(jid)
    assert f"trained in {job_dir / 'code'} out {job_dir}" in log
    assert (job_dir / "code" / "data" / "x.txt").read_text() == "x"
    assert job.code and len(job.code) == 64


def test_ignored_files_stay_behind_and_git_only_when_asked(lab: Lab, tmp_path: Path) -> None:
    proj = _project(
        tmp_path / "proj",
        {
            "run.sh": "ls -a . sub\n",
            ".gitignore": "*.ckpt\nbig/\n",
            ".mlsmignore": "secret.txt\n",
            "model.ckpt": "weights",
            "big/a": "a",
            "secret.txt": "s",
            "sub/keep.txt": "k",
            ".git/HEAD": "ref: refs/heads/main\n",
        },
    )
    jid = lab.submit("--", "sh", "run.sh", cwd=proj)
    assert lab.wait_job(jid, timeout=JOB_DEADLINE_S).state == "succeeded"
    code = lab.agents["ca"].data_dir / "jobs" / str(jid) / "code"
    shipped = sorted(str(p.relative_to(code)) for p in code.rglob("*"))
    assert shipped == [".gitignore", ".mlsmignore", "run.sh", "sub", "sub/keep.txt"]
    jid = lab.submit("--code-include-git", "--", "sh", "run.sh", cwd=proj)
    assert lab.wait_job(jid, timeout=JOB_DEADLINE_S).state == "succeeded"
    code = lab.agents["ca"].data_dir / "jobs" / str(jid) / "code"
    assert (code / ".git" / "HEAD").read_text().startswith("ref:")


def test_a_link_out_of_the_tree_is_refused_by_name_before_anything_is_sent(
    lab: Lab, tmp_path: Path
) -> None:
    proj = _project(tmp_path / "proj", {"train.py": TRAIN_PY})
    (proj / "passwd").symlink_to("/etc/passwd")
    (proj / "up").symlink_to("../elsewhere")
    os.mkfifo(proj / "pipe")
    before = _last_audit_id(lab)
    res = lab.cli("submit", "--", "python3", "train.py", cwd=proj)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for name in ("'passwd'", "'up'", "'pipe'", "/etc/passwd", "a FIFO"):
        assert name in lines[0]
    rows = lab.admin.call("GET", "/api/v1/audit", params={"action": "code.*"})
    assert not [r for r in rows if r["id"] > before]


def test_resubmit_sends_only_the_changed_file(lab: Lab, tmp_path: Path) -> None:
    files: dict[str, str | bytes] = {f"lib/m{i}.py": f"# module {i}\n" * 200 for i in range(30)}
    files["train.py"] = TRAIN_PY + "# the resubmit test's own\n"  # no blob another test sent
    proj = _project(tmp_path / "proj", files)
    total = sum(len(v) for v in files.values())
    before = _last_audit_id(lab)
    first = lab.submit("--", "python3", "train.py", cwd=proj)
    assert _received(lab, before) == [total]
    (proj / "lib" / "m7.py").write_text("# changed\n")
    before = _last_audit_id(lab)
    second = lab.submit("--", "python3", "train.py", cwd=proj)
    assert _received(lab, before) == [len("# changed\n")]
    before = _last_audit_id(lab)
    lab.submit("--", "python3", "train.py", cwd=proj)
    assert _received(lab, before) == []  # nothing new: no upload at all
    for jid in (first, second):
        assert lab.wait_job(jid, timeout=JOB_DEADLINE_S).state == "succeeded"
    code = lab.agents["ca"].data_dir / "jobs" / str(second) / "code"
    assert (code / "lib" / "m7.py").read_text() == "# changed\n"


def test_array_tasks_share_one_snapshot_fetched_once_per_node(lab: Lab, tmp_path: Path) -> None:
    proj = _project(
        tmp_path / "proj",
        {
            "task.py": "import os; print('task', os.environ['MLSM_ARRAY_INDEX'])\n",
            "blob.bin": os.urandom(50_000),
        },
    )
    res = lab.cli("submit", "--json", "--array", "0-3", "--", "python3", "task.py", cwd=proj)
    assert res.returncode == 0, res.stderr
    ids = res.json()["ids"]
    jobs = [lab.wait_job(i, timeout=JOB_DEADLINE_S) for i in ids]
    assert {j.state for j in jobs} == {"succeeded"}
    assert len({j.code for j in jobs}) == 1
    digest = jobs[0].code
    fetched = re.findall(rf"code {digest[:12]}: fetched (\d+) file\(s\)", lab.agents["ca"].output())
    cached = re.findall(
        rf"code {digest[:12]}: every file in the node cache", lab.agents["ca"].output()
    )
    assert fetched == ["2"] and len(cached) == 3, lab.agents["ca"].output()[-3000:]


RETRIED_SH = (
    'echo "attempt $MLSM_ATTEMPT: $(cat data.txt)"\n'
    'if [ "$MLSM_ATTEMPT" = 0 ]; then\n'
    "  echo scribbled > data.txt\n"
    '  touch "$MLSM_OUTPUT_DIR/started"\n'
    "  sleep 120\n"
    "fi\n"
)


def test_a_retried_job_runs_again_in_a_fresh_copy_of_the_same_snapshot(
    lab: Lab, tmp_path: Path
) -> None:
    """Attempt 0 changes its copy and is lost (its supervisor killed); attempt 1 runs in a
    fresh copy of the same snapshot, which the node fetched from the master only once."""
    proj = _project(tmp_path / "proj", {"run.sh": RETRIED_SH, "data.txt": "pristine"})
    jid = lab.submit("--retries", "1", "--", "sh", "run.sh", cwd=proj)
    agent = lab.agents["ca"]
    wait_until(
        lambda: (agent.data_dir / "jobs" / str(jid) / "started").exists(),
        JOB_DEADLINE_S,
        "attempt 0 to start",
    )
    state = json.loads((agent.data_dir / "state.json").read_text())
    (rec,) = [r for r in state["jobs"] if r["job_id"] == jid]
    os.kill(int(rec["pid"]), signal.SIGKILL)  # the job's supervisor: an infrastructure fault
    job = lab.wait_job(jid, timeout=JOB_DEADLINE_S)
    assert (job.state, job.attempt) == ("succeeded", 1), job
    assert [e.state for e in job.history].count("interrupted") == 1, job.history
    log = lab.log(jid).decode()
    assert "attempt 0: pristine" in log and "attempt 1: pristine" in log, log
    out = agent.output()
    fetched = re.findall(rf"code {job.code[:12]}: fetched (\d+) file\(s\)", out)
    cached = re.findall(rf"code {job.code[:12]}: every file in the node cache", out)
    assert fetched == ["2"] and len(cached) == 1, out[-3000:]


def test_a_member_cannot_use_another_members_snapshot(lab: Lab, tmp_path: Path) -> None:
    alice = lab.add_user("alice-code")
    bob = lab.add_user("bob-code")
    proj = _project(tmp_path / "proj", {"secret_model.py": "WEIGHTS = 42\n" * 100})
    jid = lab.submit("--", "python3", "secret_model.py", token=alice, cwd=proj)
    digest = lab.job(jid).code
    # Bob names Alice's digest: refused.
    r = httpx.post(
        f"{lab.url}/api/v1/jobs",
        json={"argv": ["cat", "secret_model.py"], "code": digest},
        headers={"Authorization": f"Bearer {bob}"},
    )
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden"
    # Bob offers Alice's manifest (he knows every hash): the master still wants every file
    # from him, and a stream of wrong bytes is refused; the snapshot stays unusable for him.
    m = build_manifest(proj)
    assert m.digest() == digest
    headers = {"Authorization": f"Bearer {bob}", "content-type": "application/msgpack"}
    offer = httpx.post(f"{lab.url}/api/v1/code", content=encode_manifest(m), headers=headers)
    assert offer.status_code == 200, offer.text
    assert offer.json()["want"] == [0] and not offer.json()["complete"]
    fake = _fake_upload(m)
    up = httpx.post(f"{lab.url}/api/v1/code/{digest}/blobs", content=fake, headers=headers)
    assert up.status_code == 200 and not up.json()["complete"], up.text
    r = httpx.post(
        f"{lab.url}/api/v1/jobs",
        json={"argv": ["cat", "secret_model.py"], "code": digest},
        headers={"Authorization": f"Bearer {bob}"},
    )
    assert r.status_code == 403, r.text
    # An admin may run in any snapshot.
    assert lab.submit("--no-code", "--", "true") > 0
    r = httpx.post(
        f"{lab.url}/api/v1/jobs",
        json={"argv": ["python3", "secret_model.py"], "code": digest},
        headers={"Authorization": f"Bearer {lab.token}"},
    )
    assert r.status_code == 201, r.text


def _fake_upload(m: Manifest) -> bytes:
    e = m.entries[0]
    return encode_frame(0, 0, b"x" * e.size) + encode_frame(NO_INDEX, 0, flags=Flag.END)


def test_an_agent_fetches_only_snapshots_its_jobs_need(lab: Lab, tmp_path: Path) -> None:
    proj = _project(tmp_path / "proj", {"a.py": "print(1)\n"})
    jid = lab.submit("--", "python3", "a.py", cwd=proj)
    lab.wait_job(jid, timeout=JOB_DEADLINE_S)
    digest = lab.job(jid).code
    from mlsm.wire.code import CodeManifestFetch

    r = lab.agent_call(
        "code/manifest", CodeManifestFetch(digest=digest, job_id=jid), lab.agents["ca"].secret
    )
    assert r.status_code == 403  # the job is over: nothing on this node needs it now


def test_limits_are_one_clear_error_before_anything_is_sent(lab: Lab, tmp_path: Path) -> None:
    proj = _project(tmp_path / "proj", {f"f{i}.txt": "x" for i in range(5)})
    assert lab.cli("settings", "set", "--code-max-files", "3").returncode == 0
    try:
        before = _last_audit_id(lab)
        res = lab.cli("submit", "--", "true", cwd=proj)
        assert res.returncode != 0
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "5 files" in lines[0] and "limit of 3" in lines[0], res.stderr
        rows = lab.admin.call("GET", "/api/v1/audit", params={"action": "code.*"})
        assert not [r for r in rows if r["id"] > before]
    finally:
        assert lab.cli("settings", "set", "--code-max-files", "20000").returncode == 0


def test_no_code_and_workdir_ship_nothing(lab: Lab, tmp_path: Path) -> None:
    proj = _project(tmp_path / "proj", {"a.py": "print(1)\n"})
    jid = lab.submit("--no-code", "--", "pwd", cwd=proj)
    job = lab.wait_job(jid, timeout=JOB_DEADLINE_S)
    assert job.state == "succeeded" and job.code == ""
    job_dir = lab.agents["ca"].data_dir / "jobs" / str(jid)
    assert lab.log(jid).decode().splitlines()[-1].endswith(str(job_dir))
    jid = lab.submit("--workdir", str(tmp_path), "--", "pwd", cwd=proj)
    assert lab.wait_job(jid, timeout=JOB_DEADLINE_S).state == "succeeded"
    assert str(tmp_path) in lab.log(jid).decode()
    res = lab.cli("submit", "--code", str(proj), "--no-code", "--", "true")
    assert res.returncode != 0 and "--no-code" in res.stderr
