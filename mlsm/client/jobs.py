"""Jobs: submit (one, many, or a dry run), list, show, cancel a selection, edit, restart,
release, purge; its forwards; a job's outputs (listed, fetched as
a manifest then frames); a job's log, read whole or followed live.

A followed log arrives as typed :mod:`mlsm.wire.follow` events, decoded by the one
parser in :mod:`mlsm.client.sse`. What only outputs and follow need (the bulk manifest,
the outputs structs, the SSE parser) is imported when they are called, so ``mlsm jobs``
and ``mlsm submit`` do not load it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING

from mlsm.client.call import Call
from mlsm.client.resource import AsyncResource, SyncResource, async_method, sync_method
from mlsm.wire import api

if TYPE_CHECKING:
    from mlsm.bulk import Manifest, Want
    from mlsm.wire import outputs as wo
    from mlsm.wire.channels import ForwardInfo
    from mlsm.wire.follow import LogEvent

JOBS = "/api/v1/jobs"


def _job(job_id: int, tail: str = "") -> str:
    return f"{JOBS}/{int(job_id)}{tail}"


def _submit(spec: api.JobSubmit) -> Call[api.SubmitReply]:
    """Queue a job (or each task of an array)."""
    return Call("POST", JOBS, api.SubmitReply, body=spec)


def _list(
    *,
    state: str | None = None,
    user: str | None = None,
    node: str | None = None,
    all: bool = False,
    limit: int | None = None,
    array: int | None = None,
) -> Call[api.JobList]:
    """Queued and running jobs, ended ones too with ``all``; ``state`` may name several;
    ``array``: that array's tasks, in any state."""
    params = {
        "state": state,
        "user": user,
        "node": node,
        "all": all or None,
        "limit": limit,
        "array": array,
    }
    return Call("GET", JOBS, api.JobList, params=params)


def _get(job_id: int) -> Call[api.Job]:
    return Call("GET", _job(job_id), api.Job)


def _cancel(ids: Sequence[int]) -> Call[api.CancelResult]:
    """Cancel jobs: queued ones at once, running ones with SIGTERM then SIGKILL."""
    return Call("POST", f"{JOBS}/cancel", api.CancelResult, body=api.CancelRequest(ids=[*ids]))


def _cancel_select(selection: api.CancelRequest) -> Call[api.CancelResult]:
    """Cancel (or, with ``preview``, list) what a selection names and filters."""
    return Call("POST", f"{JOBS}/cancel", api.CancelResult, body=selection)


def _submit_many(specs: Sequence[api.JobSubmit]) -> Call[api.BulkSubmitReply]:
    """Queue many jobs in one call: all of them, or none (the problems named by index)."""
    return Call("POST", f"{JOBS}/bulk", api.BulkSubmitReply, body=api.BulkSubmit(jobs=[*specs]))


def _plan(spec: api.JobSubmit) -> Call[api.SubmitPlan]:
    """Where and why the job would run now, or why it would wait; nothing is stored."""
    return Call("POST", f"{JOBS}/plan", api.SubmitPlan, body=spec)


def _edit(job_id: int, change: api.JobEdit) -> Call[api.Job]:
    """Change a queued or held job (priority, GPUs, time limit, name, hold/release)."""
    return Call("PATCH", _job(job_id), api.Job, body=change)


def _restart(job_id: int) -> Call[api.SubmitReply]:
    """Submit the job's request again as a new job."""
    return Call("POST", _job(job_id, "/restart"), api.SubmitReply)


def _release(job_id: int) -> Call[api.Job]:
    """Let a held job join the queue."""
    return Call("POST", _job(job_id, "/release"), api.Job)


def _purge(job_id: int) -> Call[api.PurgeResult]:
    """Free a finished job's directory on its node (its owner or an admin; audited)."""
    return Call("POST", _job(job_id, "/purge"), api.PurgeResult)


def _outputs(job_id: int, path: str = "") -> Call[wo.OutputListing]:
    """The files (path, size, mtime) under ``path`` of the job's output directory, also
    while it runs (its owner and admins)."""
    from mlsm.wire import outputs as wo

    return Call("GET", _job(job_id, "/outputs"), wo.OutputListing, params={"path": path or None})


def _outputs_manifest(job_id: int, paths: Sequence[str], include_code: bool = False) -> Call[bytes]:
    """The manifest of ``paths`` (all outputs when empty: without the files of the job's
    code copy it did not change, unless ``include_code``)."""
    from mlsm.wire import outputs as wo

    body = wo.OutputsFetch(paths=[*paths], include_code=include_code)
    return Call("POST", _job(job_id, "/outputs/manifest"), bytes, body=body)


def _outputs_frames(
    job_id: int, paths: Sequence[str], digest: str, want: Want, include_code: bool = False
) -> Call[bytes]:
    from mlsm.wire import outputs as wo

    body = wo.OutputsFetch(
        paths=[*paths], manifest_digest=digest, want=want, include_code=include_code
    )
    return Call("POST", _job(job_id, "/outputs/frames"), bytes, body=body)


def _log(job_id: int, offset: int, limit: int | None) -> Call[bytes]:
    return Call("GET", _job(job_id, "/log"), bytes, params={"offset": offset, "limit": limit})


def _follow(job_id: int, offset: int) -> Call[bytes]:
    return Call("GET", _job(job_id, "/log/follow"), bytes, params={"offset": offset})


def _forwards(job_id: int) -> Call[list[ForwardInfo]]:
    """The port forwards held open into a job (``mlsm forward``)."""
    from mlsm.wire.channels import ForwardInfo

    return Call("GET", _job(job_id, "/forwards"), list[ForwardInfo])


class Jobs(SyncResource):
    submit = sync_method(_submit)
    submit_many = sync_method(_submit_many)
    plan = sync_method(_plan)
    list = sync_method(_list)
    get = sync_method(_get)
    cancel = sync_method(_cancel)
    cancel_select = sync_method(_cancel_select)
    edit = sync_method(_edit)
    restart = sync_method(_restart)
    release = sync_method(_release)
    purge = sync_method(_purge)
    outputs = sync_method(_outputs)
    forwards = sync_method(_forwards)

    def outputs_manifest(
        self, job_id: int, paths: Sequence[str] = (), *, include_code: bool = False
    ) -> Manifest:
        """The manifest of ``paths`` of the job's outputs (all when empty, less the code
        copy's unchanged files unless ``include_code``): a fetch's first step (audited on
        the master)."""
        from mlsm.bulk import decode_manifest

        return decode_manifest(self._http.send(_outputs_manifest(job_id, paths, include_code)))

    def outputs_frames(
        self,
        job_id: int,
        paths: Sequence[str],
        digest: str,
        want: Want,
        *,
        include_code: bool = False,
    ) -> Iterator[bytes]:
        """The frames answering ``want`` against the manifest of ``digest``, as they come."""
        return self._http.stream(_outputs_frames(job_id, paths, digest, want, include_code))

    def log(self, job_id: int, *, offset: int = 0, limit: int | None = None) -> Iterator[bytes]:
        """The log's bytes from ``offset`` (at most ``limit``), chunk by chunk."""
        return self._http.stream(_log(job_id, offset, limit))

    def follow(self, job_id: int, *, offset: int = 0) -> Iterator[LogEvent]:
        """The log from ``offset``, live, until the job ends (``LogEnded``)."""
        from mlsm.client.sse import LogFollowDecoder

        decoder = LogFollowDecoder()
        for chunk in self._http.stream(_follow(job_id, offset)):
            yield from decoder.feed(chunk)


class AsyncJobs(AsyncResource):
    submit = async_method(_submit)
    submit_many = async_method(_submit_many)
    plan = async_method(_plan)
    list = async_method(_list)
    get = async_method(_get)
    cancel = async_method(_cancel)
    cancel_select = async_method(_cancel_select)
    edit = async_method(_edit)
    restart = async_method(_restart)
    release = async_method(_release)
    purge = async_method(_purge)
    outputs = async_method(_outputs)
    forwards = async_method(_forwards)

    async def outputs_manifest(
        self, job_id: int, paths: Sequence[str] = (), *, include_code: bool = False
    ) -> Manifest:
        """The manifest of ``paths`` of the job's outputs (as :meth:`Jobs.outputs_manifest`)."""
        from mlsm.bulk import decode_manifest

        body: bytes = await self._http.send(_outputs_manifest(job_id, paths, include_code))
        return decode_manifest(body)

    def outputs_frames(
        self,
        job_id: int,
        paths: Sequence[str],
        digest: str,
        want: Want,
        *,
        include_code: bool = False,
    ) -> AsyncIterator[bytes]:
        """The frames answering ``want`` against the manifest of ``digest``, as they come."""
        return self._http.stream(_outputs_frames(job_id, paths, digest, want, include_code))

    def log(
        self, job_id: int, *, offset: int = 0, limit: int | None = None
    ) -> AsyncIterator[bytes]:
        """The log's bytes from ``offset`` (at most ``limit``), chunk by chunk."""
        return self._http.stream(_log(job_id, offset, limit))

    async def follow(self, job_id: int, *, offset: int = 0) -> AsyncIterator[LogEvent]:
        """The log from ``offset``, live, until the job ends (``LogEnded``)."""
        from mlsm.client.sse import LogFollowDecoder

        decoder = LogFollowDecoder()
        async for chunk in self._http.stream(_follow(job_id, offset)):
            for event in decoder.feed(chunk):
                yield event
