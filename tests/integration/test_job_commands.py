"""Commands on many jobs and on jobs that exist, through the real CLI against a real master
and a real agent (one node, two simulated GPUs): cancel by id, range, array, task, user,
name and state; restart; job edit, hold and release; batch scripts with ``#MLSM``
directives; ``submit --from``; ``-q``; ``--dry-run`` and the can-never-run warning; arrays
grouped in ``mlsm jobs``."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlsm.errors import PermissionDenied
from mlsm.wire import api
from tests.integration.lab import MLSM, Lab

NODE = "c1"
SLEEP = ["sleep", "120"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("jobcmds")) as lab:
        lab.start_master()
        lab.start_agent(NODE, gpus="2xA100-80GB")
        yield lab


@pytest.fixture(scope="module")
def alice(lab: Lab) -> str:
    return lab.add_user("alice")


@pytest.fixture(scope="module")
def bob(lab: Lab) -> str:
    return lab.add_user("bob")


@pytest.fixture(autouse=True)
def _idle(lab: Lab) -> Iterator[None]:
    """Each test leaves the lab idle: what it left queued, held or running is cancelled."""
    yield
    open_jobs = lab.admin.jobs.list(state="queued,held,assigned,running").jobs
    if open_jobs:
        lab.admin.jobs.cancel([j.id for j in open_jobs])
        for j in open_jobs:
            lab.wait_job(j.id, timeout=30)


def ok(res: object) -> str:
    assert res.returncode == 0, (res.args, res.stdout, res.stderr)  # type: ignore[attr-defined]
    return res.stdout  # type: ignore[attr-defined,no-any-return]


def one_line_error(res: object, rc: int | None = None) -> str:
    assert res.returncode != 0, res.stdout  # type: ignore[attr-defined]
    if rc is not None:
        assert res.returncode == rc, (res.returncode, res.stderr)  # type: ignore[attr-defined]
    err: str = res.stderr.strip()  # type: ignore[attr-defined]
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def held(lab: Lab, token: str, *args: str) -> int:
    """A held job of the token's user (it never runs unless released)."""
    return int(ok(lab.cli("submit", "-q", "--no-code", "--hold", *args, "--", "true", token=token)))


def state(lab: Lab, jid: int) -> str:
    return lab.job(jid).state


def all_jobs(lab: Lab) -> int:
    return lab.admin.jobs.list(all=True, limit=1).total


# ---------------------------------------------------------------- cancel
def test_cancel_takes_ranges_and_lists(lab: Lab, alice: str) -> None:
    ids = [held(lab, alice) for _ in range(5)]
    out = ok(lab.cli("cancel", f"{ids[0]}-{ids[2]},{ids[4]}", token=alice))
    assert out.splitlines() == [f"job {i} cancelled" for i in (*ids[:3], ids[4])]
    assert [state(lab, i) for i in ids] == ["cancelled"] * 3 + ["held", "cancelled"]


def test_cancel_an_array_by_task_tasks_and_whole(lab: Lab, alice: str) -> None:
    array = held(lab, alice, "--array", "0-5")
    tasks = {j.array_index: j.id for j in lab.admin.jobs.list(array=array).jobs}
    assert sorted(tasks) == [0, 1, 2, 3, 4, 5]
    ok(lab.cli("cancel", f"{array}_1", token=alice))
    ok(lab.cli("cancel", f"{array}_[3-4]", token=alice))
    states = {i: state(lab, tasks[i]) for i in tasks}
    assert states == {
        0: "held",
        1: "cancelled",
        2: "held",
        3: "cancelled",
        4: "cancelled",
        5: "held",
    }
    # The array's id is the whole array: its ended tasks pass silently.
    res = lab.cli("cancel", str(array), token=alice)
    assert ok(res).splitlines() == [f"job {tasks[i]} cancelled" for i in (0, 2, 5)]
    assert res.stderr == ""
    missing = lab.cli("cancel", f"{array}_9", token=alice)
    assert f"job {array}_9 not cancelled: no such array task" in one_line_error(missing, 1)


def test_cancel_by_name_and_state_reaches_only_a_members_own_jobs(
    lab: Lab, alice: str, bob: str
) -> None:
    mine = [held(lab, alice, "--name", f"sweep-{i}") for i in range(3)]
    other = held(lab, alice, "--name", "keep")
    bobs = held(lab, bob, "--name", "sweep-b")
    out = ok(lab.cli("cancel", "--name", "sweep-*", "--yes", token=alice))
    assert out.splitlines() == [f"job {i} cancelled" for i in mine]
    assert state(lab, other) == "held" and state(lab, bobs) == "held"
    # A filter with no name selects all of bob's open jobs, and only his.
    ok(lab.cli("cancel", "--state", "held", "--yes", token=bob))
    assert state(lab, bobs) == "cancelled" and state(lab, other) == "held"


def test_a_member_cannot_name_another_user(lab: Lab, alice: str, bob: str) -> None:
    target = held(lab, alice)
    err = one_line_error(lab.cli("cancel", "--user", "alice", "--yes", token=bob), 1)
    assert "members cancel only their own jobs" in err
    with pytest.raises(PermissionDenied):
        lab.client(bob).jobs.cancel_select(api.CancelRequest(user="alice"))
    # Named by id, a job of someone else is refused, and says no more than that.
    res = lab.cli("cancel", f"{target}", "--state", "queued", token=bob)
    assert f"job {target} not cancelled: not your job" in one_line_error(res, 1)
    assert state(lab, target) == "held"
    # An admin may filter by user.
    out = ok(lab.cli("cancel", "--user", "alice", "--state", "held", "--yes"))
    assert f"job {target} cancelled" in out.splitlines()


def test_cancel_by_state_picks_running_jobs_and_audits_each(lab: Lab, alice: str) -> None:
    running = lab.submit("--no-code", "--", *SLEEP, token=alice)
    lab.wait_job(running, "running")
    waiting = held(lab, alice)
    out = ok(lab.cli("cancel", "--state", "running", "--yes", token=alice))
    assert out.splitlines() == [f"job {running} cancelled"]
    assert lab.wait_job(running).state == "cancelled"
    assert state(lab, waiting) == "held"
    rows = lab.admin.call("GET", "/api/v1/audit", params={"action": "job.cancelled"})
    assert any(r["target"] == f"job:{running}" and r["actor"] == "alice" for r in rows), rows


def test_a_preview_changes_nothing(lab: Lab, alice: str) -> None:
    jid = held(lab, alice)
    res = lab.client(alice).jobs.cancel_select(api.CancelRequest(ids=[jid], preview=True))
    assert res.preview and res.cancelled == [jid]
    assert state(lab, jid) == "held"


def _cli_on_a_terminal(lab: Lab, token: str, args: list[str], answer: bytes) -> tuple[int, str]:
    """Run the CLI with a terminal as stdin (a pty) and type ``answer``."""
    main, side = pty.openpty()
    env = lab.env(MLSM_URL=lab.url, MLSM_TOKEN=token)
    proc = subprocess.Popen(
        [MLSM, *args], stdin=side, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    os.close(side)
    os.write(main, answer)
    out, err = proc.communicate(timeout=60)
    os.close(main)
    return proc.returncode, out.decode() + err.decode()


def test_a_wide_selection_asks_first_on_a_terminal(lab: Lab, alice: str) -> None:
    ids = [held(lab, alice, "--name", "wide") for _ in range(2)]
    rc, text = _cli_on_a_terminal(lab, alice, ["cancel", "--name", "wide"], b"n\n")
    assert rc != 0 and f"cancel 2 job(s): {ids[0]} {ids[1]}?" in text, text
    assert [state(lab, i) for i in ids] == ["held", "held"]
    rc, text = _cli_on_a_terminal(lab, alice, ["cancel", "--name", "wide"], b"y\n")
    assert rc == 0, text
    assert [state(lab, i) for i in ids] == ["cancelled", "cancelled"]


@pytest.mark.parametrize(
    "args",
    [
        ["cancel", "7-4"],
        ["cancel", "abc"],
        ["cancel", "1-20000"],
        ["cancel", "5_[x]"],
        ["cancel", "5_[9-2]"],
        ["cancel", "99999999999999999999999_1"],
        ["cancel"],
        ["cancel", "--state", "runing", "--yes"],
        ["job", "edit", "12_x", "--priority", "1"],
        ["job", "show", "4-7"],
        ["restart", "abc"],
        ["wait", "1,2"],
    ],
    ids=" ".join,
)
def test_bad_job_references_are_one_line(lab: Lab, args: list[str]) -> None:
    one_line_error(lab.cli(*args), 2)


# ---------------------------------------------------------------- restart
def test_restart_runs_the_same_snapshot_as_a_new_job(lab: Lab, alice: str, tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("first\n")
    jid = lab.submit("--", "cat", "data.txt", token=alice, cwd=tmp_path)
    assert lab.wait_job(jid).state == "succeeded"
    (tmp_path / "data.txt").write_text("changed\n")
    new = int(ok(lab.cli("restart", "-q", str(jid), token=alice)))
    assert new != jid
    job = lab.wait_job(new)
    assert job.state == "succeeded" and job.restarted_from == jid and job.user == "alice"
    assert lab.log(new).endswith(b"\nfirst\n")
    assert f"restart    of job {jid}" in ok(lab.cli("job", "show", str(new), token=alice))
    rows = lab.admin.call("GET", "/api/v1/audit", params={"action": "job.restart"})
    assert any(r["target"] == f"job:{jid}" for r in rows)


def test_only_the_owner_or_an_admin_restarts(lab: Lab, alice: str, bob: str) -> None:
    jid = held(lab, alice)
    assert "not yours" in one_line_error(lab.cli("restart", str(jid), token=bob), 1)
    out = ok(lab.cli("restart", str(jid)))
    new = int(out.split()[-1])
    assert lab.job(new).user == "alice"


# ---------------------------------------------------------------- edit, hold, release
def test_edit_a_held_job_within_a_members_rights(lab: Lab, alice: str) -> None:
    jid = held(lab, alice)
    ok(
        lab.cli(
            "job",
            "edit",
            str(jid),
            "--priority",
            "-5",
            "--gpus",
            "1",
            "--time-limit",
            "1h",
            token=alice,
        )
    )
    j = lab.job(jid)
    assert (j.priority, j.gpus, j.timeout_s, j.state) == (-5, 1, 3600.0, "held")
    assert "edited by alice" in j.history[-1].message
    err = one_line_error(lab.cli("job", "edit", str(jid), "--priority", "5", token=alice), 1)
    assert "at most 0" in err
    # back up to the default is lowering's undo, and allowed
    ok(lab.cli("job", "edit", str(jid), "--priority", "0", token=alice))
    ok(lab.cli("job", "edit", str(jid), "--priority", "7"))  # an admin may raise it
    assert lab.job(jid).priority == 7
    err = one_line_error(lab.cli("submit", "--priority", "5", "--", "true", token=alice), 1)
    assert "priority 5" in err


def test_a_running_or_ended_job_cannot_be_edited(lab: Lab, alice: str) -> None:
    jid = lab.submit("--no-code", "--", *SLEEP, token=alice)
    lab.wait_job(jid, "running")
    err = one_line_error(lab.cli("job", "edit", str(jid), "--gpus", "1", token=alice), 1)
    assert f"job {jid} is running: only a queued or held job can be edited" in err
    ok(lab.cli("cancel", str(jid), token=alice))
    lab.wait_job(jid)
    err = one_line_error(lab.cli("job", "edit", str(jid), "--gpus", "1", token=alice), 1)
    assert "mlsm restart" in err


def test_others_jobs_are_not_editable_by_members(lab: Lab, alice: str, bob: str) -> None:
    jid = held(lab, alice)
    err = one_line_error(lab.cli("job", "edit", str(jid), "--release", token=bob), 1)
    assert "not yours" in err


def test_a_held_job_is_not_scheduled_until_released(lab: Lab, alice: str) -> None:
    blocker = lab.submit("--no-code", "--", *SLEEP, token=alice)
    jid = lab.submit("--no-code", "--after", f"{blocker}:any", "--", "true", token=alice)
    ok(lab.cli("job", "edit", str(jid), "--hold", token=alice))
    j = lab.job(jid)
    assert j.state == "held" and j.reason == "held by alice"
    assert "held by alice" in ok(lab.cli("jobs", token=alice))
    ok(lab.cli("cancel", str(blocker), token=alice))
    lab.wait_job(blocker)
    # The dependency is met, but a held job stays held through the passes that follow.
    lab.admin.jobs.submit(api.JobSubmit(argv=["true"]))  # kicks a pass
    assert state(lab, jid) == "held"
    ok(lab.cli("job", "edit", str(jid), "--release", token=alice))
    assert lab.wait_job(jid).state == "succeeded"


# ---------------------------------------------------------------- batch scripts
SCRIPT = """#!/bin/sh
# a comment, then directives
#MLSM --gpus 1
#MLSM --name from-directive
echo "gpus=$CUDA_VISIBLE_DEVICES args=$*"
#MLSM --gpus 2
"""


def test_a_batch_script_takes_its_directives(lab: Lab, alice: str, tmp_path: Path) -> None:
    script = tmp_path / "train.sh"
    script.write_text(SCRIPT)
    script.chmod(0o644)  # run by its interpreter: no execute bit needed
    jid = int(ok(lab.cli("submit", "-q", "train.sh", "a", "b", token=alice, cwd=tmp_path)))
    j = lab.wait_job(jid)
    assert (j.name, j.gpus, j.state) == ("from-directive", 1, "succeeded")
    assert j.argv == ["/bin/sh", "train.sh", "a", "b"]
    assert lab.log(jid).endswith(f"\ngpus={j.gpu_indices[0]} args=a b\n".encode())
    # The command line wins over a directive.
    jid = int(ok(lab.cli("submit", "-q", "--name", "mine", "train.sh", token=alice, cwd=tmp_path)))
    assert lab.wait_job(jid).name == "mine"


@pytest.mark.parametrize(
    ("directive", "said"),
    [
        ("#MLSM --gpu 2", "no such option"),
        ("#MLSM --gpus lots", "lots"),
        ("#MLSM --gpus 1 echo hi", "options only"),
        ("#MLSM --from x", "not a directive"),
        ("#MLSM --gpus 'open", "quotation"),
    ],
)
def test_a_bad_directive_names_its_line(
    lab: Lab, alice: str, tmp_path: Path, directive: str, said: str
) -> None:
    (tmp_path / "bad.sh").write_text(f"#!/bin/sh\n# one\n{directive}\ntrue\n")
    before = all_jobs(lab)
    err = one_line_error(lab.cli("submit", "bad.sh", token=alice, cwd=tmp_path), 2)
    assert "bad.sh line 3" in err and said in err.lower()
    assert all_jobs(lab) == before


# ---------------------------------------------------------------- submit --from
def test_submit_from_a_file_in_one_call(lab: Lab, alice: str, tmp_path: Path) -> None:
    (tmp_path / "jobs.txt").write_text(
        "# experiments\n"
        "echo one\n"
        "\n"
        "echo 'two words'\n"
        '{"argv": ["echo", "three"], "name": "json-job", "gpus": 1}\n'
    )
    out = ok(lab.cli("submit", "-q", "--no-code", "--from", "jobs.txt", token=alice, cwd=tmp_path))
    ids = [int(x) for x in out.split()]
    assert len(ids) == 3
    jobs = [lab.wait_job(i) for i in ids]
    assert [j.argv for j in jobs] == [["echo", "one"], ["echo", "two words"], ["echo", "three"]]
    assert (jobs[2].name, jobs[2].gpus) == ("json-job", 1)
    assert all(j.state == "succeeded" for j in jobs)
    # stdin, with the options given as every line's defaults
    proc = subprocess.run(
        [MLSM, "submit", "-q", "--no-code", "--hold", "--from", "-"],
        input=b"true\ntrue\n",
        capture_output=True,
        env=lab.env(MLSM_URL=lab.url, MLSM_TOKEN=alice),
        cwd=tmp_path,
        check=True,
    )
    assert [state(lab, int(i)) for i in proc.stdout.split()] == ["held", "held"]


@pytest.mark.parametrize(
    ("lines", "said"),
    [
        ('true\n{"argv": [}\ntrue\n{"argv": []}\n', ["line 2", "line 4", "2 bad line"]),
        ('true\n\n{"argv": ["x"], "node": "nope"}\n', ["line 3", "no node named 'nope'"]),
        ('true\n{"argv": ["x"], "priority": 9}\n', ["line 2", "priority 9"]),
        ("true\n'unclosed\n", ["line 2", "quotation"]),
        ('true\n{"argv": ["x"], "after": ["999999"]}\n', ["line 2", "no job 999999"]),
    ],
)
def test_bad_lines_are_named_and_nothing_is_submitted(
    lab: Lab, alice: str, tmp_path: Path, lines: str, said: list[str]
) -> None:
    (tmp_path / "jobs.txt").write_text(lines)
    before = all_jobs(lab)
    res = lab.cli("submit", "--no-code", "--from", "jobs.txt", token=alice, cwd=tmp_path)
    err = one_line_error(res)
    assert all(s in err for s in said), err
    assert "nothing submitted" in err
    assert all_jobs(lab) == before


def test_a_bulk_call_is_all_or_nothing_over_the_api(lab: Lab, alice: str) -> None:
    before = all_jobs(lab)
    c = lab.client(alice)
    with pytest.raises(Exception) as info:
        c.jobs.submit_many(
            [api.JobSubmit(argv=["true"]), api.JobSubmit(argv=["true"], env_kind="venv")]
        )
    assert "jobs[1]" in str(info.value)
    assert all_jobs(lab) == before
    reply = c.jobs.submit_many(
        [api.JobSubmit(argv=["true"], array="0-2"), api.JobSubmit(argv=["true"])]
    )
    assert len(reply.ids) == 2 and reply.tasks == 4
    assert all_jobs(lab) == before + 4


# ---------------------------------------------------------------- -q, warnings, dry runs
def test_parsable_prints_only_ids(lab: Lab, alice: str) -> None:
    one = ok(lab.cli("submit", "-q", "--no-code", "--hold", "--", "true", token=alice))
    assert one.strip().isdigit()
    array = ok(
        lab.cli(
            "submit",
            "--parsable",
            "--no-code",
            "--hold",
            "--array",
            "0-2",
            "--",
            "true",
            token=alice,
        )
    )
    aid = int(array)
    assert {j.array_parent for j in lab.admin.jobs.list(array=aid).jobs} == {aid}


def test_a_job_no_node_could_ever_run_is_warned_about(lab: Lab, alice: str) -> None:
    res = lab.cli("submit", "--no-code", "--gpus", "9", "--", "true", token=alice)
    jid = int(ok(res).split()[-1])
    assert "warning: no node has 9 GPUs; it will wait" in res.stderr
    assert state(lab, jid) == "queued"
    res = lab.cli("submit", "--no-code", "--gpus", "2", "--hold", "--", "true", token=alice)
    assert ok(res) and "warning" not in res.stderr


def test_a_dry_run_says_where_or_why_and_stores_nothing(lab: Lab, alice: str) -> None:
    before = all_jobs(lab)
    out = ok(lab.cli("submit", "--dry-run", "--gpus", "2", "--", "true", token=alice))
    assert out.strip() == f"would start now on {NODE} on GPUs 0,1 (dry run: nothing submitted)"
    busy = lab.submit("--no-code", "--gpus", "1", "--", *SLEEP, token=alice)
    lab.wait_job(busy, "running")
    out = ok(lab.cli("submit", "--dry-run", "--gpus", "2", "--", "true", token=alice))
    assert out.strip() == "would wait: no online node has 2 free GPUs (dry run: nothing submitted)"
    res = lab.cli("submit", "--dry-run", "--gpus", "9", "--", "true", token=alice)
    assert "would wait" in ok(res) and "no node has 9 GPUs" in res.stderr
    failed = lab.submit("--no-code", "--", "false", token=alice)
    lab.wait_job(failed)
    plan = lab.client(alice).jobs.plan(api.JobSubmit(argv=["true"], after=[str(failed)]))
    assert plan.never and plan.reason == f"dependency {failed} failed"
    assert all_jobs(lab) == before + 2  # the busy job and the failed one, nothing more


# ---------------------------------------------------------------- arrays in mlsm jobs
def test_jobs_groups_an_arrays_tasks_by_state(lab: Lab, alice: str) -> None:
    aid = held(lab, alice, "--array", "0-3", "--name", "arr")
    ok(lab.cli("cancel", f"{aid}_1", token=alice))
    rows = [
        line.split()
        for line in ok(lab.cli("jobs", "--all", "--user", "alice", token=alice)).splitlines()
    ]
    ids = {r[0]: r for r in rows}
    assert ids[f"{aid}_[0,2-3]"][3:5] == ["held", "(3)"], rows
    assert ids[f"{aid}_1"][3] == "cancelled"
    expanded = ok(lab.cli("jobs", "--expand", "--user", "alice", token=alice))
    tasks = {j.array_index: j.id for j in lab.admin.jobs.list(array=aid).jobs}
    for i in (0, 2, 3):
        assert any(
            line.split()[:2] == [str(tasks[i]), f"{aid}_{i}"] for line in expanded.splitlines()
        )
    shown = json.loads(ok(lab.cli("job", "show", "--json", f"{aid}_2", token=alice)))
    assert shown["id"] == tasks[2] and shown["array_index"] == 2
    err = one_line_error(lab.cli("job", "show", f"{aid}_7", token=alice), 1)
    assert f"array {aid} has no task 7" in err


def test_wait_exits_with_how_the_job_ended(lab: Lab, alice: str) -> None:
    good = lab.submit("--no-code", "--", "true", token=alice)
    bad = lab.submit("--no-code", "--", "false", token=alice)
    assert lab.cli("wait", str(good), token=alice).returncode == 0
    assert lab.cli("wait", str(good), str(bad), token=alice).returncode == 3
    gone = held(lab, alice)
    ok(lab.cli("cancel", str(gone), token=alice))
    assert lab.cli("wait", str(gone), str(bad), token=alice).returncode == 4
