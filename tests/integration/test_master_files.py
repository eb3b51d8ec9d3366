"""The master's files are private whatever the umask of whoever starts it: the data dir
0700, the SQLite database and its -wal/-shm 0600, job logs and backups 0600 — also when an
older mlsm (or a permissive umask) left them readable."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.integration.helpers import CLI_TIMEOUT_S, MLSM, Master
from tests.support.env import isolated_env

PERMISSIVE_UMASK = 0o000


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _assert_private(data_dir: Path) -> None:
    assert _mode(data_dir) == 0o700, oct(_mode(data_dir))
    for name in ("mlsm.db", "mlsm.db-wal", "mlsm.db-shm"):
        path = data_dir / name
        assert path.exists(), name
        assert _mode(path) == 0o600, (name, oct(_mode(path)))
    logs = data_dir / "logs"
    assert _mode(logs) == 0o700, oct(_mode(logs))


@pytest.fixture
def permissive_master(tmp_path: Path) -> Master:
    return Master(tmp_path / "m", popen={"umask": PERMISSIVE_UMASK})


def test_a_new_data_dir_is_private_under_a_permissive_umask(permissive_master: Master) -> None:
    permissive_master.start()
    try:
        assert permissive_master.admin_token  # a login writes to the database
        _assert_private(permissive_master.data_dir)
    finally:
        permissive_master.stop()


def test_existing_readable_files_are_narrowed(permissive_master: Master) -> None:
    data = permissive_master.data_dir
    data.mkdir(parents=True)
    os.chmod(data, 0o777)
    for name in ("mlsm.db", "mlsm.db-wal", "mlsm.db-shm"):
        (data / name).touch()
        os.chmod(data / name, 0o666)
    permissive_master.start()
    try:
        _assert_private(data)
    finally:
        permissive_master.stop()


def test_a_backup_is_as_private_as_the_database(permissive_master: Master, tmp_path: Path) -> None:
    permissive_master.start()
    permissive_master.stop()
    dest = tmp_path / "backups" / "mlsm.db"
    proc = subprocess.run(
        [MLSM, "db", "backup", str(dest), "--data-dir", str(permissive_master.data_dir)],
        env=isolated_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        umask=PERMISSIVE_UMASK,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert _mode(dest) == 0o600, oct(_mode(dest))
    assert _mode(dest.parent) == 0o700, oct(_mode(dest.parent))
