"""``mlsm outputs``: list a job's outputs, or fetch them (``mlsm outputs get``); and the
``mlsm wait JOB --fetch DIR`` that pulls them when the job ends (``submit --fetch`` too).

A fetch is a manifest then frames (:mod:`mlsm.bulk`), relayed by the master from the job's
node, received into the person's directory by an :class:`~mlsm.bulk.InPlaceSink`: a file
already there with the right content is kept, every other file is received into a private
work dir (``DIR/.mlsm-get-<job>-<digest>``), verified by sha256 and renamed into place. The
work dir's journal makes a cut fetch resumable: the same command run again (after the
master, the network or this process died) asks only for what is missing. A cut inside
one run is retried a few times before the command gives up with that advice.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import click

from mlsm.bulk import Want
from mlsm.cli.common import ago, client_from, human_bytes, json_option
from mlsm.cli.jobrefs import JOB, JobRef
from mlsm.cli.output import clear_status_line, echo, emit_json, status_line, table
from mlsm.client import Client
from mlsm.errors import TransferFailed, UnavailableError
from mlsm.wire import api

CUT_RETRIES = 5  # cut responses retried within one run before giving up
CUT_BACKOFF_S = 1.0  # first wait after a cut, doubled each time
PROGRESS_EVERY_S = 0.2  # a terminal's progress line is redrawn at most this often
PLAIN_EVERY_S = 5.0  # a plain (non-terminal) progress line at most this often
WAIT_POLL_S = 1.0  # how often `mlsm wait` looks at the jobs
WORK_PREFIX = ".mlsm-get-"


@click.command(
    "outputs",
    context_settings={"ignore_unknown_options": False},
    short_help="List or fetch a job's outputs.",
)
@click.argument("args", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    "dest",
    type=click.Path(file_okay=False),
    default=None,
    help="get: the directory to fetch into (default: ./job-JOB).",
)
@click.option(
    "--include-code",
    is_flag=True,
    help="get: also the files of the job's copy of your code (code/) that it did not change.",
)
@json_option
@click.pass_context
def outputs(
    ctx: click.Context,
    args: tuple[str, ...],
    dest: str | None,
    include_code: bool,
    as_json: bool,
) -> None:
    """List a job's outputs, or fetch them.

    \b
    mlsm outputs JOB [PATH]                 files (path, size, mtime) under PATH
    mlsm outputs get JOB [PATH...] [-o DIR] fetch them (all outputs by default)

    Outputs live on the node the job ran on and are read through the master, also while
    the job runs. Only the job's owner and admins may. A fetch is verified by hash and
    resumable: run the same command again after a cut. A fetch of all outputs leaves out
    the files of the job's copy of your code (code/) that it did not change: what the job
    wrote there comes back (--include-code: all of it).
    """
    if args[0] == "get":
        if len(args) < 2:
            raise click.UsageError("mlsm outputs get JOB [PATH...] [-o DIR]")
        job_id = _job_id(args[1])
        with client_from(ctx) as c:
            fetch(
                c,
                job_id,
                list(args[2:]),
                Path(dest or f"job-{job_id}"),
                as_json=as_json,
                include_code=include_code,
            )
        return
    if len(args) > 2:
        raise click.UsageError("mlsm outputs JOB [PATH] (to fetch: mlsm outputs get JOB PATH...)")
    if dest is not None or include_code:
        raise click.UsageError("-o DIR and --include-code go with `mlsm outputs get`")
    job_id = _job_id(args[0])
    with client_from(ctx) as c:
        listing = c.jobs.outputs(job_id, args[1] if len(args) > 1 else "")
    if as_json:
        emit_json(listing)
        return
    kinds = {"d": "dir", "l": "link", "o": "other", "f": ""}
    table(
        [
            (
                e.path + ("/" if e.kind == "d" else ""),
                "" if e.kind == "d" else human_bytes(e.size),
                ago(e.mtime),
                kinds[e.kind],
            )
            for e in listing.entries
        ],
        ["PATH", "SIZE", "MODIFIED", ""],
    )
    if listing.truncated:
        echo(f"(the first {len(listing.entries)} entries; name a PATH to see the rest)", err=True)


def _job_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a job id", param_hint="JOB") from None
    if value < 1:
        raise click.BadParameter(f"{text!r} is not a job id", param_hint="JOB")
    return value


# ---------------------------------------------------------------- fetching
class _Progress:
    """A progress bar on a terminal (stderr), plain lines now and then otherwise."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label = label
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._last = 0.0
        self._started = time.monotonic()

    def update(
        self, done: int, total: int, files_done: int, files_total: int, *, last: bool = False
    ) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        every = PROGRESS_EVERY_S if self.tty else PLAIN_EVERY_S
        if not last and now - self._last < every:
            return
        self._last = now
        frac = done / total if total else 1.0
        rate = done / max(now - self._started, 1e-3)
        text = (
            f"{self.label} {_bar(frac)} {frac:4.0%} {human_bytes(done)}/{human_bytes(total)} "
            f"{files_done}/{files_total} files {human_bytes(rate)}/s"
        )
        if self.tty:
            status_line(text)
            if last:
                clear_status_line()
        else:
            echo(text, err=True)


def _bar(frac: float, width: int = 24) -> str:
    full = int(frac * width)
    return "[" + "#" * full + "-" * (width - full) + "]"


def _frames_with_retries(
    c: Client,
    job_id: int,
    paths: list[str],
    digest: str,
    feed: Callable[[bytes], bool],
    mark: Callable[[], int],
    next_want: Callable[[], Want | None],
    include_code: bool = False,
) -> None:
    """Ask for and take frames until nothing is wanted; a cut response (the master or the
    network went away) is retried :data:`CUT_RETRIES` times with backoff."""
    cuts = 0
    while (want := next_want()) is not None:
        before = mark()
        try:
            frames = c.jobs.outputs_frames(job_id, paths, digest, want, include_code=include_code)
            for chunk in frames:
                if feed(chunk):
                    break
        except UnavailableError as exc:
            cuts += 1
            if cuts > CUT_RETRIES:
                raise TransferFailed(
                    f"the fetch of job {job_id}'s outputs was cut ({exc.message}); what arrived "
                    "is kept: run the same command again to resume"
                ) from None
            time.sleep(CUT_BACKOFF_S * 2 ** (cuts - 1))
            continue
        if mark() == before:
            raise TransferFailed(
                f"the node sent nothing useful for job {job_id}'s outputs; run the command again"
            )
        cuts = 0


def fetch(
    c: Client,
    job_id: int,
    paths: list[str],
    dest: Path,
    *,
    as_json: bool = False,
    include_code: bool = False,
) -> None:
    """Fetch ``paths`` of the job's outputs (all when empty: less the code copy's
    unchanged files unless ``include_code``) into ``dest``."""
    from mlsm.bulk import InPlaceSink

    job = c.jobs.get(job_id)
    manifest = c.jobs.outputs_manifest(job_id, paths, include_code=include_code)
    digest = manifest.digest()
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    work = root / f"{WORK_PREFIX}{job_id}-{digest[:16]}"
    for stale in root.glob(f"{WORK_PREFIX}{job_id}-*"):  # an earlier fetch of other content
        if stale != work:
            from mlsm.bulk.fstree import remove_tree

            remove_tree(stale)
    progress = _Progress(f"job {job_id}", not as_json)
    running = job.state not in api.FINAL_STATES
    sink = InPlaceSink(manifest, root, work)
    try:

        def feed(chunk: bytes) -> bool:
            done = sink.feed(chunk)
            p = sink.progress()
            progress.update(p.bytes_done, p.bytes_total, p.files_done, p.files_total)
            return done

        _frames_with_retries(
            c, job_id, paths, digest, feed, sink.progress_mark, sink.next_want, include_code
        )
        p = sink.progress()
        progress.update(p.bytes_done, p.bytes_total, p.files_done, p.files_total, last=True)
        gone = len(sink.gone)
        sink.finish(allow_gone=running)
    finally:
        sink.close()  # an unfinished fetch keeps its work dir: the next run resumes from it
    result = {
        "job_id": job_id,
        "dest": str(root),
        "files": p.files_total,
        "bytes": p.bytes_total,
        "received_bytes": p.bytes_received,
        "changed_while_fetched": gone,
    }
    if as_json:
        emit_json(result)
        return
    echo(
        f"fetched job {job_id}'s outputs into {root}: {p.files_total} files, "
        f"{human_bytes(p.bytes_total)} ({human_bytes(p.bytes_received)} transferred)"
    )
    if gone:
        echo(
            f"{gone} file(s) changed while fetched (the job still runs): run again for them",
            err=True,
        )


# ---------------------------------------------------------------- waiting
def wait_for(c: Client, ids: list[int]) -> list[api.Job]:
    """Poll until every job is final; their last views."""
    pending = set(ids)
    final: dict[int, api.Job] = {}
    while pending:
        for jid in sorted(pending):
            j = c.jobs.get(jid)
            if j.state in api.FINAL_STATES:
                final[jid] = j
                pending.discard(jid)
        if pending:
            time.sleep(WAIT_POLL_S)
    return [final[i] for i in ids]


@click.command("wait")
@click.argument("refs", nargs=-1, required=True, type=JOB, metavar="JOB...")
@click.option(
    "--fetch",
    "fetch_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Fetch each job's outputs into DIR when it ends (DIR/job-JOB with several jobs).",
)
@json_option
@click.pass_context
def wait(
    ctx: click.Context, refs: tuple[JobRef, ...], fetch_dir: str | None, as_json: bool
) -> None:
    """Wait until the jobs end (ids or array tasks, 12_3).

    The exit status says how they ended, as `mlsm logs -f` does: 0 all succeeded,
    otherwise that of the first job (in the order given) that did not: 3 failed,
    4 cancelled, 5 interrupted (1: mlsm's own error; 2: a bad argument).
    """
    with client_from(ctx) as c:
        jobs = wait_for(c, [ref.resolve(c) for ref in refs])
        if fetch_dir is not None:
            fetch_ended(c, jobs, Path(fetch_dir), as_json=as_json)
    if as_json:
        emit_json(jobs)
    else:
        for j in jobs:
            echo(f"job {j.id} {j.state}" + (f": {j.reason}" if j.reason else ""))
    ctx.exit(end_status(jobs))


def end_status(jobs: list[api.Job]) -> int:
    """The exit status of a command that waited for ``jobs`` (see ``mlsm wait``)."""
    from mlsm.cli.jobs import JOB_END_EXIT

    for j in jobs:
        if j.state != "succeeded":
            return JOB_END_EXIT.get(j.state, 1)
    return 0


def fetch_ended(c: Client, jobs: list[api.Job], dest: Path, *, as_json: bool = False) -> None:
    """Fetch the outputs of ended jobs (each into its own dir when there are several); a
    job that never ran on a node is said so and skipped."""
    for j in jobs:
        target = dest if len(jobs) == 1 else dest / f"job-{j.id}"
        if not j.node:
            echo(f"job {j.id} never ran on a node: no outputs to fetch", err=True)
            continue
        fetch(c, j.id, [], target, as_json=as_json)
