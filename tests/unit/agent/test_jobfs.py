"""The agent's only way into a job's files: links, FIFOs, hard links and other accounts'
files that a job planted are refused or replaced, never followed (real files, no mocks)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from agent.logship import _read_chunk
from agent.runtimes import jobfs
from agent.runtimes.base import RuntimeContext

BLOCK_DEADLINE_S = 5.0  # an open that blocks on a FIFO would never return


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file only its owner may read, as /etc/shadow is to a member."""
    p = tmp_path / "secret"
    p.write_text("root-only secret\n")
    p.chmod(0o600)
    return p


def unchanged(p: Path, before: os.stat_result, text: str) -> bool:
    st = p.stat()
    return (st.st_uid, st.st_gid, st.st_mode, st.st_size) == (
        before.st_uid,
        before.st_gid,
        before.st_mode,
        before.st_size,
    ) and p.read_text() == text


def returns_in_time(fn, *args) -> object:  # type: ignore[no-untyped-def]
    """Run ``fn`` in a thread; fail when it is still blocked after the deadline."""
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(_call(fn, *args)), daemon=True)
    t.start()
    t.join(BLOCK_DEADLINE_S)
    assert not t.is_alive(), f"{fn.__name__} blocked"
    return out[0]


def _call(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return fn(*args)
    except OSError as e:
        return e


def test_a_symlinked_log_is_neither_read_nor_appended_to(tmp_path: Path, secret: Path) -> None:
    log = tmp_path / "output.log"
    log.symlink_to(secret)
    before = secret.stat()
    with pytest.raises(jobfs.UnsafeFileError, match="symbolic link"):
        jobfs.read_regular(log, 1 << 20)
    with pytest.raises(OSError):
        _read_chunk(log, 0, 1 << 20, None)
    jobfs.append_line(log, "[mlsm] job 1 cancelled")
    assert not jobfs.tail_contains(log, b"secret", 4096)
    assert unchanged(secret, before, "root-only secret\n")


def test_a_fifo_log_never_blocks_a_reader_or_writer(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    os.mkfifo(log)
    got = returns_in_time(jobfs.read_regular, log, 4096)
    assert isinstance(got, jobfs.UnsafeFileError)
    returns_in_time(jobfs.append_line, log, "[mlsm] marker")
    assert returns_in_time(jobfs.file_size, log) == 0
    assert stat.S_ISFIFO(log.lstat().st_mode)


def test_a_hard_link_to_another_file_is_refused(tmp_path: Path, secret: Path) -> None:
    log = tmp_path / "output.log"
    os.link(secret, log)
    with pytest.raises(jobfs.UnsafeFileError, match="hard link"):
        jobfs.read_regular(log, 4096)


@pytest.mark.skipif(os.geteuid() != 0, reason="files of another account need root")
def test_a_file_of_another_account_is_refused_when_the_owner_is_known(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_text("not yours\n")
    os.chown(log, 65534, 65534)
    with pytest.raises(jobfs.UnsafeFileError, match="owned by uid 65534"):
        jobfs.read_regular(log, 4096, owner=0)
    assert jobfs.read_regular(log, 4096, owner=65534) == b"not yours\n"


def test_a_planted_tmp_link_does_not_redirect_an_atomic_write(tmp_path: Path, secret: Path) -> None:
    before = secret.stat()
    (tmp_path / "stop.json.tmp").symlink_to(secret)
    jobfs.write_json(tmp_path / "stop.json", {"reason": "cancelled"})
    assert jobfs.read_json(tmp_path / "stop.json") == {"reason": "cancelled"}
    assert unchanged(secret, before, "root-only secret\n")


@pytest.mark.parametrize("planted", ["symlink", "fifo", "hardlink"])
def test_a_planted_log_is_replaced_by_a_fresh_one_of_the_jobs_own(
    tmp_path: Path, secret: Path, planted: str
) -> None:
    job = tmp_path / "job"
    job.mkdir()
    log = job / "output.log"
    {"symlink": lambda: log.symlink_to(secret), "fifo": lambda: os.mkfifo(log)}.get(
        planted, lambda: os.link(secret, log)
    )()
    before = secret.stat()
    fd = returns_in_time(jobfs.open_job_log, job, os.geteuid(), os.getegid())
    assert isinstance(fd, int)
    try:
        os.write(fd, b"job output\n")
    finally:
        os.close(fd)
    st = log.lstat()
    assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1
    assert log.read_text() == "job output\n"
    assert unchanged(secret, before, "root-only secret\n")


def test_an_earlier_attempts_log_of_the_job_is_kept(tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    (job / "output.log").write_text("attempt 0\n")
    fd = jobfs.open_job_log(job, os.geteuid(), os.getegid())
    os.write(fd, b"attempt 1\n")
    os.close(fd)
    assert (job / "output.log").read_text() == "attempt 0\nattempt 1\n"


def test_control_dirs_are_private_and_a_link_in_their_place_is_refused(tmp_path: Path) -> None:
    ctx = RuntimeContext(node_name="n", agent_data=tmp_path / "agent")
    d = jobfs.ensure_control_dir(ctx, 7)
    assert d == tmp_path / "agent" / "control" / "7"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "agent" / "control" / "8").symlink_to(elsewhere)
    with pytest.raises(jobfs.UnsafeFileError):
        jobfs.ensure_control_dir(ctx, 8)


def test_an_existing_data_dir_is_never_widened(tmp_path: Path) -> None:
    data = tmp_path / "agent"
    data.mkdir(mode=0o700)
    ctx = RuntimeContext(node_name="n", agent_data=data, runs_as_root=True)
    jobfs.ensure_agent_dir(ctx)
    jobfs.ensure_control_dir(ctx, 1)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("root", "single", "mode"), [(True, False, 0o711), (True, True, 0o700), (False, False, 0o700)]
)
def test_a_new_data_dir_is_traversable_only_when_jobs_run_as_other_accounts(
    tmp_path: Path, root: bool, single: bool, mode: int
) -> None:
    data = tmp_path / "agent"
    ctx = RuntimeContext(node_name="n", agent_data=data, runs_as_root=root, single_user=single)
    jobfs.ensure_agent_dir(ctx)
    assert stat.S_IMODE(data.stat().st_mode) == mode
