"""Copying a dataset between two roots through pack/receive, verified file by file."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from agent.datasets import (
    DatasetCancelled,
    DatasetExistsError,
    DatasetPathError,
    DatasetTooLargeError,
    TransferVerifyError,
    UnsafeArchiveError,
    digest,
    pack_dataset,
    receive_dataset,
)
from mlsm.wire.agent import TransferProgress
from tests.support.wait import wait_until_async


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    ds = tmp_path / "src-root" / "corpus"
    _write(ds / "a.txt", b"alpha")
    _write(ds / "deep" / "er" / "b.bin", os.urandom(3 * (1 << 20) + 5))  # several chunks
    _write(ds / "empty.txt", b"")
    (ds / "empty-dir").mkdir()
    (ds / "link").symlink_to(tmp_path)  # skipped by pack and manifest
    return ds


@pytest.fixture
def dest_root(tmp_path: Path) -> Path:
    r = tmp_path / "dst-root"
    r.mkdir()
    return r


async def _aiter(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


async def test_copy_between_roots_is_verified_file_by_file(source: Path, dest_root: Path) -> None:
    d, manifest = digest(source)
    events: list[TransferProgress] = []
    entry = await receive_dataset(
        _aiter(pack_dataset(source, chunk_size=256 << 10)),
        dest_root,
        "corpus",
        manifest,
        max_bytes=1 << 30,
        expected_digest=d,
        progress=events.append,
        command_id=3,
    )
    copy = dest_root / "corpus"
    assert digest(copy) == (d, manifest)
    for rel, _sha in manifest.items():
        assert (copy / rel).read_bytes() == (source / rel).read_bytes()
    assert (copy / "empty-dir").is_dir()
    assert not (copy / "link").exists()
    assert entry.digest == d and entry.files == 3
    assert events[-1].state == "succeeded" and events[-1].command_id == 3
    assert _listing(dest_root)[0] == "corpus"  # no temp dir left
    assert all(not n.startswith(".mlsm-") for n in os.listdir(dest_root))


async def test_single_file_dataset_arrives_as_a_directory(tmp_path: Path, dest_root: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"w" * 1000)
    d, manifest = digest(f)
    await receive_dataset(
        _aiter(pack_dataset(f)), dest_root, "weights", manifest, max_bytes=1 << 20
    )
    assert (dest_root / "weights" / "weights.bin").read_bytes() == b"w" * 1000
    assert digest(dest_root / "weights")[0] == d


def _flip_byte(chunks: Iterable[bytes], at: int) -> Iterable[bytes]:
    seen = 0
    for c in chunks:
        if seen <= at < seen + len(c):
            b = bytearray(c)
            b[at - seen] ^= 0x01
            c = bytes(b)
        seen += len(c)
        yield c


async def _refused(dest_root: Path, exc: type[BaseException], chunks, manifest, **kw) -> str:
    before = _listing(dest_root)
    with pytest.raises(exc) as info:
        await receive_dataset(
            _aiter(chunks),
            dest_root,
            kw.pop("name", "corpus"),
            manifest,
            max_bytes=kw.pop("max_bytes", 1 << 30),
            **kw,
        )
    assert _listing(dest_root) == before
    return str(info.value)


async def test_a_corrupted_byte_is_detected(source: Path, dest_root: Path) -> None:
    _, manifest = digest(source)
    # Past the first headers, inside a.txt's or b.bin's content.
    stream = list(pack_dataset(source))
    data = b"".join(stream)
    at = data.index(b"alpha")
    msg = await _refused(dest_root, TransferVerifyError, _flip_byte(stream, at), manifest)
    assert "a.txt" in msg and manifest["a.txt"] in msg


async def test_missing_and_extra_files_are_named(source: Path, dest_root: Path) -> None:
    _, manifest = digest(source)
    extra = dict(manifest, **{"zzz-missing.txt": "0" * 64})
    msg = await _refused(dest_root, TransferVerifyError, pack_dataset(source), extra)
    assert "zzz-missing.txt" in msg and "missing" in msg
    fewer = {k: v for k, v in manifest.items() if k != "a.txt"}
    msg = await _refused(dest_root, TransferVerifyError, pack_dataset(source), fewer)
    assert "a.txt" in msg and "not in the manifest" in msg


async def test_altered_manifest_is_caught_by_the_digest(source: Path, dest_root: Path) -> None:
    d, manifest = digest(source)
    forged = dict(manifest, **{"a.txt": "f" * 64})
    await _refused(dest_root, TransferVerifyError, pack_dataset(source), forged, expected_digest=d)


async def test_size_limit_applies(source: Path, dest_root: Path) -> None:
    _, manifest = digest(source)
    await _refused(dest_root, DatasetTooLargeError, pack_dataset(source), manifest, max_bytes=1000)


async def test_existing_and_hostile_names_are_refused(source: Path, dest_root: Path) -> None:
    _, manifest = digest(source)
    (dest_root / "taken").mkdir()
    await _refused(dest_root, DatasetExistsError, pack_dataset(source), manifest, name="taken")
    for bad in ("../x", "a/b", "x\0", "a\uff0fb"):
        await _refused(dest_root, DatasetPathError, pack_dataset(source), manifest, name=bad)


def _tar(infos: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for ti, data in infos:
            if data is not None:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def _ti(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = kind, link
    return ti


@pytest.mark.parametrize(
    "infos",
    [
        [(_ti("../evil"), b"e")],
        [(_ti("/abs"), b"e")],
        [(_ti("l", tarfile.SYMTYPE, "inside"), None)],  # packs never carry links
        [(_ti("f"), b"f"), (_ti("h", tarfile.LNKTYPE, "f"), None)],
        [(_ti("dev", tarfile.CHRTYPE), None)],
    ],
    ids=["dotdot", "absolute", "symlink", "hardlink", "device"],
)
async def test_hostile_stream_is_refused(dest_root: Path, infos) -> None:
    msg = await _refused(dest_root, UnsafeArchiveError, [_tar(infos)], {})
    assert infos[-1][0].name in msg


async def test_garbage_stream_is_refused(dest_root: Path) -> None:
    await _refused(dest_root, UnsafeArchiveError, [b"not a tar at all" * 100], {})


async def test_cancel_while_waiting_for_chunks(source: Path, dest_root: Path) -> None:
    _, manifest = digest(source)
    first = next(iter(pack_dataset(source, chunk_size=64 << 10)))
    stalled = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield first
        stalled.set()
        await asyncio.Event().wait()  # never more
        yield b""

    cancel = asyncio.Event()
    before = _listing(dest_root)
    task = asyncio.create_task(
        receive_dataset(slow(), dest_root, "corpus", manifest, max_bytes=1 << 30, cancel=cancel)
    )
    await wait_until_async(stalled.is_set, 10, "the stream to stall", poll_s=0.01)
    cancel.set()
    with pytest.raises(DatasetCancelled):
        await asyncio.wait_for(task, 10)
    assert _listing(dest_root) == before


def test_pack_is_a_valid_tar_without_links(source: Path) -> None:
    data = b"".join(pack_dataset(source))
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        names = {m.name: m for m in tf.getmembers()}
    assert set(names) == {"a.txt", "deep", "deep/er", "deep/er/b.bin", "empty.txt", "empty-dir"}
    assert all(m.isreg() or m.isdir() for m in names.values())


def test_pack_chunks_are_bounded(source: Path) -> None:
    sizes = [len(c) for c in pack_dataset(source, chunk_size=256 << 10)]
    assert len(sizes) > 4
    assert max(sizes) <= 2 * (256 << 10) + 2048
