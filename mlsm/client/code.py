"""Code in: offering and uploading code snapshots, and projects (see :mod:`mlsm.wire.code`)."""

from __future__ import annotations

from collections.abc import Iterable

from mlsm.client.call import Call, segment
from mlsm.client.resource import AsyncResource, SyncResource, async_method, sync_method
from mlsm.wire import code as wc

CODE = "/api/v1/code"
PROJECTS = "/api/v1/projects"


def _offer(manifest: bytes) -> Call[wc.CodeOffer]:
    """Send a snapshot's manifest (MessagePack); the answer says which files to upload."""
    return Call("POST", CODE, wc.CodeOffer, content=manifest, content_type=wc.MSGPACK)


def _upload(digest: str, frames: bytes | Iterable[bytes]) -> Call[wc.CodeOffer]:
    """Upload the wanted files of an offered snapshot as one frame stream (streamed)."""
    return Call("POST", f"{CODE}/{segment(digest, 'digest')}/blobs", wc.CodeOffer, content=frames)


def _projects(*, all: bool = False) -> Call[list[wc.Project]]:
    """Your projects; everyone's for an admin with ``all``."""
    return Call("GET", PROJECTS, list[wc.Project], params={"all": all or None})


def _push(req: wc.ProjectPush) -> Call[wc.Project]:
    """Bring a project on a node up to an uploaded snapshot."""
    return Call("POST", PROJECTS, wc.Project, body=req)


def _copy(req: wc.ProjectCopy) -> Call[wc.Project]:
    """Copy a user's project from one node to another (admins)."""
    return Call("POST", f"{PROJECTS}/copy", wc.Project, body=req)


def _remove(name: str, *, node: str, user: str | None = None) -> Call[wc.Project]:
    """Remove a project's tree from a node."""
    params = {"node": node, "user": user}
    return Call("DELETE", f"{PROJECTS}/{segment(name, 'project')}", wc.Project, params=params)


class Code(SyncResource):
    offer = sync_method(_offer)
    upload = sync_method(_upload)


class AsyncCode(AsyncResource):
    offer = async_method(_offer)
    upload = async_method(_upload)


class Projects(SyncResource):
    list = sync_method(_projects)
    push = sync_method(_push)
    copy = sync_method(_copy)
    remove = sync_method(_remove)


class AsyncProjects(AsyncResource):
    list = async_method(_projects)
    push = async_method(_push)
    copy = async_method(_copy)
    remove = async_method(_remove)
