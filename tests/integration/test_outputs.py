"""A job's outputs, listed and fetched through the master, with real processes: while the
job runs and after it ended, by its owner, another member (refused) and an admin; links a
job planted (listed as links, never followed, never fetched as their targets); paths that
try to leave the tree; an offline node's one line; a fetch cut by killing the master and
resumed by running the command again; ``wait --fetch`` and ``submit --fetch``. SQLite, or
PostgreSQL when the suite runs with ``MLSM_TEST_DATABASE``."""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlsm import errors
from tests.integration.lab import Lab
from tests.support.wait import wait_until

NODE = "out-a"
DEADLINE_S = 30.0
MIB = 1 << 20
# Runs until the test drops a file named "stop" into its output directory.
RUNNING = (
    'mkdir -p "$MLSM_OUTPUT_DIR/sub" && echo hello > "$MLSM_OUTPUT_DIR/sub/a.txt" && '
    'head -c 70000 /dev/urandom > "$MLSM_OUTPUT_DIR/blob.bin" && '
    'while [ ! -e "$MLSM_OUTPUT_DIR/stop" ]; do sleep 0.1; done; echo done > "$MLSM_OUTPUT_DIR/end.txt"'
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("outputs")) as lab:
        lab.start_master()
        lab.start_agent(NODE)
        yield lab


@pytest.fixture(scope="module")
def alice(lab: Lab) -> str:
    return lab.add_user("alice")


@pytest.fixture(scope="module")
def bob(lab: Lab) -> str:
    return lab.add_user("bob")


def job_dir(lab: Lab, job_id: int) -> Path:
    return lab.agents[NODE].data_dir / "jobs" / str(job_id)


def submit(lab: Lab, token: str, script: str) -> int:
    return lab.submit("--node", NODE, "--", "sh", "-c", script, token=token)


def size_of(path: Path) -> int:
    """The file's size, -1 while the job has not created it yet."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def running_then_done(lab: Lab, alice: str) -> Iterator[int]:
    """A job of alice's that runs until told to stop."""
    jid = submit(lab, alice, RUNNING)
    lab.wait_job(jid, "running", DEADLINE_S)
    wait_until(lambda: size_of(job_dir(lab, jid) / "blob.bin") == 70000, DEADLINE_S)
    yield jid


def test_outputs_listed_while_running_and_after(
    lab: Lab, alice: str, running_then_done: int
) -> None:
    jid = running_then_done
    res = lab.cli("outputs", "--json", str(jid), token=alice)
    assert res.returncode == 0, res.stderr
    listing = res.json()
    assert listing["node"] == NODE and listing["job_id"] == jid
    by_path = {e[0]: e for e in listing["entries"]}
    assert by_path["sub"][1] == "d" and by_path["sub/a.txt"][1:3] == ["f", 6]
    assert by_path["blob.bin"][2] == 70000
    sub = lab.cli("outputs", str(jid), "sub", token=alice)
    assert sub.returncode == 0 and "sub/a.txt" in sub.stdout and "blob.bin" not in sub.stdout
    # ... and after it ended
    (job_dir(lab, jid) / "stop").write_text("")
    lab.wait_job(jid, timeout=DEADLINE_S)
    after = lab.client(alice).jobs.outputs(jid)
    assert {"end.txt", "stop", "output.log"} <= {e.path for e in after.entries}


def test_another_member_is_refused_and_an_admin_allowed(
    lab: Lab, alice: str, bob: str, running_then_done: int
) -> None:
    jid = running_then_done
    refused = lab.cli("outputs", str(jid), token=bob)
    assert refused.returncode != 0
    assert "only its owner and admins" in refused.stderr and "Traceback" not in refused.stderr
    with pytest.raises(errors.PermissionDenied):
        lab.client(bob).jobs.outputs_manifest(jid)
    denied = lab.cli("outputs", "get", str(jid), "-o", str(lab.root / "bob-got"), token=bob)
    assert denied.returncode != 0 and not (lab.root / "bob-got").exists()
    assert any(e.path == "sub/a.txt" for e in lab.admin.jobs.outputs(jid).entries)
    got = lab.cli("outputs", "get", str(jid), "-o", str(lab.root / "admin-got"))
    assert got.returncode == 0, got.stderr
    assert (lab.root / "admin-got" / "sub" / "a.txt").read_text() == "hello\n"


def test_fetch_while_running_verified_and_again_after(lab: Lab, alice: str) -> None:
    jid = submit(lab, alice, RUNNING)
    lab.wait_job(jid, "running", DEADLINE_S)
    wait_until(lambda: size_of(job_dir(lab, jid) / "blob.bin") == 70000, DEADLINE_S)
    dest = lab.root / f"fetch-{jid}"
    res = lab.cli("outputs", "get", "--json", str(jid), "-o", str(dest), token=alice)
    assert res.returncode == 0, res.stderr
    assert sha(dest / "blob.bin") == sha(job_dir(lab, jid) / "blob.bin")
    assert (dest / "sub" / "a.txt").read_text() == "hello\n"
    assert not (dest / "end.txt").exists()
    (job_dir(lab, jid) / "stop").write_text("")
    lab.wait_job(jid, timeout=DEADLINE_S)
    again = lab.cli("outputs", "get", "--json", str(jid), "-o", str(dest), token=alice)
    assert again.returncode == 0, again.stderr
    assert (dest / "end.txt").read_text() == "done\n"
    assert again.json()["received_bytes"] < 70000  # what was already there stayed
    assert not [p for p in os.listdir(dest) if p.startswith(".mlsm-get-")]
    one = lab.cli("outputs", "get", str(jid), "sub/a.txt", "-o", str(lab.root / "one"), token=alice)
    assert one.returncode == 0, one.stderr
    assert sorted(os.listdir(lab.root / "one")) == ["sub"]


def test_planted_links_are_listed_never_followed_nor_fetched(lab: Lab, alice: str) -> None:
    secret = lab.root / "secret"
    secret.mkdir()
    (secret / "key").write_text("do not leak")
    script = (
        f'ln -s {secret}/key "$MLSM_OUTPUT_DIR/leak" && ln -s {secret} "$MLSM_OUTPUT_DIR/dir" '
        '&& mkdir "$MLSM_OUTPUT_DIR/d" && echo ok > "$MLSM_OUTPUT_DIR/d/ok"'
    )
    jid = submit(lab, alice, script)
    lab.wait_job(jid, timeout=DEADLINE_S)
    entries = {e.path: e.kind for e in lab.client(alice).jobs.outputs(jid).entries}
    assert entries["leak"] == "l" and entries["dir"] == "l"
    assert not any(p.startswith("dir/") for p in entries)
    through = lab.cli("outputs", str(jid), "dir/key", token=alice)
    assert through.returncode != 0 and "do not leak" not in through.stdout + through.stderr
    dest = lab.root / f"links-{jid}"
    res = lab.cli("outputs", "get", str(jid), "-o", str(dest), token=alice)
    assert res.returncode == 0, res.stderr
    assert (dest / "d" / "ok").read_text() == "ok\n"
    assert not os.path.lexists(dest / "leak") and not os.path.lexists(dest / "dir")
    for bad in ("../../../etc", "/etc/passwd", "d/../../x"):
        refused = lab.cli("outputs", str(jid), bad, token=alice)
        assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1, bad
        assert "Traceback" not in refused.stderr


def test_fetch_cut_by_killing_the_master_resumes(lab: Lab, alice: str) -> None:
    size = 96 * MIB
    jid = submit(lab, alice, f'head -c {size} /dev/urandom > "$MLSM_OUTPUT_DIR/big.bin"')
    lab.wait_job(jid, timeout=60.0)
    dest = lab.root / f"cut-{jid}"
    proc = lab.cli_popen("outputs", "get", "--json", str(jid), "-o", str(dest), token=alice)

    def partial() -> int:
        works = [p for p in dest.glob(".mlsm-get-*")] if dest.exists() else []
        held = sum(f.stat().st_size for w in works for f in w.glob("*.part"))
        return held if held > 0 else 0

    wait_until(partial, 60.0, "the fetch to be under way", poll_s=0.01)
    proc.send_signal(signal.SIGSTOP)  # the fetch stands still mid-file ...
    lab.stop_master(signal.SIGKILL)  # ... while the master dies under it
    proc.kill()
    proc.wait()
    held = partial()
    assert 0 < held < size
    lab.start_master()
    lab.wait_node_state(NODE, "online", DEADLINE_S)
    res = lab.cli("outputs", "get", "--json", str(jid), "-o", str(dest), token=alice, timeout=120)
    assert res.returncode == 0, res.stderr
    # Only what the first run had not made durable is sent again (a partial file's bytes
    # past its last journal record were written, not yet recorded, when the run died).
    assert res.json()["received_bytes"] < size
    assert sha(dest / "big.bin") == sha(job_dir(lab, jid) / "big.bin")


def test_nothing_is_removed_while_a_fetch_reads_it(lab: Lab, alice: str) -> None:
    size = 64 * MIB
    jid = submit(lab, alice, f'head -c {size} /dev/urandom > "$MLSM_OUTPUT_DIR/big.bin"')
    lab.wait_job(jid, timeout=60.0)
    dest = lab.root / f"pinned-{jid}"
    proc = lab.cli_popen("outputs", "get", str(jid), "-o", str(dest), token=alice)
    parts = lambda: [f for f in dest.glob(".mlsm-get-*/*.part") if f.stat().st_size > 0]  # noqa: E731
    wait_until(parts, 60.0, "the fetch to be under way", poll_s=0.01)
    proc.send_signal(signal.SIGSTOP)  # the node's serve now waits, its directory pinned
    try:
        refused = lab.cli("job", "purge", str(jid), token=alice)
        assert refused.returncode != 0 and "being fetched" in refused.stderr
        assert (job_dir(lab, jid) / "big.bin").stat().st_size == size
    finally:
        proc.kill()
        proc.wait()

    # The fetch gone, its pin goes with it (the master aborts the push): purge now works.
    def purged() -> bool:
        res = lab.cli("job", "purge", "--json", str(jid), token=alice)
        assert res.returncode == 0, res.stderr
        return res.json()["state"] == "removed"

    wait_until(purged, DEADLINE_S, "the purge once the fetch is gone")
    assert not job_dir(lab, jid).exists()


def test_offline_node_gives_one_clear_line(lab: Lab, alice: str) -> None:
    jid = submit(lab, alice, "echo hi")
    lab.wait_job(jid, timeout=DEADLINE_S)
    lab.stop_agent(NODE)
    try:
        lab.wait_node_state(NODE, "offline", DEADLINE_S)
        for args in (
            ("outputs", str(jid)),
            ("outputs", "get", str(jid), "-o", str(lab.root / "x")),
        ):
            res = lab.cli(*args, token=alice)
            assert res.returncode != 0
            line = res.stderr.strip()
            assert f"outputs of job {jid} live on {NODE}, which is offline since" in line
            assert len(line.splitlines()) == 1
    finally:
        lab.start_agent(NODE)


def test_wait_and_submit_fetch_pull_the_outputs_when_the_job_ends(lab: Lab, alice: str) -> None:
    jid = submit(lab, alice, 'sleep 1; echo result > "$MLSM_OUTPUT_DIR/result.txt"')
    dest = lab.root / "waited"
    res = lab.cli("wait", str(jid), "--fetch", str(dest), token=alice)
    assert res.returncode == 0, res.stderr
    assert (dest / "result.txt").read_text() == "result\n"
    sub = lab.root / "submitted"
    res = lab.cli(
        "submit", "--node", NODE, "--fetch", str(sub), "--",
        "sh", "-c", 'echo made > "$MLSM_OUTPUT_DIR/made.txt"',
        token=alice,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert (sub / "made.txt").read_text() == "made\n"
    failed = lab.cli(
        "submit", "--node", NODE, "--fetch", str(lab.root / "f"), "--", "false", token=alice
    )
    assert failed.returncode == 3  # failed, as `mlsm wait` and `mlsm logs -f` say it


def test_a_fetch_of_all_outputs_leaves_out_the_code_the_job_did_not_change(
    lab: Lab, alice: str
) -> None:
    """The job's copy of the shipped directory comes back only as far as the job changed
    it: a file it wrote there and a file it rewrote, not the untouched code (unless asked),
    also after the agent restarted (the snapshot's manifest is in the node's cache)."""
    project = lab.root / "proj"
    (project / "lib").mkdir(parents=True)
    (project / "train.py").write_text("print('train')\n")
    (project / "lib" / "util.py").write_text("X = 1\n")
    (project / "notes.txt").write_text("before\n")
    script = (
        "mkdir -p runs && echo ckpt > runs/last.txt && echo after > notes.txt && "
        'echo result > "$MLSM_OUTPUT_DIR/result.txt"'
    )
    jid = lab.submit("--node", NODE, "--", "sh", "-c", script, token=alice, cwd=project)
    lab.wait_job(jid, "succeeded", DEADLINE_S)

    def fetched(dest: Path, *extra: str) -> set[str]:
        got = lab.cli("outputs", "get", str(jid), "-o", str(dest), *extra, token=alice)
        assert got.returncode == 0, got.stderr
        return {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}

    made = {"result.txt", "code/runs/last.txt", "code/notes.txt"}
    assert fetched(lab.root / "code-less") >= made
    assert not fetched(lab.root / "code-less") & {"code/train.py", "code/lib/util.py"}
    assert not (lab.root / "code-less" / "code" / "lib").exists()  # nothing of it changed
    assert (lab.root / "code-less" / "code" / "notes.txt").read_text() == "after\n"
    everything = fetched(lab.root / "code-all", "--include-code")
    assert everything >= made | {"code/train.py", "code/lib/util.py"}
    named = fetched(lab.root / "code-named", "code/train.py")  # asked for by name: sent
    assert "code/train.py" in named
    listing = lab.cli("outputs", str(jid), "code", token=alice)  # browsing shows it all
    assert listing.returncode == 0 and "train.py" in listing.stdout

    lab.stop_agent(NODE)
    lab.wait_node_state(NODE, "offline", DEADLINE_S)
    lab.start_agent(NODE)
    after = fetched(lab.root / "code-after-restart")
    assert after >= made and "code/train.py" not in after
