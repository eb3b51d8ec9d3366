"""The stored job spec: built and parsed once at submit, stored tagged without defaults,
decoded once, and mlsm 0.1's untagged dicts read into the same struct."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from mlsm.errors import PayloadTooLarge, PermissionDenied, ValidationError
from mlsm.master.jobspec import (
    MAX_SUBMISSION_STORED_BYTES,
    SPEC_VERSION,
    Dependency,
    StoredJobSpec,
    build_submission,
    decode_spec,
    encode_spec,
    parse_dependency,
    parse_mount,
)
from mlsm.master.security import Principal
from mlsm.wire import api
from mlsm.wire.agent import Mount
from mlsm.wire.ints import INT64_MAX

MEMBER = Principal(kind="user", name="alice", role="member")
ADMIN = Principal(kind="user", name="root", role="superadmin")
NODES = {"gpu-01"}


class Allow:
    """The lab's policy, allowing everything and remembering what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def check_image(self, principal: Principal, image: str) -> None:
        self.asked.append(("image", image))

    def check_mount(self, principal: Principal, source: str) -> None:
        self.asked.append(("mount", source))


class RefuseImages(Allow):
    def check_image(self, principal: Principal, image: str) -> None:
        raise PermissionDenied(f"image {image} is not allowed")


#: A submission that uses every form parsed at submit.
RICH = {
    "argv": ["python", "train.py", "--lr", "0.1"],
    "name": "sweep",
    "gpus": 2,
    "gpu_mem_gib": 40.0,
    "cpus": 8.0,
    "mem_gib": 64.0,
    "node": "gpu-01",
    "labels": {"rack": "a"},
    "datasets": ["imagenet"],
    "env_kind": "docker",
    "image": "pytorch/pytorch:2.3",
    "mounts": ["/data:/data", "/scratch/alice:/scratch:rw"],
    "keep_container": True,
    "workdir": "/work",
    "env": {"SEED": "1"},
    "priority": -5,  # a member may lower it; raising is for admins (check_limits)
    "after": ["11", "12:any", "13:ok"],
    "retries": 2,
    "timeout_s": 3600.0,
    "array": "0-9%3",
}

#: What mlsm 0.1 stored for RICH from a member: msgspec.to_builtins(JobSubmit) of the body,
#: plus the member's mount re-check flag and the array throttle.
RICH_AS_STORED_BY_01: dict[str, Any] = {
    "argv": ["python", "train.py", "--lr", "0.1"],
    "name": "sweep",
    "gpus": 2,
    "gpu_mem_gib": 40.0,
    "cpus": 8.0,
    "mem_gib": 64.0,
    "node": "gpu-01",
    "labels": {"rack": "a"},
    "datasets": ["imagenet"],
    "env_kind": "docker",
    "venv": "",
    "conda": "",
    "image": "pytorch/pytorch:2.3",
    "mounts": ["/data:/data", "/scratch/alice:/scratch:rw"],
    "keep_container": True,
    "workdir": "/work",
    "env": {"SEED": "1"},
    "priority": 5,
    "after": ["11", "12:any", "13:ok"],
    "retries": 2,
    "timeout_s": 3600.0,
    "array": "0-9%3",
    "hold": False,
    "member_mounts": True,
    "array_throttle": 3,
}

#: The first job of the frozen 0.1 database (tests/integration/test_upgrade.py ROWS_0001).
PLAIN_AS_STORED_BY_01: dict[str, Any] = {
    "argv": ["python", "train.py"],
    "name": "job0",
    "gpus": 0,
    "gpu_mem_gib": 0.0,
    "cpus": 0.0,
    "mem_gib": 0.0,
    "node": None,
    "labels": {},
    "datasets": [],
    "env_kind": "process",
    "venv": "",
    "conda": "",
    "image": "",
    "mounts": [],
    "keep_container": False,
    "workdir": "",
    "env": {},
    "priority": 0,
    "after": [],
    "retries": 0,
    "timeout_s": 0.0,
    "array": "",
    "hold": False,
}


def _body(**fields: Any) -> api.JobSubmit:
    return msgspec.convert(fields, api.JobSubmit)


def _build(body: dict[str, Any], p: Principal = MEMBER) -> Any:
    return build_submission(_body(**body), p, nodes=NODES, policy=Allow())


def test_a_submission_is_parsed_once_into_the_stored_spec() -> None:
    policy = Allow()
    sub = build_submission(_body(**RICH), MEMBER, nodes=NODES, policy=policy)
    spec = sub.spec
    assert list(sub.indices) == list(range(10))
    assert spec.array_throttle == 3
    assert spec.after == [Dependency(11), Dependency(12, "any"), Dependency(13, "ok")]
    assert [d.wanted for d in spec.after] == ["ok", "any", "ok"]
    assert [d.text() for d in spec.after] == ["11", "12:any", "13:ok"]  # as typed
    assert spec.mounts == [
        Mount(source="/data", target="/data", read_only=True),
        Mount(source="/scratch/alice", target="/scratch", read_only=False),
    ]
    assert spec.member_mounts is True
    assert spec.gpu_mem_bytes == 40 << 30 and spec.mem_bytes == 64 << 30
    assert policy.asked == [
        ("image", "pytorch/pytorch:2.3"),
        ("mount", "/data"),
        ("mount", "/scratch/alice"),
    ]
    assert _build(RICH, ADMIN).spec.member_mounts is False  # admins' mounts are not re-checked


def test_a_submission_without_an_array_has_one_task() -> None:
    sub = _build({"argv": ["true"]})
    assert list(sub.indices) == [None]
    assert sub.spec == StoredJobSpec(argv=["true"])


def test_the_stored_form_is_tagged_and_leaves_defaults_out() -> None:
    assert encode_spec(StoredJobSpec(argv=["true"])) == {"v": SPEC_VERSION, "argv": ["true"]}
    spec = _build(RICH).spec
    stored = encode_spec(spec)
    assert stored["v"] == SPEC_VERSION
    assert stored["after"] == [[11, None], [12, "any"], [13, "ok"]]
    assert "venv" not in stored and "conda" not in stored  # defaults are not written
    assert decode_spec(stored) == spec
    assert decode_spec(msgspec.json.decode(msgspec.json.encode(spec))) == spec


def test_a_01_spec_dict_decodes_to_what_a_submission_builds_now() -> None:
    assert decode_spec(RICH_AS_STORED_BY_01) == _build(RICH).spec
    plain = {k: v for k, v in PLAIN_AS_STORED_BY_01.items() if k not in ("hold",)}
    assert decode_spec(PLAIN_AS_STORED_BY_01) == _build(plain).spec


def test_the_defaults_are_the_ones_01_read_back() -> None:
    """mlsm 0.1 read every field with spec.get(key, default); the struct has those defaults."""
    spec = decode_spec({"argv": ["x"]})
    assert (spec.gpu_mem_gib, spec.cpus, spec.mem_gib, spec.timeout_s) == (0.0, 0.0, 0.0, 0.0)
    assert (spec.env_kind, spec.venv, spec.conda, spec.image, spec.workdir) == (
        "process",
        "",
        "",
        "",
        "",
    )
    assert (spec.node, spec.labels, spec.datasets, spec.env) == (None, {}, [], {})
    assert (spec.after, spec.mounts, spec.array_throttle) == ([], [], 0)
    assert (spec.keep_container, spec.member_mounts) == (False, False)


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"env_kind": "venv"}, "venv"),
        ({"env_kind": "docker"}, "image"),
        ({"image": "busybox"}, "image"),
        ({"node": "nowhere"}, "node"),
        ({"env_kind": "docker", "image": "busybox", "mounts": ["data:/data"]}, "mounts"),
        ({"array": "9-5"}, "array"),
        ({"after": [str(INT64_MAX + 1)]}, "after[0]"),
    ],
)
def test_what_a_submission_may_not_ask_names_its_field(fields: dict[str, Any], path: str) -> None:
    with pytest.raises(ValidationError) as info:
        _build({"argv": ["true"], **fields})
    assert info.value.details["path"] == path


def test_the_lab_policy_is_asked_for_container_jobs() -> None:
    body = _body(argv=["true"], env_kind="docker", image="evil/miner")
    with pytest.raises(PermissionDenied):
        build_submission(body, MEMBER, nodes=NODES, policy=RefuseImages())


def test_the_stored_size_is_checked_before_the_dependencies() -> None:
    """A submission with both problems reports its size first, as it always did."""
    env = {f"VAR{i}": "x" * 4000 for i in range(140)}
    body = {"argv": ["true"], "array": "0-99", "env": env, "after": [str(INT64_MAX + 1)]}
    with pytest.raises(PayloadTooLarge) as info:
        _build(body)
    assert info.value.details["limit_bytes"] == MAX_SUBMISSION_STORED_BYTES


@pytest.mark.parametrize(
    ("text", "mount"),
    [
        ("/data:/data", Mount(source="/data", target="/data", read_only=True)),
        ("/data:/in:ro", Mount(source="/data", target="/in", read_only=True)),
        ("/scratch:/out:rw", Mount(source="/scratch", target="/out", read_only=False)),
    ],
)
def test_a_mount_is_read_only_unless_it_says_rw(text: str, mount: Mount) -> None:
    assert parse_mount(text) == mount


@pytest.mark.parametrize(
    "text", ["data:/data", "/data:data", "/data", "/a:/b:rw:x", "/a:/b:wr", "/a:/b:"]
)
def test_a_malformed_mount_names_the_mounts_field(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_mount(text)
    assert info.value.details["path"] == "mounts"


@pytest.mark.parametrize(
    ("text", "dep"),
    [("7", Dependency(7)), ("7:ok", Dependency(7, "ok")), ("7:any", Dependency(7, "any"))],
)
def test_a_dependency_is_an_id_and_what_it_waits_for(text: str, dep: Dependency) -> None:
    assert parse_dependency(text) == dep
    assert parse_dependency(text).text() == text


@pytest.mark.parametrize("text", ["", "x", "7:", "7:done", "-7", "７", "7:ok:any"])
def test_a_malformed_dependency_names_the_after_field(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_dependency(text)
    assert info.value.details["path"] == "after"


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"env_kind": "conda"}, "conda"),
        ({"env_kind": "venv", "venv": "relative/env"}, "venv"),
        ({"workdir": "relative"}, "workdir"),
        ({"argv": ["echo", "a\x00b"]}, "argv"),
    ],
)
def test_the_other_submission_checks_name_their_field(fields: dict[str, Any], path: str) -> None:
    with pytest.raises(ValidationError) as info:
        _build({"argv": ["true"], **fields})
    assert info.value.details["path"] == path
