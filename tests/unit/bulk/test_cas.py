"""mlsm.bulk.cas: blobs are verified before they are published, published whole, evicted
least recently used under the byte bound but never while pinned; writers of one blob at
once, a store re-opened after its process was killed, and a StoreSink fed from a Source."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mlsm.bulk import Manifest, Source, Store, StoreSink, build_manifest, pump
from mlsm.bulk.cas import TMP_DIR
from mlsm.errors import StoreFull, TransferFailed
from tests.unit.bulk.support import copy, file_entry, write


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob(n: int, size: int = 100) -> bytes:
    return bytes([n % 256]) * size


def test_bytes_that_do_not_hash_to_the_name_are_refused_and_leave_nothing(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "s", 10_000)
    with pytest.raises(TransferFailed, match="refused"):
        store.put_bytes(sha(b"right"), b"wrong")
    assert not store.contains(sha(b"right"))
    assert not store.blob_path(sha(b"right")).exists()
    assert list((tmp_path / "s" / TMP_DIR).iterdir()) == []
    with pytest.raises(ValueError):
        store.blob_path("../" + "a" * 61)
    assert store.put_bytes(sha(b"right"), b"right")
    assert store.read_blob(sha(b"right")) == b"right"
    assert not store.put_bytes(sha(b"right"), b"right")  # there already


def test_a_blob_is_invisible_until_it_is_committed(tmp_path: Path) -> None:
    store = Store(tmp_path / "s", 10_000)
    data = blob(1, 1000)
    with store.writer(sha(data)) as w:
        w.write(data[:500])
        assert store.open_blob(sha(data)) is None
        assert not store.blob_path(sha(data)).exists()
        w.write(data[500:])
        w.commit()
    assert store.read_blob(sha(data)) == data
    with store.writer(sha(b"x")) as w:
        w.write(b"x")  # never committed
    assert not store.contains(sha(b"x")) and list((tmp_path / "s" / TMP_DIR).iterdir()) == []


def test_least_recently_used_blobs_go_first_under_the_byte_bound(tmp_path: Path) -> None:
    store = Store(tmp_path / "s", 500)
    for n in range(5):
        store.put_bytes(sha(blob(n)), blob(n))
    assert store.usage().bytes == 500
    assert store.has([sha(blob(0))]) == []  # blob 0 used: 1 is now the oldest
    store.put_bytes(sha(blob(5)), blob(5))
    assert not store.contains(sha(blob(1))) and not store.blob_path(sha(blob(1))).exists()
    assert all(store.contains(sha(blob(n))) for n in (0, 2, 3, 4, 5))
    store.read_blob(sha(blob(2)))  # opening is a use too
    store.put_bytes(sha(blob(6, 200)), blob(6, 200))
    assert not store.contains(sha(blob(3))) and not store.contains(sha(blob(4)))
    assert store.contains(sha(blob(2))) and store.usage().bytes <= 500


def test_pins_are_never_evicted_and_a_store_full_of_them_says_so(tmp_path: Path) -> None:
    store = Store(tmp_path / "s", 300)
    hashes = [sha(blob(n)) for n in range(3)]
    store.pin("job-1", hashes[:2])
    store.pin("job-2", [hashes[2]])
    for n in range(3):
        store.put_bytes(hashes[n], blob(n))
    with pytest.raises(StoreFull):
        store.put_bytes(sha(blob(9)), blob(9))
    with pytest.raises(StoreFull):
        store.writer(sha(blob(9)), 100)  # refused before any byte is sent
    with pytest.raises(StoreFull):
        store.writer(sha(blob(9, 301)), 301)  # larger than the store
    assert all(store.contains(h) for h in hashes)
    assert store.usage().pinned_bytes == 300
    assert not store.evict(hashes[0])
    store.unpin("job-2")
    store.put_bytes(sha(blob(9)), blob(9))
    assert not store.contains(hashes[2]) and store.contains(hashes[0])
    assert store.pinned("job-1") == set(hashes[:2])


def test_writers_of_the_same_blob_at_once_both_succeed_in_a_nearly_full_store(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "s", 1000)
    other = blob(7, 300)
    store.put_bytes(sha(other), other)
    data = blob(1, 600)
    writers = [store.writer(sha(data), len(data)) for _ in range(2)]
    for w in writers:
        w.write(data)
    for w in writers:
        w.commit()  # the second replaces the first's identical blob: no room needed
    assert store.read_blob(sha(data)) == data
    assert store.contains(sha(other))  # nothing evicted for a blob already there
    assert store.usage().bytes == 900
    store.pin("p", [sha(data), sha(other)])
    with store.writer(sha(data), len(data)) as w:  # a third writer, everything pinned
        w.write(data)
        w.commit()


def test_concurrent_threads_and_processes_writing_one_blob(tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    store = Store(tmp_path / "s", 10 << 20)
    errors: list[BaseException] = []

    def put() -> None:
        try:
            with store.writer(sha(data), len(data)) as w:
                for i in range(0, len(data), 4096):
                    w.write(data[i : i + 4096])
                w.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=put) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.read_blob(sha(data)) == data and store.usage().blobs == 1
    other = Store(tmp_path / "s", 10 << 20)  # a second process's view of the same store
    assert other.read_blob(sha(data)) == data


_KILLED_WRITER = """
import sys, os, hashlib, signal
from mlsm.bulk import Store
store = Store(sys.argv[1], 1 << 30)
done = b"done" * 10
store.put_bytes(hashlib.sha256(done).hexdigest(), done)
data = b"half" * 1000
w = store.writer(hashlib.sha256(data).hexdigest(), len(data))
w.write(data[:1000])
sys.stdout.write("ready\\n"); sys.stdout.flush()
signal.pause()
"""


def test_a_store_reopened_after_its_process_was_killed(tmp_path: Path) -> None:
    root = tmp_path / "s"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(root)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = Store(root, 1 << 30)
    assert store.read_blob(sha(b"done" * 10)) == b"done" * 10
    half = b"half" * 1000
    assert not store.contains(sha(half)) and store.has([sha(half)]) == [sha(half)]
    assert store.put_bytes(sha(half), half) and store.read_blob(sha(half)) == half
    os.unlink(store.blob_path(sha(half)))  # a blob file lost behind the index
    assert store.open_blob(sha(half)) is None and not store.contains(sha(half))
    done = sha(b"done" * 10)
    os.truncate(store.blob_path(done), 0)  # published, then cut short by a power loss
    assert store.open_blob(done) is None and not store.contains(done)
    assert store.has([done]) == [done]  # so it is fetched again


def test_a_lost_index_adopts_only_blobs_whose_bytes_match_their_names(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = Store(root, 1 << 20)
    good, bad = b"good" * 10, b"bad!" * 10
    store.put_bytes(sha(good), good)
    store.put_bytes(sha(bad), bad)
    store.close()
    store.blob_path(sha(bad)).write_bytes(b"damaged")
    for name in os.listdir(root):
        if name.startswith("index.sqlite"):
            os.unlink(root / name)
    store = Store(root, 1 << 20)
    assert store.read_blob(sha(good)) == good
    assert store.read_blob(sha(bad)) is None


def test_a_store_sink_fetches_only_missing_blobs_once_each(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a", b"same")
    write(src / "b", b"same")
    write(src / "c", os.urandom(3 << 20))
    write(src / "e", b"")
    write(src / "have", b"already")
    m = build_manifest(src)
    store = Store(tmp_path / "s", 1 << 30)
    store.put_bytes(sha(b"already"), b"already")
    sink = StoreSink(store, m)
    want = sink.next_want()
    assert want is not None
    asked = {m.entries[i].path for i, _, _ in want.items}
    assert asked == {"a", "c"}  # "b" has a's bytes; "e" needs none; "have" is there
    with Source.from_tree(src, m) as source:
        pump(sink, source.chunks)
    assert sink.complete and sink.bytes_received == 4 + (3 << 20)
    for e in m.entries:
        assert store.contains(e.sha256)
    with Source.from_store(store, m) as source:  # and served back
        dest = tmp_path / "work"
        from mlsm.bulk import Sink

        tree_sink = Sink(m, dest, durable=False)
        pump(tree_sink, source.chunks)
        tree_sink.finish(tmp_path / "dest")
    assert (tmp_path / "dest" / "c").read_bytes() == (src / "c").read_bytes()


def test_a_store_sink_refuses_damaged_bytes_and_gives_up(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "f", b"real bytes")
    entry = file_entry("f", b"fake bytes")  # same size and mtime, other bytes
    os.utime(src / "f", ns=(entry.mtime_ns, entry.mtime_ns))
    m = Manifest([entry])
    store = Store(tmp_path / "s", 1 << 20)
    with pytest.raises(TransferFailed):
        copy(src, m, StoreSink(store, m))
    assert store.usage().blobs == 0


def test_a_store_sink_with_need_receives_present_blobs_again_and_lists_what_it_wrote(
    tmp_path: Path,
) -> None:
    """``need``: blobs the store holds are asked for all the same (a sender proving it has
    the bytes); ``received`` lists exactly the entries whose blob was written."""
    src = tmp_path / "src"
    write(src / "held", b"held bytes")
    write(src / "other", b"other bytes")
    write(src / "new", b"new bytes")
    m = build_manifest(src)
    store = Store(tmp_path / "s", 1 << 20)
    store.put_bytes(sha(b"held bytes"), b"held bytes")
    store.put_bytes(sha(b"other bytes"), b"other bytes")
    plain = StoreSink(store, m)
    want = plain.next_want()
    assert want is not None and {m.entries[i].path for i, _, _ in want.items} == {"new"}
    plain.close()
    sink = StoreSink(store, m, need=[sha(b"held bytes")])
    want = sink.next_want()
    assert want is not None and {m.entries[i].path for i, _, _ in want.items} == {"held", "new"}
    copy(src, m, sink)
    assert sink.complete and sorted(m.entries[i].path for i in sink.received) == ["held", "new"]
    assert sink.bytes_received == len(b"held bytes") + len(b"new bytes")
    # Damaged bytes for a needed blob are refused: what the store held stays as it was.
    fake = file_entry("held", b"fake bytes")
    store2 = Store(tmp_path / "s2", 1 << 20)
    store2.put_bytes(fake.sha256, b"fake bytes")
    (src / "held").write_bytes(b"evil bytes")
    os.utime(src / "held", ns=(fake.mtime_ns, fake.mtime_ns))
    bad = Manifest([fake])
    with pytest.raises(TransferFailed):
        copy(src, bad, StoreSink(store2, bad, need=[fake.sha256]))
    assert store2.read_blob(fake.sha256) == b"fake bytes"


def test_pin_owners_lists_each_owner_once_until_its_pins_go(tmp_path: Path) -> None:
    store = Store(tmp_path / "s", 1 << 20)
    assert store.pin_owners() == set()
    store.pin("job:1", [sha(b"a"), sha(b"b")])
    store.pin("code:x", [sha(b"a")])  # pins need no blob present
    assert store.pin_owners() == {"job:1", "code:x"}
    store.unpin("job:1")
    assert store.pin_owners() == {"code:x"}
    store.close()
    assert Store(tmp_path / "s", 1 << 20).pin_owners() == {"code:x"}  # kept in the index


def test_pins_add_up_per_owner_and_an_old_index_keeps_them(tmp_path: Path) -> None:
    """Pinning adds to what an owner holds (each hash once); an index written with one row
    per (owner, hash) opens with those pins folded into pin sets, none lost."""
    store = Store(tmp_path / "s", 1 << 20)
    store.pin("job:1", [sha(b"a"), sha(b"b")])
    store.pin("job:1", [sha(b"b"), sha(b"c"), sha(b"c")])
    assert store.pinned("job:1") == {sha(b"a"), sha(b"b"), sha(b"c")}
    assert store.pinned("nobody") == set()
    store.close()

    old = tmp_path / "old"
    Store(old, 1 << 20).close()
    db = sqlite3.connect(old / "index.sqlite")
    db.executescript(
        "DROP TABLE pinsets; CREATE TABLE pins (owner TEXT NOT NULL, sha TEXT NOT NULL,"
        " PRIMARY KEY (owner, sha));"
    )
    db.executemany(
        "INSERT INTO pins VALUES (?, ?)",
        [("job:7", sha(b"x")), ("job:7", sha(b"y")), ("code:z", sha(b"x"))],
    )
    db.commit()
    db.close()
    reopened = Store(old, 1 << 20)
    assert reopened.pinned("job:7") == {sha(b"x"), sha(b"y")}
    assert reopened.pin_owners() == {"job:7", "code:z"}
    reopened.close()


def test_a_store_sink_makes_room_up_front_and_publishes_in_batches(tmp_path: Path) -> None:
    """StoreFull before any byte when the missing blobs cannot fit; otherwise every blob
    lands, the byte total (kept by the index) matches, and evictions are reported once."""
    src = tmp_path / "src"
    for n in range(300):  # more than one publish batch
        write(src / f"f{n}", blob(n, 10) + str(n).encode())
    m = build_manifest(src)
    total = sum(e.size for e in m.entries if e.kind == "f")
    full = Store(tmp_path / "full", total - 1)
    full.pin("p", [e.sha256 for e in m.entries[:1]])
    with pytest.raises(StoreFull):
        StoreSink(full, m)
    store = Store(tmp_path / "s", total + 50)
    old = blob(1, 100)
    store.put_bytes(sha(old), old)  # the least recently used: must go for the snapshot
    sink = StoreSink(store, m)
    assert store.drain_evicted() == [sha(old)] and store.drain_evicted() == []
    copy(src, m, sink)
    assert sink.complete and len(sink.received) == 300
    assert store.usage().bytes == total and store.usage().blobs == 300
    store.close()
    again = Store(tmp_path / "s", total + 50)
    assert again.usage().bytes == total
    assert all(again.contains(e.sha256) for e in m.entries if e.kind == "f")
