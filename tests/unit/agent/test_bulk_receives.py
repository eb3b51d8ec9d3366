"""The agent's book of receives: what a restart resumes, and what it remembers of the end."""

from __future__ import annotations

import stat
from pathlib import Path

from agent.bulk.receives import FINISHED_KEPT, ReceiveBook, ReceiveRecord
from mlsm.wire import bulk as wb


def cmd(transfer_id: int, name: str = "ds") -> wb.BulkReceive:
    return wb.BulkReceive(
        id=100 + transfer_id,
        transfer_id=transfer_id,
        source=wb.SourceSpec(kind="dataset", name=name),
        name=name,
    )


def test_running_receives_and_their_work_dirs_survive_a_new_book(tmp_path: Path) -> None:
    book = ReceiveBook(tmp_path)
    book.put(ReceiveRecord(command=cmd(1, "a")))
    book.put(ReceiveRecord(command=cmd(2, "b")))
    book.put(ReceiveRecord(command=cmd(3, "c"), state="failed", message="no", ended_at=1.0))
    (book.dir / "4.tmp").write_bytes(b"half")  # a kill during a write
    again = ReceiveBook(tmp_path)  # the agent restarted
    assert [r.command.transfer_id for r in again.running()] == [1, 2]
    assert again.keep() == {".mlsm-bulk-a-1", ".mlsm-bulk-b-2"}
    assert not (book.dir / "4.tmp").exists()
    ended = again.get(3)
    assert ended is not None and (ended.state, ended.message) == ("failed", "no")
    assert stat.S_IMODE(book.dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((book.dir / "1").stat().st_mode) == 0o600


def test_an_unreadable_record_is_dropped(tmp_path: Path) -> None:
    book = ReceiveBook(tmp_path)
    (book.dir / "9").write_bytes(b"\xc1 not msgpack")
    assert book.get(9) is None and book.running() == []
    assert not (book.dir / "9").exists()


def test_only_the_last_finished_receives_are_remembered(tmp_path: Path) -> None:
    book = ReceiveBook(tmp_path)
    book.put(ReceiveRecord(command=cmd(999)))  # running: never pruned
    for i in range(FINISHED_KEPT + 5):
        book.put(ReceiveRecord(command=cmd(i + 1), state="succeeded", ended_at=float(i)))
    assert book.get(1) is None and book.get(5) is None
    assert book.get(6) is not None and book.get(FINISHED_KEPT + 5) is not None
    assert [r.command.transfer_id for r in book.running()] == [999]
