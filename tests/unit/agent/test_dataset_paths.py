"""Dataset names and path confinement; delete refuses everything outside a root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.datasets import (
    DatasetPathError,
    confine,
    confine_path,
    delete_dataset,
    pick_root,
    purge_leftovers,
    validate_dataset_name,
)


def _snapshot(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


HOSTILE_NAMES = [
    "",
    ".",
    "..",
    "/etc",
    "a/b",
    "a\\b",
    "x\0y",
    "line\nbreak",
    "tab\there",
    "esc\x1b[31m",
    "a" * 300,
    "é" * 128 + "x",  # 129 chars
    "\U0001f600" * 64,  # 64 chars, 256 bytes
    "a\u2215b",  # DIVISION SLASH
    "a\uff0fb",  # FULLWIDTH SOLIDUS (NFKC -> '/')
    "a\u2044b",  # FRACTION SLASH
    "\u2024\u2024",  # ONE DOT LEADER x2
    "\uff0e\uff0e",  # FULLWIDTH FULL STOP x2
    "ﬁle",  # LATIN SMALL LIGATURE FI changes under NFKC
    "abc\u202egpj.exe",  # RIGHT-TO-LEFT OVERRIDE
    "zero\u200bwidth",
    "bom\ufeff",
    "nbsp\u00a0name",
    "var\ufe0fsel",
    "-rf",
    ".hidden",
    ".mlsm-import-x",
    " padded",
    "padded ",
    "bad\udcffsurrogate",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_refused_with_a_message(name: str) -> None:
    with pytest.raises(DatasetPathError) as exc:
        validate_dataset_name(name)
    assert str(exc.value)
    assert "\n" not in str(exc.value) and "\0" not in str(exc.value)


@pytest.mark.parametrize(
    "name", ["imagenet", "ImageNet-1k_v2.0", "data (copy)", "Ärger", "日本語データ", "a" * 128]
)
def test_ordinary_names_are_accepted(name: str) -> None:
    assert validate_dataset_name(name) == name


def test_non_string_is_refused() -> None:
    with pytest.raises(DatasetPathError):
        validate_dataset_name(b"bytes")


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_confine_refuses_hostile_names_and_touches_nothing(tmp_path: Path, name: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "keep").mkdir()
    before = _snapshot(tmp_path)
    with pytest.raises(DatasetPathError):
        confine(root, name)
    assert _snapshot(tmp_path) == before


def test_confine_resolves_a_symlinked_root(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "data"
    link.symlink_to(real)
    assert confine(link, "ds") == real / "ds"


def test_confine_refuses_a_symlink_leading_out_of_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    (root / "dangling").symlink_to(tmp_path / "nowhere")
    (root / "loop").symlink_to(root)
    for name in ("escape", "dangling", "loop"):
        with pytest.raises(DatasetPathError):
            confine(root, name)


def test_confine_accepts_a_symlink_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "alias").symlink_to(root / "real")
    assert confine(root, "alias") == (root / "real").resolve()


def test_confine_path_accepts_a_direct_child(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "ds").mkdir(parents=True)
    assert confine_path(root, str(root / "ds")) == (root / "ds").resolve()
    assert confine_path(root, str(root / "new")) == root.resolve() / "new"


@pytest.mark.parametrize(
    "rel",
    [
        "",  # the root itself
        "ds/sub",  # below a dataset
        "ds/..",
        "../root/ds",
        "./ds",
        "ds/../../etc",
    ],
)
def test_confine_path_refuses_non_children(tmp_path: Path, rel: str) -> None:
    root = tmp_path / "root"
    (root / "ds" / "sub").mkdir(parents=True)
    path = str(root) + ("/" + rel if rel else "")
    with pytest.raises(DatasetPathError):
        confine_path(root, path)


@pytest.mark.parametrize("path", ["/", "/etc", "/etc/passwd", "relative/path", "/tmp/x\0y"])
def test_confine_path_refuses_paths_outside(tmp_path: Path, path: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DatasetPathError):
        confine_path(root, path)


def test_pick_root(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    assert pick_root([a, b]) == a
    assert pick_root([a, b], str(b)) == b
    with pytest.raises(DatasetPathError):
        pick_root([a, b], str(tmp_path))
    with pytest.raises(DatasetPathError):
        pick_root([], "")


# ------------------------------------------------------------------ delete
def test_delete_removes_a_dataset_and_leaves_no_trash(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ds = root / "ds"
    (ds / "sub").mkdir(parents=True)
    (ds / "sub" / "f.bin").write_bytes(b"x" * 100)
    (root / "other").mkdir()
    assert delete_dataset([root], str(ds)) is True
    assert sorted(os.listdir(root)) == ["other"]


def test_delete_is_idempotent(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "ds").mkdir(parents=True)
    assert delete_dataset([root], str(root / "ds")) is True
    assert delete_dataset([root], str(root / "ds")) is False


def test_delete_single_file_dataset(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "weights.bin").write_bytes(b"w")
    assert delete_dataset([root], str(root / "weights.bin")) is True
    assert os.listdir(root) == []


def test_delete_does_not_follow_symlinks_inside_the_dataset(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (root / "ds").mkdir(parents=True)
    (root / "ds" / "link").symlink_to(outside)
    delete_dataset([root], str(root / "ds"))
    assert (outside / "keep.txt").read_text() == "keep"


@pytest.mark.parametrize(
    "target",
    ["{root}", "{root}/ds/sub", "{root}/../precious", "{tmp}/precious", "/etc", "{root}/link"],
)
def test_delete_refuses_and_touches_nothing(tmp_path: Path, target: str) -> None:
    root = tmp_path / "root"
    (root / "ds" / "sub").mkdir(parents=True)
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "keep.txt").write_text("keep")
    (root / "link").symlink_to(tmp_path / "precious")
    before = _snapshot(tmp_path)
    with pytest.raises(DatasetPathError):
        delete_dataset([root], target.format(root=root, tmp=tmp_path))
    assert _snapshot(tmp_path) == before


def test_purge_leftovers_removes_only_reserved_entries(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / ".mlsm-import-x-abc" / "data").mkdir(parents=True)
    (root / ".mlsm-trash-y-def").mkdir()
    (root / "ds").mkdir()
    (root / ".other-hidden").mkdir()
    removed = purge_leftovers([root])
    assert len(removed) == 2
    assert sorted(os.listdir(root)) == [".other-hidden", "ds"]
