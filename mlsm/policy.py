"""Admin policy checks for container jobs: which host paths may be mounted, which images run;
and the words for a job that has no Unix account on a node (said by master and agent alike).

Pure functions with no Docker import, so the master can check a submission at the edge
and the agent can check it again on the node where the paths really exist.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
from collections.abc import Sequence

DEFAULT_REGISTRY = "docker.io"
_OFFICIAL_NAMESPACE = "library"


def _confined(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or lies below it, compared path component by component."""
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # one relative, one absolute
        return False


def mount_allowed(path: str, allow_list: Sequence[str], *, resolve: bool = True) -> bool:
    """Whether a host ``path`` may be bind-mounted into a job container.

    The path must be absolute; it is normalised (``..`` and ``.`` removed) and, with
    ``resolve``, symlinks that exist are followed, so ``/data/../etc`` or a link
    ``/data/x -> /etc`` do not escape. It is allowed when it equals or lies under one of the
    ``allow_list`` prefixes (themselves normalised the same way). ``/data`` allows
    ``/data/imagenet`` but not ``/database``. An empty allow list allows nothing.

    The master sees node paths it cannot resolve, so it checks lexically; the agent checks
    again with ``resolve=True`` where the paths exist.
    """
    if not path or "\x00" in path or not posixpath.isabs(path):
        return False
    target = _normalise(path, resolve)
    for prefix in allow_list:
        if not prefix or "\x00" in prefix or not posixpath.isabs(prefix):
            continue
        if _confined(target, _normalise(prefix, resolve)):
            return True
    return False


def _normalise(path: str, resolve: bool) -> str:
    return os.path.realpath(path) if resolve else posixpath.normpath(path)


def image_allowed(image: str, patterns: Sequence[str]) -> bool:
    """Whether ``image`` matches one of the admin's ``patterns`` (shell-style, case-sensitive).

    ``pytorch/pytorch:*`` allows every tag of that repository; ``mlsm-test/*`` a whole
    namespace; ``*`` everything. A reference without a tag is matched as ``:latest``, and
    Docker Hub's short and long spellings are equivalent (``ubuntu:22.04`` is
    ``docker.io/library/ubuntu:22.04``). An empty pattern list allows nothing.
    """
    if not image or any(c.isspace() or ord(c) < 32 for c in image):
        return False
    candidates = _spellings(image)
    return any(
        fnmatch.fnmatchcase(candidate, pattern)
        for pattern in patterns
        if pattern
        for candidate in candidates
    )


def _spellings(image: str) -> set[str]:
    """The equivalent ways to write one image reference."""
    name, at, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" not in last and not at:
        name += ":latest"
    tagged = name + at + digest
    spellings = {image, tagged}
    first, slash, rest = tagged.partition("/")
    has_registry = bool(slash) and ("." in first or ":" in first or first == "localhost")
    if not has_registry:
        # Docker Hub: "ubuntu" == "library/ubuntu" == "docker.io/library/ubuntu".
        long_name = tagged if slash else f"{_OFFICIAL_NAMESPACE}/{tagged}"
        spellings.add(f"{DEFAULT_REGISTRY}/{long_name}")
        spellings.add(long_name)
    elif first in (DEFAULT_REGISTRY, "index.docker.io", "registry-1.docker.io"):
        spellings.add(rest)
        spellings.add(f"{DEFAULT_REGISTRY}/{rest}")
        if rest.startswith(f"{_OFFICIAL_NAMESPACE}/"):
            spellings.add(rest.removeprefix(f"{_OFFICIAL_NAMESPACE}/"))
    return spellings


__all__ = ["image_allowed", "mount_allowed"]


def no_account_reason(user: str, where: str) -> str:
    """Why a job of ``user`` cannot run on ``where`` ("node gpu3", "any online node"), and
    what an admin does about it."""
    return (
        f"no Unix account for {user} on {where}: an admin maps one "
        f"(`mlsm user set {user} --unix-user ACCOUNT`) or creates account {user} there"
    )
