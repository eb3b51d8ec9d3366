"""mlsm.bulk.ignore through build_manifest: the cases of git's gitignore(5) documentation on
real trees, nested files, .mlsmignore over .gitignore, .git left out, and the same answers
as git itself."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mlsm.bulk import IgnoreRules, build_manifest

DIR = None  # a spec value that makes a directory


def make(root: Path, spec: dict[str, str | None]) -> Path:
    """Files (value: content) and directories (value: None) under ``root``."""
    for rel, content in spec.items():
        p = root / rel
        if content is None:
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(content)
    return root


def kept(root: Path, rules: IgnoreRules | None = None) -> set[str]:
    m = build_manifest(root, rules=rules or IgnoreRules())
    return {e.path for e in m.entries if e.kind == "f"}


FILES = [
    "hello.txt",
    "hello.c",
    "a/hello.java",
    "doc/frotz/f",
    "a/doc/frotz/f",
    "frotz/f",
    "a/frotz/f",
    "foo/test.json",
    "foo/bar/hello.c",
    "x/foo",
    "x/y/foo/bar",
    "abc/d/e",
    "a/b",
    "a/x/b",
    "a/x/y/b",
    "!important",
    "#file",
    "spaced ",
    "keep.o",
    "z.o",
    "build/keep.txt",
    "build/other.txt",
]


@pytest.mark.parametrize(
    ("rules", "ignored"),
    [
        # "hello.* matches any file or directory whose name begins with hello."
        ("hello.*", {"hello.txt", "hello.c", "a/hello.java", "foo/bar/hello.c"}),
        # "/hello.* only matches hello.txt, hello.c but not a/hello.java"
        ("/hello.*", {"hello.txt", "hello.c"}),
        # "doc/frotz/ matches doc/frotz directory, but not a/doc/frotz directory"
        ("doc/frotz/", {"doc/frotz/f"}),
        # "frotz/ matches frotz and a/frotz that is a directory"
        ("frotz/", {"doc/frotz/f", "a/doc/frotz/f", "frotz/f", "a/frotz/f"}),
        # "foo/* matches foo/test.json and foo/bar (a directory): nothing below it is kept"
        ("foo/*", {"foo/test.json", "foo/bar/hello.c"}),
        # "foo/ ... does not match a regular file foo"
        ("foo/", {"foo/test.json", "foo/bar/hello.c", "x/y/foo/bar"}),
        # "**/foo matches file or directory foo anywhere"
        ("**/foo", {"foo/test.json", "foo/bar/hello.c", "x/foo", "x/y/foo/bar"}),
        # "**/foo/bar matches file or directory bar anywhere directly under foo"
        ("**/foo/bar", {"foo/bar/hello.c", "x/y/foo/bar"}),
        # "abc/** matches all files inside directory abc"
        ("abc/**", {"abc/d/e"}),
        # "a/**/b matches a/b, a/x/b, a/x/y/b and so on"
        ("a/**/b", {"a/b", "a/x/b", "a/x/y/b"}),
        # "\!" and "\#" for names that begin with them
        ("\\!important\n\\#file", {"!important", "#file"}),
        # "# ..." is a comment; trailing spaces are ignored unless escaped
        ("#file\nspaced ", set()),
        ("spaced\\ ", {"spaced "}),
        # "!" re-includes what an earlier pattern excluded
        ("*.o\n!keep.o", {"z.o"}),
        # "not possible to re-include a file if a parent directory of that file is excluded"
        ("build/\n!build/keep.txt", {"build/keep.txt", "build/other.txt"}),
        ("build/*\n!build/keep.txt", {"build/other.txt"}),
    ],
)
def test_cases_of_gits_documentation(tmp_path: Path, rules: str, ignored: set[str]) -> None:
    root = make(tmp_path / "t", dict.fromkeys(FILES, "x"))
    (root / ".gitignore").write_text(rules + "\n")
    assert kept(root) == (set(FILES) - ignored) | {".gitignore"}


def test_exclude_everything_except_foo_bar(tmp_path: Path) -> None:
    """The documentation's example: "exclude everything except directory foo/bar"."""
    root = make(tmp_path / "t", dict.fromkeys(["a", "foo/x", "foo/bar/y", "foo/bar/z/w"], "x"))
    (root / ".gitignore").write_text("/*\n!/foo\n/foo/*\n!/foo/bar\n")
    assert kept(root) == {"foo/bar/y", "foo/bar/z/w"}


def test_a_deeper_file_overrides_and_rules_are_relative_to_their_directory(tmp_path: Path) -> None:
    root = make(
        tmp_path / "t",
        dict.fromkeys(["a.log", "sub/a.log", "sub/x/y", "sub/q/x/y", "x/y", "other/b.tmp"], "x"),
    )
    (root / ".gitignore").write_text("*.log\n")
    (root / "sub" / ".gitignore").write_text("!a.log\nx/y\n")
    (root / "other" / ".gitignore").write_text("*.tmp\n")
    assert kept(root) == {
        ".gitignore",
        "sub/.gitignore",
        "sub/a.log",  # re-included by the deeper file
        "sub/q/x/y",  # "x/y" has a slash: anchored to sub/
        "x/y",  # sub's rules do not reach the root
        "other/.gitignore",
    }


def test_mlsmignore_comes_after_gitignore(tmp_path: Path) -> None:
    root = make(tmp_path / "t", dict.fromkeys(["data/big.bin", "notes.txt", "train.py"], "x"))
    (root / ".gitignore").write_text("data/\n")
    (root / ".mlsmignore").write_text("!data/\nnotes.txt\n")
    assert kept(root) == {".gitignore", ".mlsmignore", "data/big.bin", "train.py"}


def test_git_dir_is_left_out_unless_asked(tmp_path: Path) -> None:
    root = make(tmp_path / "t", {"train.py": "x", ".git/HEAD": "ref", "sub/.git": "gitdir: .."})
    assert kept(root) == {"train.py"}
    assert kept(root, IgnoreRules(include_git=True)) == {"train.py", ".git/HEAD", "sub/.git"}


def test_given_patterns_apply_under_every_file(tmp_path: Path) -> None:
    root = make(tmp_path / "t", dict.fromkeys(["a.ckpt", "sub/b.ckpt", "sub/c.ckpt"], "x"))
    (root / "sub" / ".gitignore").write_text("!c.ckpt\n")
    assert kept(root, IgnoreRules(["*.ckpt"])) == {"sub/.gitignore", "sub/c.ckpt"}


def test_an_ignore_file_that_is_a_link_is_not_followed(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.write_text("*.py\n")
    root = make(tmp_path / "t", {"a.py": "x"})
    os.symlink(rules, root / ".gitignore")
    with pytest.raises(Exception, match="absolute"):  # the link itself is refused...
        kept(root)
    (root / ".gitignore").unlink()
    os.symlink("../rules", root / ".gitignore")  # ...an escaping relative one too
    with pytest.raises(Exception, match="outside the tree"):
        kept(root)
    (root / ".gitignore").unlink()
    (root / "real").write_text("*.py\n")
    os.symlink("real", root / ".gitignore")  # an in-tree link is kept, but not read
    assert kept(root) == {"a.py", "real"}


def test_ignored_directories_are_not_entered(tmp_path: Path) -> None:
    """A FIFO or an escaping link inside an ignored directory is no reason to refuse."""
    root = make(tmp_path / "t", {"train.py": "x", "venv/lib/x.py": "x"})
    os.mkfifo(root / "venv" / "fifo")
    os.symlink("/usr/bin/python3", root / "venv" / "python")
    (root / ".mlsmignore").write_text("venv/\n")
    assert kept(root) == {"train.py", ".mlsmignore"}


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_same_answers_as_git_itself(tmp_path: Path) -> None:
    """One tree with every kind of rule, nested files included: the files git would add
    are exactly the files the manifest holds."""
    names = [*FILES, "sub/a.log", "sub/deep/b.log", "sub/deep/c.txt", "sub/x/y", "n/o/p.tmp"]
    root = make(tmp_path / "t", dict.fromkeys(names, "x"))
    (root / ".gitignore").write_text(
        "hello.*\n!/hello.c\n/doc/\n**/foo/bar\n*.log\nbuild/*\n!build/keep.txt\na/**/b\n\\#file\n"
    )
    (root / "sub" / ".gitignore").write_text("!a.log\nx/y\ndeep/\n")
    (root / "n" / ".gitignore").write_text("/o/*.tmp\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    out = subprocess.run(
        ["git", "-C", str(root), "ls-files", "--others", "--exclude-standard", "-z"],
        check=True,
        capture_output=True,
    ).stdout
    by_git = {p for p in out.decode().split("\0") if p}
    assert kept(root) == by_git
