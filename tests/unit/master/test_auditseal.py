"""The audit key and tail anchor files: made private, read back only when their seal holds,
and an anchor whose newest slot is torn still gives the previous one."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from mlsm.errors import ConfigError
from mlsm.master.services import auditseal as seal


def test_the_key_is_made_once_0600_and_read_back(tmp_path: Path) -> None:
    key, created = seal.load_or_create_key(tmp_path, 13)
    assert created and key.first_row == 13
    path = tmp_path / seal.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created = seal.load_or_create_key(tmp_path, 99)
    assert not created and again.key == key.key and again.first_row == 13


def test_a_damaged_key_stops_the_master_saying_what_to_do(tmp_path: Path) -> None:
    (tmp_path / seal.KEY_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="restore it from your backup"):
        seal.load_or_create_key(tmp_path, 1)


def test_the_anchor_alternates_slots_and_survives_a_torn_write(tmp_path: Path) -> None:
    key, _ = seal.load_or_create_key(tmp_path, 1)
    f = seal.AnchorFile(tmp_path, key)
    assert f.read() is None
    for n in range(1, 6):
        f.write(seal.Anchor(n, f"{n:064x}"))
    f.close()
    assert stat.S_IMODE(f.path.stat().st_mode) == 0o600
    assert seal.AnchorFile(tmp_path, key).read() == seal.Anchor(5, f"{5:064x}")
    # the newest slot (seq 5: slot 1) torn half-way: the previous anchor is what is left
    raw = bytearray(f.path.read_bytes())
    raw[seal.ANCHOR_SLOT + 40 : 2 * seal.ANCHOR_SLOT] = b"\0" * (seal.ANCHOR_SLOT - 40)
    f.path.write_bytes(bytes(raw))
    reader = seal.AnchorFile(tmp_path, key)
    assert reader.read() == seal.Anchor(4, f"{4:064x}")
    reader.write(seal.Anchor(6, f"{6:064x}"))  # goes on from the surviving sequence
    assert seal.AnchorFile(tmp_path, key).read() == seal.Anchor(6, f"{6:064x}")


def test_an_anchor_sealed_with_another_key_is_damaged(tmp_path: Path) -> None:
    key, _ = seal.load_or_create_key(tmp_path / "a", 1)
    other, _ = seal.load_or_create_key(tmp_path / "b", 1)
    seal.AnchorFile(tmp_path / "a", key).write(seal.Anchor(3, "ab" * 32))
    (tmp_path / "b" / seal.ANCHOR_FILE).write_bytes(
        (tmp_path / "a" / seal.ANCHOR_FILE).read_bytes()
    )
    with pytest.raises(seal.AnchorDamaged):
        seal.AnchorFile(tmp_path / "b", other).read()


def test_incidents_keep_the_first_and_the_newest(tmp_path: Path) -> None:
    a = seal.Anchor(1, "0" * 64)
    for i in range(seal.MAX_INCIDENTS + 5):
        a.add_incident({"kind": "tail_missing", "n": i, "why": "x" * 1000})
    assert len(a.incidents) == seal.MAX_INCIDENTS and a.incident_count == seal.MAX_INCIDENTS + 5
    assert a.incidents[0]["n"] == 0 and a.incidents[-1]["n"] == seal.MAX_INCIDENTS + 4
    assert all(len(i["why"]) == seal.MAX_INCIDENT_TEXT for i in a.incidents)
    key, _ = seal.load_or_create_key(tmp_path, 1)
    f = seal.AnchorFile(tmp_path, key)
    f.write(a)  # the fullest anchor still fits its slot
    assert json.dumps(f.read().incidents) == json.dumps(a.incidents)  # type: ignore[union-attr]
