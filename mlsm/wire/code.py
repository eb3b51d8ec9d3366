"""Code snapshots and projects on the wire: the people's API (JSON) and the agent's (MessagePack).

A code snapshot is a :class:`~mlsm.bulk.manifest.Manifest` whose id is its digest (the
sha256 of its MessagePack encoding); its files are blobs of the master's code store, named
by their sha256. The steps of a submit that ships code::

    POST /api/v1/code                   manifest (MessagePack) -> CodeOffer (what to send)
    POST /api/v1/code/{digest}/blobs    frame stream of the offered entries -> CodeOffer
    POST /api/v1/jobs                   JobSubmit with code = digest

An agent that starts a job with code fills its node cache from the master::

    POST /agent/v1/code/manifest        CodeManifestFetch -> the manifest's bytes
    POST /agent/v1/code/blobs           CodeBlobsFetch    -> frame stream (mlsm.bulk.frames)

The agent may fetch only a snapshot that a job assigned to it (or a project push sent to it)
names. An admin's copy of a project between nodes (``POST /api/v1/projects/copy``) sends
the target :class:`CopyProject`; the target pulls the source node's tree through the
master's relay pipe::

    POST /agent/v1/projects/pull        ProjectPull(what="manifest") -> the manifest's bytes
    POST /agent/v1/projects/pull        ProjectPull(want=...)        -> frame stream

Rules of evolution are those of :mod:`mlsm.wire.agent`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from mlsm.wire.ints import Count, Int64

Digest = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
ProjectName = Annotated[
    str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
WantBytes = Annotated[bytes, Meta(max_length=4 << 20)]  # an encoded mlsm.bulk.Want

#: Bytes of a manifest the master takes in one request (20,000 files are ~2 MiB).
MAX_MANIFEST_BYTES = 64 << 20
OCTETS = "application/octet-stream"
ProjectState = Literal["syncing", "ready", "failed", "removing"]
MSGPACK = "application/msgpack"


# ---------------------------------------------------------------- people (JSON)
class CodeOffer(Struct, kw_only=True):
    """The master's answer to a manifest (and to each upload): what it still needs."""

    digest: Digest
    files: Count = 0
    bytes: Count = 0
    #: Entry indices of the manifest whose bytes the master wants (one per distinct blob).
    want: list[Count] = []
    want_bytes: Count = 0
    complete: bool = False  # nothing is wanted: the snapshot may be used by this user


class Project(Struct, kw_only=True):
    """A user's named working tree on one node."""

    name: str
    user: str
    node: str
    digest: str = ""  # the snapshot it was last brought up to
    files: int = 0
    bytes: int = 0
    state: ProjectState = "syncing"
    message: str = ""
    updated_at: float = 0.0
    path: str = ""  # where it lives on the node (jobs run there)


class ProjectPush(Struct, kw_only=True, forbid_unknown_fields=True):
    name: ProjectName
    node: Annotated[str, Meta(min_length=1, max_length=63)]
    digest: Digest


class ProjectCopy(Struct, kw_only=True, forbid_unknown_fields=True):
    """An admin's copy of a project to another node."""

    name: ProjectName
    user: Annotated[str, Meta(min_length=1, max_length=64)]
    source: Annotated[str, Meta(min_length=1, max_length=63)]
    target: Annotated[str, Meta(min_length=1, max_length=63)]


# ---------------------------------------------------------------- agents (MessagePack)
class CodeManifestFetch(Struct, kw_only=True):
    digest: Digest
    job_id: Int64 = 0  # the job that needs it (0: a project push, named by project_id)
    project_id: Int64 = 0


class CodeBlobsFetch(Struct, kw_only=True):
    digest: Digest
    want: WantBytes
    job_id: Int64 = 0
    project_id: Int64 = 0


class SyncProject(Struct, tag="sync_project", kw_only=True):
    """Bring the node's tree of project ``user/name`` up to snapshot ``digest``."""

    id: Int64
    project_id: Int64
    user: Annotated[str, Meta(min_length=1, max_length=64)]
    name: ProjectName
    digest: Digest
    unix_user: Annotated[str, Meta(max_length=64)] = ""
    admin: bool = False


class CopyProject(Struct, tag="copy_project", kw_only=True):
    """Target side: bring this node's tree of project ``user/name`` up to the same project
    on node ``source`` (pulled with :class:`ProjectPull` for ``copy_id``)."""

    id: Int64
    project_id: Int64
    copy_id: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{16,64}$")]
    user: Annotated[str, Meta(min_length=1, max_length=64)]
    name: ProjectName
    source: Annotated[str, Meta(max_length=63)] = ""
    unix_user: Annotated[str, Meta(max_length=64)] = ""
    admin: bool = False


class ProjectPull(Struct, kw_only=True):
    """Target -> master: the manifest (``what="manifest"``) or the frames of an encoded
    ``want`` of the source's project tree, for copy ``copy_id``."""

    copy_id: Annotated[str, Meta(max_length=64)]
    what: Literal["manifest", "want"] = "want"
    want: WantBytes = b""
    manifest_digest: Annotated[str, Meta(max_length=64)] = ""


class RemoveProject(Struct, tag="remove_project", kw_only=True):
    id: Int64
    project_id: Int64
    user: Annotated[str, Meta(min_length=1, max_length=64)]
    name: ProjectName


class ProjectReport(Struct, kw_only=True, omit_defaults=True):
    """What became of a SyncProject or RemoveProject (POST /agent/v1/projects)."""

    project_id: Int64
    state: Literal["ready", "failed", "removed"]
    digest: str = ""
    files: Count = 0
    bytes: Count = 0
    path: Annotated[str, Meta(max_length=4096)] = ""
    message: Annotated[str, Meta(max_length=4096)] = ""


decode_manifest_fetch = msgspec.msgpack.Decoder(CodeManifestFetch).decode
decode_blobs_fetch = msgspec.msgpack.Decoder(CodeBlobsFetch).decode
decode_project_report = msgspec.msgpack.Decoder(ProjectReport).decode
decode_project_pull = msgspec.msgpack.Decoder(ProjectPull).decode

__all__ = [
    "MAX_MANIFEST_BYTES",
    "CodeBlobsFetch",
    "CodeManifestFetch",
    "CodeOffer",
    "CopyProject",
    "Digest",
    "Project",
    "ProjectCopy",
    "ProjectName",
    "ProjectPull",
    "ProjectPush",
    "ProjectReport",
    "RemoveProject",
    "SyncProject",
]
