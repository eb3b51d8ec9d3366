"""The agent's local state file: round trip, atomic writes, corrupt files set aside."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

from agent.runtimes.base import AdoptRecord
from agent.state import AgentState
from tests.support.wait import wait_until


def record(job_id: int, **kw: object) -> AdoptRecord:
    fields: dict[str, object] = {
        "attempt": 1,
        "runtime": "process",
        "job_dir": f"/data/jobs/{job_id}",
        "started_at": 1700000000.5,
        "pid": 4242,
        "pid_start": 1700000000.25,
        "timeout_s": 60.0,
        "extra": {"k": "v"},
    }
    return AdoptRecord(job_id=job_id, **{**fields, **kw})  # type: ignore[arg-type]


def test_records_and_node_survive_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    st = AgentState(path).load()
    st.set_node(7, "node1")
    st.add(record(1))
    st.add(record(2, container_id="abc", runtime="docker"))
    st.set_log_offset(1, 1234)
    st.save()

    again = AgentState(path).load()
    assert (again.node_id, again.node_name) == (7, "node1")
    assert again.records() == [record(1), record(2, container_id="abc", runtime="docker")]
    assert again.log_acked == {1: 1234}


def test_add_replaces_the_record_of_the_same_job(tmp_path: Path) -> None:
    st = AgentState(tmp_path / "s.json").load()
    st.add(record(1))
    st.add(record(1, kill_grace_s=3.0))
    assert [r.kill_grace_s for r in AgentState(tmp_path / "s.json").load().records()] == [3.0]


def test_remove_forgets_record_and_log_offset(tmp_path: Path) -> None:
    st = AgentState(tmp_path / "s.json").load()
    st.add(record(1))
    st.add(record(2))
    st.set_log_offset(1, 10)
    st.remove(1)
    again = AgentState(tmp_path / "s.json").load()
    assert [r.job_id for r in again.records()] == [2]
    assert again.log_acked == {}


def test_missing_file_starts_empty(tmp_path: Path) -> None:
    st = AgentState(tmp_path / "nothing" / "s.json").load()
    assert st.records() == [] and st.node_id is None and st.log_acked == {}


def test_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    old = os.umask(0)
    try:
        AgentState(path).load().add(record(1))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600


def test_node_secret_is_not_stored(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    AgentState(path).load().set_node(3, "n")
    assert "secret" not in path.read_text()


def test_corrupt_file_is_set_aside_and_state_starts_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"jobs": [{"job_id": "not a number"')
    with caplog.at_level(logging.WARNING, logger="agent.state"):
        st = AgentState(path).load()
    assert st.records() == []
    aside = list(tmp_path.glob("s.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text().startswith('{"jobs"')
    assert "unreadable" in caplog.text
    st.add(record(9))
    assert [r.job_id for r in AgentState(path).load().records()] == [9]


def test_wrong_types_count_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"jobs": [{"job_id": "x"}]}')
    assert AgentState(path).load().records() == []
    assert list(tmp_path.glob("s.json.corrupt-*"))


def test_interrupted_write_leaves_the_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    st = AgentState(path).load()
    st.add(record(1))
    # A crash mid-save leaves at most a stray temp file next to the intact state file.
    (tmp_path / f".s.json.{os.getpid()}.tmp").write_text('{"jobs": [{"job')
    assert [r.job_id for r in AgentState(path).load().records()] == [1]
    st.add(record(2))
    assert [r.job_id for r in AgentState(path).load().records()] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]


def test_saves_under_way_together_share_one_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs that start together cost one write: while one save writes, the changes saved
    meanwhile go in the next snapshot, written once."""
    st = AgentState(tmp_path / "state.json").load()
    real_write = st._write
    written: list[bytes] = []
    writing, go_on = threading.Event(), threading.Event()

    def write(data: bytes) -> None:
        written.append(data)
        if len(written) == 1:
            writing.set()
            go_on.wait(10)
        real_write(data)

    monkeypatch.setattr(st, "_write", write)
    first = threading.Thread(target=st.add, args=(record(1),))
    first.start()
    assert writing.wait(10)
    later = [threading.Thread(target=st.add, args=(record(n),)) for n in (2, 3)]
    for t in later:
        t.start()
    wait_until(lambda: len(st.records()) == 3, 10, "both later changes made")
    go_on.set()
    for t in (first, *later):
        t.join(10)
    assert len(written) == 2  # the first snapshot, then one holding both later changes
    assert [r.job_id for r in AgentState(st.path).load().records()] == [1, 2, 3]


def test_a_save_with_nothing_changed_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent saves now and then for its log offsets: at rest that must not cost a
    write (two fsyncs) each time; a changed offset is written."""
    st = AgentState(tmp_path / "state.json").load()
    st.add(record(1))
    real_write = st._write
    written: list[bytes] = []

    def write(data: bytes) -> None:
        written.append(data)
        real_write(data)

    monkeypatch.setattr(st, "_write", write)
    st.save()
    st.set_log_offset(1, 0)
    st.set_log_offset(1, 0)
    st.save()
    assert len(written) == 1  # the offset 0 was new once
    st.set_log_offset(1, 0)
    st.save()
    assert len(written) == 1
    st.set_log_offset(1, 50)
    st.save()
    assert len(written) == 2
    assert AgentState(tmp_path / "state.json").load().log_acked == {1: 50}
