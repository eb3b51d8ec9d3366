"""A dataset copy cut by SIGKILL of each party resumes from what was verified.

A real master and two real agents on loopback. Each copy is held at about half way (the
source agent is stopped with SIGSTOP once the target's work dir holds a third of the big
file, so the cut lands mid-transfer on a machine of any speed), then the master, the
source agent or the target agent is killed with SIGKILL and started again. The copy must
end ``succeeded`` as the same transfer, byte-exact, with the bytes sent again well under
the total (resumed, not restarted), and never a half-visible dataset on the target.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlsm.wire import api
from tests.integration.lab import Lab
from tests.support.wait import wait_until

TRANSFER_DEADLINE_S = 120.0
BIG = 96 << 20  # one file large enough to be cut mid-way
SMALL_FILES = 300
CUT_FRACTION = 0.3  # the source is held once the target holds this much of the big file
RESENT_MAX_FRACTION = 0.1  # bytes re-sent after a cut, at most (of the total)


def make_dataset(root: Path, name: str) -> dict[str, bytes]:
    files = {"big.bin": os.urandom(BIG)}
    for i in range(SMALL_FILES):
        # before big.bin: done, and their hashes learned by the source, before the cut (a
        # target that restarts then gets its manifest only by naming it)
        files[f"a-small/{i:04d}.txt"] = f"file {i}\n".encode() * (i % 7 + 1)
    for rel, data in files.items():
        p = root / name / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


def tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


NAMES = ("cut-target", "cut-source", "cut-master", "cut-cancel")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, dict[str, bytes]]]:
    with Lab(tmp_path_factory.mktemp("resume")) as lab:
        lab.start_master()
        src_root = lab.root / "roots" / "rsa"
        files: dict[str, bytes] = {}
        for name in NAMES:
            files = make_dataset(src_root, name)  # the same sizes; contents differ by name
        lab.start_agent("rsa", gpus="", dataset_roots=[src_root])
        lab.start_agent("rsb", gpus="", dataset_roots=[lab.root / "roots" / "rsb"])
        yield lab, files


def start_copy(lab: Lab, name: str) -> api.Transfer:
    wait_until(
        lambda: any(
            d.name == name and d.copies
            for d in lab.admin.call("GET", "/api/v1/datasets", type=list[api.Dataset])
        ),
        TRANSFER_DEADLINE_S,
        f"{name} in the catalog",
    )
    body = api.DatasetTransfer(name=name, src="rsa", dst="rsb")
    return lab.admin.call("POST", "/api/v1/datasets/transfer", json=body, type=api.Transfer)


def hold_source_mid_way(lab: Lab, name: str, tid: int) -> None:
    """Stop the source agent (SIGSTOP) once the target holds CUT_FRACTION of big.bin."""
    part = lab.root / "roots" / "rsb" / f".mlsm-bulk-{name}-{tid}" / "tree" / "big.bin"

    def far_enough() -> bool:
        try:
            return part.stat().st_size >= BIG * CUT_FRACTION
        except FileNotFoundError:
            return False

    wait_until(far_enough, TRANSFER_DEADLINE_S, f"{name} to be a third received", poll_s=0.005)
    os.kill(lab.agents["rsa"].proc.pid, signal.SIGSTOP)


def release_source(lab: Lab) -> None:
    os.kill(lab.agents["rsa"].proc.pid, signal.SIGCONT)


def finished(lab: Lab, tid: int) -> api.Transfer:
    def ended() -> api.Transfer | None:
        t = lab.admin.call("GET", f"/api/v1/transfers/{tid}", type=api.Transfer)
        return t if t.state not in ("pending", "running") else None

    return wait_until(ended, TRANSFER_DEADLINE_S, f"transfer {tid} to end")


def figures(message: str) -> tuple[int, int, int, int]:
    """(total, sent, held when resumed, re-sent) from a copy's final message."""
    m = re.search(
        r"received \d+ files, (\d+) bytes \((\d+) sent"
        r"(?: after resuming from (\d+) held)?, (\d+) re-sent\)",
        message,
    )
    assert m is not None, message
    total, sent, held, resent = m.groups()
    return int(total), int(sent), int(held or 0), int(resent)


def check_result(lab: Lab, name: str, files: dict[str, bytes], t: api.Transfer) -> None:
    assert t.state == "succeeded", t.message
    got = tree(lab.root / "roots" / "rsb" / name)
    assert got.keys() == files.keys()
    want = tree(lab.root / "roots" / "rsa" / name)
    assert got == want  # byte-exact
    hidden = [p.name for p in (lab.root / "roots" / "rsb").iterdir() if p.name.startswith(".")]
    assert not hidden, hidden


def test_a_copy_resumes_after_the_target_agent_is_killed(
    lab: tuple[Lab, dict[str, bytes]],
) -> None:
    the_lab, files = lab
    t = start_copy(the_lab, "cut-target")
    hold_source_mid_way(the_lab, "cut-target", t.id)
    the_lab.stop_agent("rsb", signal.SIGKILL)
    assert not (the_lab.root / "roots" / "rsb" / "cut-target").exists()  # nothing half-visible
    release_source(the_lab)
    the_lab.start_agent("rsb", gpus="", dataset_roots=[the_lab.root / "roots" / "rsb"])
    end = finished(the_lab, t.id)
    check_result(the_lab, "cut-target", files, end)
    total, sent, held, resent = figures(end.message)
    assert "re-sent) direct" in end.message  # the new agent connects to the source again
    assert held >= BIG * CUT_FRACTION, end.message  # resumed from the journal ...
    assert sent <= total - held + RESENT_MAX_FRACTION * total, end.message  # ... not from 0
    assert resent <= RESENT_MAX_FRACTION * total, end.message


def test_a_copy_resumes_after_the_source_agent_is_killed(
    lab: tuple[Lab, dict[str, bytes]],
) -> None:
    the_lab, files = lab
    t = start_copy(the_lab, "cut-source")
    hold_source_mid_way(the_lab, "cut-source", t.id)
    the_lab.stop_agent("rsa", signal.SIGKILL)
    the_lab.start_agent("rsa", gpus="", dataset_roots=[the_lab.root / "roots" / "rsa"])
    end = finished(the_lab, t.id)
    check_result(the_lab, "cut-source", files, end)
    assert "re-sent) direct" in end.message  # to the restarted source's new listener
    total, sent, _held, resent = figures(end.message)
    assert resent <= RESENT_MAX_FRACTION * total, end.message
    assert sent <= total * (1 + RESENT_MAX_FRACTION), end.message


def test_a_copy_resumes_after_the_master_is_killed(lab: tuple[Lab, dict[str, bytes]]) -> None:
    the_lab, files = lab
    t = start_copy(the_lab, "cut-master")
    hold_source_mid_way(the_lab, "cut-master", t.id)
    the_lab.stop_master(signal.SIGKILL)
    the_lab.start_master()
    release_source(the_lab)
    end = finished(the_lab, t.id)
    check_result(the_lab, "cut-master", files, end)
    assert "re-sent) direct" in end.message
    total, sent, _held, resent = figures(end.message)
    assert resent <= RESENT_MAX_FRACTION * total, end.message
    assert sent <= total * (1 + RESENT_MAX_FRACTION), end.message


def test_a_copy_cancelled_while_its_target_is_down_leaves_nothing(
    lab: tuple[Lab, dict[str, bytes]],
) -> None:
    the_lab, _files = lab
    root = the_lab.root / "roots" / "rsb"
    t = start_copy(the_lab, "cut-cancel")
    hold_source_mid_way(the_lab, "cut-cancel", t.id)
    the_lab.stop_agent("rsb", signal.SIGKILL)
    release_source(the_lab)
    the_lab.wait_node_state("rsb", "offline")
    assert (root / f".mlsm-bulk-cut-cancel-{t.id}").is_dir()  # kept for a resume
    the_lab.admin.call("POST", f"/api/v1/transfers/{t.id}/cancel")
    end = finished(the_lab, t.id)  # at once: the target cannot answer
    assert end.state == "cancelled", end.message
    the_lab.start_agent("rsb", gpus="", dataset_roots=[root])
    wait_until(
        lambda: not any(p.name.startswith(".mlsm-") for p in root.iterdir()),
        TRANSFER_DEADLINE_S,
        "the resumed receive to learn it was cancelled and remove its work dir",
    )
    assert not (root / "cut-cancel").exists()
