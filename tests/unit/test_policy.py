"""mlsm.policy: which host paths may be mounted into job containers, which images may run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlsm.policy import image_allowed, mount_allowed

ROOTS = ["/data", "/scratch/shared/"]


@pytest.mark.parametrize(
    "path",
    ["/data", "/data/imagenet", "/data/imagenet/train/../val", "/scratch/shared/x", "/data/./a"],
)
def test_mount_under_an_allowed_root_is_allowed(path):
    assert mount_allowed(path, ROOTS, resolve=False)


@pytest.mark.parametrize(
    "path",
    [
        "/database",  # a prefix of the string, not of the path
        "/data/../etc",
        "/data/imagenet/../../etc/shadow",
        "/",
        "/scratch",
        "data/imagenet",  # relative
        "",
        "/data/\x00x",
    ],
)
def test_mount_outside_the_allowed_roots_is_refused(path):
    assert not mount_allowed(path, ROOTS, resolve=False)


def test_empty_allow_list_allows_nothing():
    assert not mount_allowed("/data/x", [])


def test_relative_or_empty_roots_are_ignored():
    assert not mount_allowed("/data/x", ["", "data"])


def test_a_symlink_out_of_the_root_is_refused_when_resolved(tmp_path: Path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "escape")
    (root / "inside").mkdir()
    assert not mount_allowed(str(root / "escape"), [str(root)])
    assert mount_allowed(str(root / "inside"), [str(root)])
    # lexically the link is inside; only resolution sees where it points
    assert mount_allowed(str(root / "escape"), [str(root)], resolve=False)


def test_a_symlinked_root_still_confines(tmp_path: Path):
    real = tmp_path / "real"
    (real / "ds").mkdir(parents=True)
    os.symlink(real, tmp_path / "alias")
    assert mount_allowed(str(real / "ds"), [str(tmp_path / "alias")])


@pytest.mark.parametrize(
    ("image", "patterns"),
    [
        ("pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime", ["pytorch/pytorch:*"]),
        ("pytorch/pytorch", ["pytorch/pytorch:*"]),  # no tag means :latest
        ("mlsm-test/busybox:latest", ["mlsm-test/*"]),
        ("ubuntu:22.04", ["docker.io/library/ubuntu:*"]),
        ("docker.io/library/ubuntu:22.04", ["ubuntu:*"]),
        ("docker.io/pytorch/pytorch:2.3", ["pytorch/pytorch:*"]),
        ("ghcr.io/lab/train:v1", ["ghcr.io/lab/*"]),
        ("anything/at:all", ["*"]),
        ("pytorch/pytorch@sha256:abc", ["pytorch/pytorch@sha256:*"]),
    ],
)
def test_image_matching_a_pattern_is_allowed(image, patterns):
    assert image_allowed(image, patterns)


@pytest.mark.parametrize(
    ("image", "patterns"),
    [
        ("pytorch/pytorch-nightly:1", ["pytorch/pytorch:*"]),
        ("evil.io/pytorch/pytorch:2.3", ["pytorch/pytorch:*"]),  # another registry
        ("ubuntu:22.04", ["debian:*"]),
        ("PyTorch/pytorch:1", ["pytorch/pytorch:*"]),  # case-sensitive
        ("mlsm-test/busybox:latest", []),
        ("mlsm-test/busybox:latest", [""]),
        ("", ["*"]),
        ("mlsm-test/busy box", ["*"]),
    ],
)
def test_image_not_matching_is_refused(image, patterns):
    assert not image_allowed(image, patterns)
