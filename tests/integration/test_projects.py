"""Projects: ``mlsm project push`` keeps a named tree on one node, ``submit --project`` runs
there. A real master and two real agents; the real CLI."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlsm.wire import api
from tests.integration.helpers import BOTH_DATABASES
from tests.integration.lab import Lab
from tests.support.wait import wait_until

JOB_DEADLINE_S = 60.0


@pytest.fixture(scope="module", params=BOTH_DATABASES)
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp(f"projects-{request.param}")) as lab:
        if request.param == "postgresql":
            lab.database_url = str(request.getfixturevalue("module_postgres_url"))
        lab.start_master()
        lab.start_agent("pa", gpus="1xA100-80GB")
        lab.start_agent("pb", gpus="4xA100-80GB")  # more GPUs: best fit alone would pick pa
        yield lab


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_push_list_run_and_push_again(lab: Lab, tmp_path: Path) -> None:
    alice = lab.add_user("alice-p")
    src = _tree(tmp_path / "src", {"run.py": "print(open('conf.txt').read())\n", "conf.txt": "v1"})
    res = lab.cli("project", "push", "exp", str(src), "--node", "pb", token=alice)
    assert res.returncode == 0, res.stderr
    assert "project exp on pb: ready (2 files" in res.stdout
    tree = lab.agents["pb"].data_dir / "projects" / "alice-p" / "exp"
    assert (tree / "conf.txt").read_text() == "v1"
    rows = lab.cli("projects", "--json", token=alice).json()
    assert [(p["name"], p["user"], p["node"], p["state"]) for p in rows] == [
        ("exp", "alice-p", "pb", "ready")
    ]
    # The job runs in the project's tree, on the node that holds it.
    jid = lab.submit("--project", "exp", "--", "python3", "run.py", token=alice)
    job = lab.wait_job(jid, timeout=JOB_DEADLINE_S)
    assert job.state == "succeeded" and job.node == "pb", job.reason
    assert "v1" in lab.log(jid).decode()
    # A file the node has that the push does not name stays; a changed file is replaced.
    (tree / "results.txt").write_text("kept")
    (src / "conf.txt").write_text("v2")
    res = lab.cli("project", "push", "exp", str(src), "--node", "pb", token=alice)
    assert res.returncode == 0, res.stderr
    assert "sent 1 file(s)" in res.stderr
    assert (tree / "conf.txt").read_text() == "v2"
    assert (tree / "results.txt").read_text() == "kept"


def test_members_see_and_use_only_their_own_projects(lab: Lab, tmp_path: Path) -> None:
    carol = lab.add_user("carol-p")
    dave = lab.add_user("dave-p")
    src = _tree(tmp_path / "src", {"a.txt": "carol's"})
    assert lab.cli("project", "push", "mine", str(src), "--node", "pa", token=carol).returncode == 0
    assert lab.cli("projects", "--json", token=dave).json() == []
    assert lab.cli("projects", "--all", "--json", token=dave).json() == []  # --all: admins only
    names = {(p["user"], p["name"]) for p in lab.cli("projects", "--all", "--json").json()}
    assert ("carol-p", "mine") in names
    res = lab.cli("submit", "--project", "mine", "--", "cat", "a.txt", token=dave)
    assert res.returncode != 0 and "no project named 'mine'" in res.stderr
    res = lab.cli("project", "rm", "mine", "--node", "pa", "--user", "carol-p", token=dave)
    assert res.returncode != 0 and "only admins" in res.stderr


def test_remove_then_the_scheduler_names_the_missing_project(lab: Lab, tmp_path: Path) -> None:
    erin = lab.add_user("erin-p")
    src = _tree(tmp_path / "src", {"x.txt": "x"})
    assert lab.cli("project", "push", "gone", str(src), "--node", "pa", token=erin).returncode == 0
    tree = lab.agents["pa"].data_dir / "projects" / "erin-p" / "gone"
    assert tree.is_dir()
    res = lab.cli("project", "rm", "gone", "--node", "pa", token=erin)
    assert res.returncode == 0, res.stderr

    def removed() -> bool:
        return not tree.exists() and lab.cli("projects", "--json", token=erin).json() == []

    wait_until(removed, JOB_DEADLINE_S, "the project to be removed")
    # Pushed again but the node that holds it is drained: the job waits, saying why.
    assert lab.cli("project", "push", "gone", str(src), "--node", "pa", token=erin).returncode == 0
    assert lab.cli("node", "drain", "pa").returncode == 0
    try:
        jid = lab.submit("--project", "gone", "--", "true", token=erin)
        job = wait_until(
            lambda: (j := lab.job(jid)).reason.startswith("project") and j,
            JOB_DEADLINE_S,
            "a waiting reason",
        )
        assert re.search(r"project erin-p/gone is only on pa \(draining\)", job.reason), job.reason
    finally:
        assert lab.cli("node", "resume", "pa").returncode == 0
    assert lab.wait_job(jid, timeout=JOB_DEADLINE_S).state == "succeeded"


def test_an_admin_copies_a_project_between_nodes(lab: Lab, tmp_path: Path) -> None:
    """The target pulls the source node's tree through the master's relay: the project
    shows on both nodes, only files that differ are rewritten on a second copy, the
    target's own files stay, a member is refused, and the copy is audited."""
    fay = lab.add_user("fay-p")
    src = _tree(
        tmp_path / "src", {"run.py": "print(open('d/conf.txt').read())\n", "d/conf.txt": "c1"}
    )
    assert lab.cli("project", "push", "cp", str(src), "--node", "pa", token=fay).returncode == 0
    res = lab.cli("project", "copy", "cp", "--from", "pa", "--to", "pb", token=fay)
    assert res.returncode != 0 and "admin" in res.stderr and "Traceback" not in res.stderr
    res = lab.cli("project", "copy", "cp", "--from", "pa", "--to", "pb", "--user", "fay-p")
    assert res.returncode == 0, res.stderr
    assert "project cp on pb: ready (2 files" in res.stdout
    target = lab.agents["pb"].data_dir / "projects" / "fay-p" / "cp"
    assert (target / "d" / "conf.txt").read_text() == "c1"
    assert (target / "run.py").read_text() == (src / "run.py").read_text()
    rows = lab.cli("projects", "--json", token=fay).json()
    assert sorted((p["name"], p["node"], p["state"]) for p in rows) == [
        ("cp", "pa", "ready"),
        ("cp", "pb", "ready"),
    ]
    entries = lab.admin.call(
        "GET", "/api/v1/audit", params={"action": "project.copy"}, type=list[api.AuditEntry]
    )
    assert any(e.target == "project:fay-p/cp" for e in entries), entries
    # The source changes; a second copy rewrites only what differs, and keeps pb's own file.
    (target / "results.txt").write_text("kept")
    inode = (target / "run.py").stat().st_ino
    (src / "d" / "conf.txt").write_text("c2")
    assert lab.cli("project", "push", "cp", str(src), "--node", "pa", token=fay).returncode == 0
    res = lab.cli("project", "copy", "cp", "--from", "pa", "--to", "pb", "--user", "fay-p")
    assert res.returncode == 0, res.stderr
    assert (target / "d" / "conf.txt").read_text() == "c2"
    assert (target / "results.txt").read_text() == "kept"
    assert (target / "run.py").stat().st_ino == inode
    # A job with --project runs in the copy on pb when pa cannot take it.
    assert lab.cli("node", "drain", "pa").returncode == 0
    try:
        jid = lab.submit("--project", "cp", "--", "python3", "run.py", token=fay)
        job = lab.wait_job(jid, timeout=JOB_DEADLINE_S)
        assert job.state == "succeeded" and job.node == "pb", job.reason
        assert "c2" in lab.log(jid).decode()
    finally:
        assert lab.cli("node", "resume", "pa").returncode == 0
    # Copying what the source does not hold is one clear line.
    res = lab.cli("project", "copy", "nope", "--from", "pa", "--to", "pb", "--user", "fay-p")
    assert res.returncode != 0 and "no project fay-p/nope on node pa" in res.stderr


def test_a_project_named_copy_is_removed_like_any_other(lab: Lab, tmp_path: Path) -> None:
    # ``POST /api/v1/projects/copy`` is a static route; ``DELETE /api/v1/projects/copy``
    # must still reach the project named "copy" (mlsm.master.routeshape).
    gail = lab.add_user("gail-p")
    src = _tree(tmp_path / "src", {"c.txt": "c"})
    assert lab.cli("project", "push", "copy", str(src), "--node", "pa", token=gail).returncode == 0
    tree = lab.agents["pa"].data_dir / "projects" / "gail-p" / "copy"
    assert tree.is_dir()
    other = lab.add_user("hank-p")
    res = lab.cli("project", "rm", "copy", "--node", "pa", "--user", "gail-p", token=other)
    assert res.returncode != 0 and "only admins" in res.stderr
    res = lab.cli("project", "rm", "copy", "--node", "pa", token=gail)
    assert res.returncode == 0, res.stderr
    wait_until(
        lambda: not tree.exists() and lab.cli("projects", "--json", token=gail).json() == [],
        JOB_DEADLINE_S,
        "the project named copy to be removed",
    )
