"""mlsm.bulk.manifest: entry paths, the rules a receiver enforces, encoding and digest."""

from __future__ import annotations

import msgspec
import pytest

from mlsm.bulk import (
    Entry,
    Manifest,
    check_path,
    decode_manifest,
    encode_manifest,
    sort_entries,
    validate_manifest,
)
from mlsm.errors import UnsafeTree
from tests.unit.bulk.support import file_entry, manifest_of


def d(path: str, mode: int = 0o755) -> Entry:
    return Entry(path, "d", 0, mode, 0)


def link(path: str, target: str) -> Entry:
    return Entry(path, "l", 0, 0o777, 0, "", target)


@pytest.mark.parametrize(
    "path",
    ["a", "a/b/c.txt", ".hidden", "a/.b", "..x", "x..", "a/...", "名前/ファイル", "n" * 255],
)
def test_good_paths_pass(path: str) -> None:
    assert check_path(path) == path


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("..", "'..'"),
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("a/..", "'..'"),
        (".", "'.'"),
        ("a/./b", "'.'"),
        ("a//b", "empty"),
        ("a/", "empty"),
        ("a\0b", "NUL"),
        ("n" * 256, "255 bytes"),
        ("é" * 128, "255 bytes"),  # 256 bytes in UTF-8
        ("bad\udcff", "UTF-8"),  # a name os.fsdecode made from a non-UTF-8 byte
    ],
)
def test_bad_paths_are_refused_by_name(path: str, why: str) -> None:
    with pytest.raises(UnsafeTree, match=why):
        check_path(path)


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ([file_entry("a", b"x"), file_entry("a", b"y")], "twice"),
        ([file_entry("a/b", b"x"), d("a")], "before its directory"),
        ([file_entry("a", b"x"), file_entry("a/b", b"y")], "not a directory"),
        ([d("a"), link("a/l", "/etc/passwd")], "absolute"),
        ([link("l", "../outside")], "outside the tree"),
        ([d("a"), link("a/l", "../../x")], "outside the tree"),
        ([d("a"), link("a/l", "b/../../..")], "outside the tree"),
        ([link("up", ".."), link("l", "up/x")], "outside"),  # a chain of links leads out
        ([d("a"), link("a/up", ".."), link("l", "a/up/../etc")], "leads outside"),
        ([link("l", "")], "without a target"),
        ([link("l", "a\0b")], "NUL"),
        ([Entry("f", "f", 3, 0o644, 0, "")], "without a sha256"),
        ([Entry("f", "f", 0, 0o644, 0, "ab" * 32)], "empty file"),
        ([Entry("d", "d", 5, 0o755, 0)], "size or sha256"),
        ([Entry("d", "d", 0, 0o755, 0, "", "x")], "link target"),
        ([Entry("f", "f", 1, 0o644, 0, "ab" * 32, "t")], "link target"),
        ([Entry("../x", "d", 0, 0o755, 0)], "'..'"),
    ],
)
def test_manifests_that_could_escape_or_lie_are_refused(entries: list[Entry], why: str) -> None:
    with pytest.raises(UnsafeTree, match=why):
        validate_manifest(Manifest(entries))


def test_links_that_stay_inside_pass() -> None:
    validate_manifest(
        Manifest(
            [
                d("a"),
                d("a/b"),
                link("a/b/up", "../../top.txt"),  # .. twice from a/b: the root
                link("a/sib", "b/../b"),
                link("loop1", "loop2"),  # a loop resolves nowhere, so nowhere outside
                link("loop2", "loop1"),
                link("chain", "a/sib/up"),
                file_entry("top.txt", b"t"),
            ]
        )
    )


def test_encode_decode_round_trip_and_digest() -> None:
    m = manifest_of(d("src"), file_entry("src/a.py", b"print(1)\n", 0o755), link("l", "src"))
    data = encode_manifest(m)
    back = decode_manifest(data)
    assert back == m
    assert back.digest() == m.digest()
    changed = manifest_of(d("src"), file_entry("src/a.py", b"print(2)\n", 0o755), link("l", "src"))
    assert changed.digest() != m.digest()
    assert m.total_bytes() == 9 and m.file_count() == 1


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x01garbage",
        msgspec.msgpack.encode({"entries": [["a", "x", 0, 0, 0, "", ""]]}),  # unknown kind
        msgspec.msgpack.encode({"entries": [["a", "f", -1, 0, 0, "", ""]]}),  # negative size
        msgspec.msgpack.encode({"entries": [["a", "d", 0, 0o17777, 0, "", ""]]}),  # mode
        msgspec.msgpack.encode({"entries": [["a", "f", 1, 0, 0, "XYZ", ""]]}),  # not hex
        msgspec.msgpack.encode({"entries": [["../a", "d", 0, 0, 0, "", ""]]}),  # validated too
    ],
)
def test_decoding_refuses_malformed_manifests(raw: bytes) -> None:
    with pytest.raises(UnsafeTree):
        decode_manifest(raw)


def test_canonical_order_puts_each_directory_before_its_contents() -> None:
    entries = [file_entry("a.txt", b""), file_entry("a/z", b""), d("a"), d("a/b"), d("B")]
    assert [e.path for e in sort_entries(entries)] == ["B", "a", "a/b", "a/z", "a.txt"]
    validate_manifest(Manifest(sort_entries(entries)))
