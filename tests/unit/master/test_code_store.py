"""The master's code store with a real SQLite database and a real blob store: a snapshot is
pinned once for all the open jobs that run in it (and unpinned with the last), and a
member's proofs of blobs that left the store are forgotten."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from mlsm.bulk import Source, Store, build_manifest, encode_manifest
from mlsm.bulk.want import Want
from mlsm.master.db import Database
from mlsm.master.db.models import CodeProof
from mlsm.master.security import Principal
from mlsm.master.services.code import UPLOAD_PIN_S, CodeStore
from mlsm.master.services.joblogs import LogStore
from mlsm.master.services.jobs.fairshare import FairShare
from mlsm.master.services.jobs.table import JobTable
from mlsm.master.services.settings import SettingsService
from tests.support.wait import wait_until_async

ANN = Principal(kind="user", name="ann", role="member")
UNPIN_DEADLINE_S = 10.0


@pytest.fixture
async def code(tmp_path: Path) -> AsyncIterator[CodeStore]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'master.db'}")
    await db.migrate(backup=False)
    lab = SettingsService(db)
    await lab.load()
    store = Store(tmp_path / "code", 1 << 20)
    yield CodeStore(db, store, lab, JobTable(FairShare(3600.0), LogStore(tmp_path / "logs")))
    store.close()
    await db.close()


async def _ship(code: CodeStore, tree: Path, p: Principal = ANN) -> str:
    """Offer and upload ``tree`` as the CLI does; its digest."""
    m = build_manifest(tree)
    offer = await code.offer(p, encode_manifest(m))
    if offer.want:
        with Source.from_tree(tree, m) as source:
            items = [(i, 0, m.entries[i].size) for i in offer.want]
            chunks = list(source.chunks(Want(items)))

        async def body() -> AsyncIterator[bytes]:
            for c in chunks:
                yield bytes(c)

        offer, _ = await code.receive(p, offer.digest, body())
    assert offer.complete
    return offer.digest


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


async def test_a_snapshot_is_pinned_once_for_its_open_jobs(code: CodeStore, tmp_path: Path) -> None:
    digest = await _ship(code, _tree(tmp_path / "t", {"a.py": b"a", "b.py": b"b"}))
    m = await code.check_access(ANN, digest)
    await code.attach(digest, m, [1, 2, 3])  # an array of three
    await code.attach(digest, m, [4])  # a resubmit of the same tree
    owners = code.store.pin_owners()
    assert f"code:{digest}" in owners and not any(o.startswith("job:") for o in owners)
    assert len(code.store.pinned(f"code:{digest}")) == 3  # the manifest and two files
    for job_id in (1, 2, 3):
        code.release(job_id)
    await code.prune_proofs()  # lets the loop run the release tasks
    assert f"code:{digest}" in code.store.pin_owners()  # job 4 still needs it
    code.release(4)
    await code.prune_proofs()
    assert f"code:{digest}" in code.store.pin_owners()  # its upload window is still open
    later = time.monotonic() + UPLOAD_PIN_S + 1
    await code.expire_uploads(now=later)
    assert f"code:{digest}" not in code.store.pin_owners()
    # Offered again and a job attached: the window closing leaves the job's pin alone.
    await _ship(code, tmp_path / "t")
    await code.attach(digest, m, [5])
    await code.expire_uploads(now=later + 2 * UPLOAD_PIN_S)
    assert f"code:{digest}" in code.store.pin_owners()
    code.release(5)

    async def unpinned() -> bool:
        return f"code:{digest}" not in code.store.pin_owners()

    await wait_until_async(unpinned, UNPIN_DEADLINE_S, "the last job's release to unpin")


async def test_proofs_of_blobs_that_left_the_store_are_forgotten(
    code: CodeStore, tmp_path: Path
) -> None:
    digest = await _ship(code, _tree(tmp_path / "t", {"x.bin": b"x" * 1000, "y.bin": b"y"}))

    async def proofs() -> set[str]:
        async with code.db.session() as s:
            rows = await s.execute(select(CodeProof.sha256).where(CodeProof.user == "ann"))
            return set(rows.scalars())

    m = await code.manifest(digest)
    x = next(e.sha256 for e in m.entries if e.path == "x.bin")
    assert x in await proofs()
    await code.expire_uploads(now=time.monotonic() + UPLOAD_PIN_S + 1)
    assert code.store.evict(x)
    assert await code.prune_proofs() == 1
    assert x not in await proofs() and len(await proofs()) == 1
    # Evicted without this object knowing (another process): the start-up prune finds it.
    y = next(e.sha256 for e in m.entries if e.path == "y.bin")
    other = Store(code.store.root, code.store.max_bytes)
    assert other.evict(y)
    other.close()
    await code.load()
    assert await proofs() == set()
