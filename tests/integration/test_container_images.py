"""The container images of ``packaging/docker/`` build for real, offline, and run.

No image registry is reachable here, so nothing can be pulled. The base image is made
offline instead, in about a second:

1. ``apt-get download`` fetches Debian's ``python3.11`` and the shared libraries it needs,
   plus ``busybox-static`` for ``/bin/sh`` (:data:`BASE_PACKAGES`, about 15 MB; the
   ``.deb`` files are cached under :func:`cache_dir`, so only the first run on a machine
   needs Debian's mirror);
2. ``dpkg -x`` unpacks them into a folder (no maintainer scripts, no chroot, no root
   needed), busybox links make the shell tools, ``/usr/bin/python3`` points at 3.11;
3. ``docker import`` turns the folder into :data:`BASE_TAG`, kept across runs by tag
   (the tag carries a digest of the package list, so changing the list makes a new base).

``debootstrap --variant=minbase`` would also work but takes minutes and needs root.
Then the project's wheel (``pip wheel . --no-deps``) and a wheelhouse of its dependencies
for CPython 3.11 (``pip download --only-binary=:all:``, cached like the ``.deb`` files) go
into a build context laid out as ``packaging/docker/README.md`` describes, and both
Dockerfiles are built on the offline base with ``network_mode="none"``: a build that tried
to download anything would fail. The master image is started with host networking (the CI
engine has no bridge) on a free port and must answer ``/healthz`` and a login; the agent
image must print its version. Built images and containers are removed afterwards; the
base stays cached. Runtime: about 70 s with a warm cache on the CI machine (vfs storage).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import mlsm
from tests.integration.helpers import (
    ADMIN,
    ADMIN_PASSWORD,
)
from tests.support.ci import require
from tests.support.procs import free_port
from tests.support.wait import wait_until

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "packaging" / "docker"
#: The base's Python: Debian 12's. The wheelhouse is downloaded for this version.
BASE_PYTHON = "3.11"
BASE_PACKAGES = (
    "busybox-static",
    "libc6",
    "libgcc-s1",
    "gcc-12-base",
    "libstdc++6",
    "zlib1g",
    "libssl3",
    "libexpat1",
    "libffi8",
    "libsqlite3-0",
    "libbz2-1.0",
    "liblzma5",
    "libncursesw6",
    "libtinfo6",
    "libreadline8",
    "readline-common",
    "libuuid1",
    "libdb5.3",
    "libgdbm6",
    "libgdbm-compat4",
    "libnsl2",
    "libtirpc3",
    "libtirpc-common",
    "libgssapi-krb5-2",
    "libk5crypto3",
    "libkeyutils1",
    "libkrb5-3",
    "libkrb5support0",
    "libcom-err2",
    "libcrypt1",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "python3.11-minimal",
    "python3.11",
    "media-types",
)
BUSYBOX_TOOLS = (
    "sh",
    "ls",
    "cat",
    "env",
    "mkdir",
    "rm",
    "cp",
    "ln",
    "chmod",
    "chown",
    "head",
    "id",
)
BASE_TAG = (
    "mlsm-test/python-base:"
    + BASE_PYTHON
    + "-"
    + hashlib.sha256(" ".join(BASE_PACKAGES + BUSYBOX_TOOLS).encode()).hexdigest()[:12]
)
INSTALL_STAGE_LABEL = "org.mlsm.stage=install"
APT_TIMEOUT_S = 300
PIP_TIMEOUT_S = 300
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10
#: An image build on the vfs storage driver copies every layer: minutes on a busy 2-core
#: machine, past the suite's default per-test timeout.
BUILD_TEST_TIMEOUT_S = 900


def cache_dir() -> Path:
    """``/var/cache/mlsm-test`` when writable (CI runs as root), else ``~/.cache/mlsm-test``."""
    for candidate in (Path("/var/cache/mlsm-test"), Path.home() / ".cache" / "mlsm-test"):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    raise AssertionError("no writable cache directory for the container image test")


def _run(argv: list[str], *, timeout: float, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _root_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def build_base_rootfs(root: Path, debs: Path) -> None:
    """Unpack the cached ``.deb`` files into ``root`` and make it a usable minimal system."""
    debs.mkdir(parents=True, exist_ok=True)
    have = {p.name.split("_", 1)[0] for p in debs.glob("*.deb")}
    missing = [p for p in BASE_PACKAGES if p not in have]
    if missing:
        _run(["apt-get", "download", *missing], cwd=debs, timeout=APT_TIMEOUT_S)
    for deb in sorted(debs.glob("*.deb")):
        if deb.name.split("_", 1)[0] in BASE_PACKAGES:
            _run(["dpkg", "-x", str(deb), str(root)], timeout=APT_TIMEOUT_S)
    for tool in BUSYBOX_TOOLS:
        (root / "bin" / tool).symlink_to("busybox")
    (root / "usr" / "bin" / "python3").symlink_to(f"python{BASE_PYTHON}")
    for sub in ("tmp", "root", "etc"):
        (root / sub).mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")


@pytest.fixture(scope="module")
def base_image(docker_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The offline Python base image (built once per machine, then found by its tag)."""
    import docker.errors

    try:
        docker_engine.images.get(BASE_TAG)
        return BASE_TAG
    except docker.errors.ImageNotFound:
        pass
    require(
        shutil.which("apt-get") is not None and shutil.which("dpkg") is not None,
        "building the offline base image needs apt-get and dpkg (Debian or Ubuntu)",
    )
    work = tmp_path_factory.mktemp("base")
    root = work / "rootfs"
    root.mkdir()
    build_base_rootfs(root, cache_dir() / "debs")
    tar_path = work / "rootfs.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(root, arcname=".", filter=_root_owned)
    repository, tag = BASE_TAG.split(":", 1)
    docker_engine.api.import_image_from_file(str(tar_path), repository=repository, tag=tag)
    return BASE_TAG


@pytest.fixture(scope="module")
def build_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``dist/`` (mlsm's wheel) and ``wheels/`` (its dependencies and pip), as documented."""
    ctx = tmp_path_factory.mktemp("docker-context")
    dist = ctx / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(REPO)],
        timeout=PIP_TIMEOUT_S,
    )
    wheel = next(dist.glob("mlsm-*.whl"))
    cache = cache_dir() / f"wheels-cp{BASE_PYTHON.replace('.', '')}"
    # pip saves the project's own wheel beside its dependencies and, finding a file of the
    # same name there on the next run, resolves with that old wheel's requirements: a
    # dependency added since would be missing from the image. Only dependencies are kept.
    for stale in cache.glob("mlsm-*.whl"):
        stale.unlink()
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--only-binary=:all:",
            "--python-version",
            BASE_PYTHON,
            "-d",
            str(cache),
            str(wheel),
            "pip",
        ],
        timeout=PIP_TIMEOUT_S,
    )
    wheels = ctx / "wheels"
    wheels.mkdir()
    for whl in cache.glob("*.whl"):
        if not whl.name.startswith("mlsm-"):  # the project's wheel comes from dist/ only
            shutil.copy2(whl, wheels / whl.name)
    return ctx


@pytest.fixture(scope="module")
def build_image(docker_engine: Any, base_image: str, build_context: Path) -> Iterator[Any]:
    """``build_image(dockerfile_name) -> image``: built offline; removed at the end."""
    import docker.errors

    built: list[str] = []

    def build(dockerfile: str) -> Any:
        shutil.copy2(DOCKER_DIR / dockerfile, build_context / "Dockerfile")
        tag = f"mlsm-test/{dockerfile.lower().replace('.', '-')}:{uuid.uuid4().hex[:8]}"
        built.append(tag)
        try:
            image, _logs = docker_engine.images.build(
                path=str(build_context),
                dockerfile="Dockerfile",
                tag=tag,
                buildargs={"BASE": base_image},
                network_mode="none",
                rm=True,
                forcerm=True,
            )
        except docker.errors.BuildError as exc:
            log = "".join(str(line.get("stream", line)) for line in exc.build_log)
            raise AssertionError(f"{dockerfile} did not build offline:\n{log}") from None
        return image

    try:
        yield build
    finally:
        for tag in built:
            try:
                docker_engine.images.remove(tag, force=True)
            except docker.errors.ImageNotFound:
                pass
        docker_engine.images.prune(filters={"dangling": True, "label": INSTALL_STAGE_LABEL})


@pytest.mark.timeout(BUILD_TEST_TIMEOUT_S)
def test_master_image_builds_offline_and_answers_healthz(
    docker_engine: Any, build_image: Any
) -> None:
    image = build_image("Dockerfile.master")
    assert image.attrs["Config"]["User"] == "10001:10001", "the master must not run as root"
    port = free_port()
    container = docker_engine.containers.run(
        image.id,
        command=["master", "--init-admin", ADMIN],
        detach=True,
        network_mode="host",
        environment={
            "MLSM_HOST": "127.0.0.1",
            "MLSM_PORT": str(port),
            "MLSM_PASSWORD": ADMIN_PASSWORD,
        },
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> dict[str, Any] | None:
            container.reload()
            if container.status == "exited":
                logs = container.logs().decode(errors="replace")
                raise AssertionError(f"the master container exited:\n{logs}")
            try:
                resp = httpx.get(f"{url}/healthz", timeout=1.0)
            except httpx.HTTPError:
                return None
            return resp.json() if resp.status_code == 200 else None

        health = wait_until(healthy, START_TIMEOUT_S, f"master container answering {url}/healthz")
        assert health["status"] == "ok"
        assert health["version"] == mlsm.__version__
        assert health["protocol"] == mlsm.PROTOCOL_VERSION
        login = httpx.post(
            f"{url}/api/v1/auth/login",
            json={"username": ADMIN, "password": ADMIN_PASSWORD},
            timeout=10.0,
        )
        assert login.status_code in (200, 201), login.text
    finally:
        container.stop(timeout=STOP_TIMEOUT_S)
        container.remove(v=True, force=True)


@pytest.mark.timeout(BUILD_TEST_TIMEOUT_S)
def test_agent_image_builds_offline_and_prints_its_version(
    docker_engine: Any, build_image: Any
) -> None:
    image = build_image("Dockerfile.agent")
    assert image.attrs["Config"]["User"] in ("0:0", "root", "")
    out = docker_engine.containers.run(
        image.id, command=["--version"], network_mode="none", remove=True
    )
    assert out.decode().strip() == f"mlsm {mlsm.__version__} (protocol {mlsm.PROTOCOL_VERSION})"
