"""mlsm.atomicfile: a reader sees the old file or the new one, never a part; links are not followed."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from mlsm import localprocs
from mlsm.atomicfile import write_atomic


def test_a_concurrent_reader_never_sees_the_file_empty_or_half_written(tmp_path: Path) -> None:
    # Two `mlsm` processes: one rewrites local.json, the other reads it. Before the rename,
    # the file was truncated in place and a reader once got '' (CI: JSONDecodeError).
    path = tmp_path / "local.json"
    texts = [f'{{"url": "http://127.0.0.1:{port}"}}' + " " * 4096 for port in (8765, 8766)]
    localprocs.write_private(path, texts[0])
    stop = threading.Event()
    seen: set[str] = set()

    def read() -> None:
        while not stop.is_set():
            seen.add(path.read_text())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(3000):
            localprocs.write_private(path, texts[i % 2])
    finally:
        stop.set()
        reader.join()
    assert seen <= set(texts), sorted(len(s) for s in seen - set(texts))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["local.json"]  # no temporary left behind


def test_a_link_planted_at_the_temporary_name_is_replaced_not_written_through(
    tmp_path: Path,
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    path = tmp_path / "credentials.toml"
    for n in range(64):  # the temporary names the next writes may take
        os.symlink(victim, tmp_path / f".credentials.toml.{os.getpid()}.{n}.tmp")
    os.symlink(victim, path)  # and one at the name itself: replaced by the rename
    write_atomic(path, "token = 'x'\n")
    assert victim.read_text() == "untouched"
    assert not path.is_symlink() and path.read_text() == "token = 'x'\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_failed_rename_leaves_what_was_there_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.mkdir()
    (path / "kept").write_text("old")  # a directory in the way: the rename fails
    with pytest.raises(OSError):
        write_atomic(path, "new")
    assert (path / "kept").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state"]
