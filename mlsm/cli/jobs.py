"""``mlsm jobs``, ``job ...``, ``logs`` and ``cancel``: jobs from the terminal (``submit``
is :mod:`mlsm.cli.submit`)."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import click

from mlsm.cli import jobshow
from mlsm.cli.common import client_from, human_bytes, json_option
from mlsm.cli.jobedit import job_edit
from mlsm.cli.jobrefs import JOB, JobRef
from mlsm.cli.output import LogSink, echo, emit_json, log_sink
from mlsm.errors import Unreachable
from mlsm.wire.follow import LogEnded, LogEvent, LogText

#: The exit status of ``mlsm logs -f`` (and of any command that waits for a job's end):
#: how the job ended, apart from mlsm's own 1 (an error) and 2 (a bad argument).
JOB_END_EXIT: dict[str, int] = {"succeeded": 0, "failed": 3, "cancelled": 4, "interrupted": 5}


@click.group()
def job() -> None:
    """Show, edit, release or purge a job."""


job.add_command(jobshow.show, "show")


@job.command("purge")
@click.argument("ref", type=JOB, metavar="JOB")
@json_option
@click.pass_context
def job_purge(ctx: click.Context, ref: JobRef, as_json: bool) -> None:
    """Free a finished job's directory (outputs and log) on its node now.

    Only the job's owner or an admin may; a directory that is in use (the job runs, its
    outputs are being fetched) stays. The log shipped to the master is kept.
    """
    with client_from(ctx) as c:
        job_id = ref.resolve(c)
        res = c.jobs.purge(job_id)
    if as_json:
        emit_json(res)
        return
    if res.state == "removed":
        echo(f"removed job {job_id}'s directory on {res.node} ({human_bytes(res.bytes)})")
    elif res.state == "requested":
        echo(f"job {job_id}: {res.message}")
    else:
        echo(f"job {job_id}: nothing to remove ({res.message})")


@job.command("release")
@click.argument("ref", type=JOB, metavar="JOB")
@click.pass_context
def job_release(ctx: click.Context, ref: JobRef) -> None:
    """Release a held job into the queue (also: mlsm job edit JOB --release)."""
    with client_from(ctx) as c:
        job_id = ref.resolve(c)
        c.jobs.release(job_id)
    echo(f"job {job_id} released")


job.add_command(job_edit)


@job.command("set")
@click.argument("job_id", type=click.IntRange(1))
@click.option(
    "--idle-exempt/--no-idle-exempt",
    "idle_exempt",
    default=None,
    help="Exempt the job from the idle-GPU policy, or take that back (admins; audited).",
)
@json_option
@click.pass_context
def job_set(ctx: click.Context, job_id: int, idle_exempt: bool | None, as_json: bool) -> None:
    """Change a job's settings (admins)."""
    if idle_exempt is None:
        raise click.UsageError("nothing to set: give --idle-exempt or --no-idle-exempt")
    with client_from(ctx) as c:
        state = c.events.idle_exempt(job_id, idle_exempt)
    if as_json:
        emit_json(state)
        return
    echo(f"job {job_id} is {'exempt from' if state.exempt else 'subject to'} the idle-GPU policy")


@click.command()
@click.argument("ref", type=JOB, metavar="JOB")
@click.option("-f", "--follow", is_flag=True, help="Follow the log live until the job ends.")
@click.option(
    "--raw", is_flag=True, help="Pass every byte to the terminal unchanged (escape sequences too)."
)
@click.pass_context
def logs(ctx: click.Context, ref: JobRef, follow: bool, raw: bool) -> None:
    """Print a job's log (stdout and stderr), or follow it live with -f.

    To a terminal, the log is shown safely: newlines, tabs, carriage returns (progress
    bars) and colours pass, every other control or escape sequence is shown as text
    (\\x1b...), so a log cannot retitle the window, move the cursor or hide lines; --raw
    passes the bytes unchanged. Into a pipe or a file the bytes are always exact.

    With -f the exit status says how the job ended, so `mlsm logs -f $J && next` works:
    0 succeeded, 3 failed, 4 cancelled, 5 interrupted (1: mlsm's own error, such as a
    master that went away; 2: a bad argument).
    """
    sink = log_sink(raw)
    try:
        with client_from(ctx) as c:
            job_id = ref.resolve(c)
            if not follow:
                for chunk in c.jobs.log(job_id):
                    sink.write(chunk)
                return
            state = _follow(c.jobs.follow(job_id), sink)
    finally:
        sink.close()
    if not state:
        raise Unreachable(f"the log of job {job_id} stopped before the job ended; run again")
    if state != "succeeded":
        echo(f"mlsm: job {job_id} ended {state}", err=True)
    sys.exit(JOB_END_EXIT.get(state, 1))


def _follow(events: Iterable[LogEvent], out: LogSink) -> str:
    """Write the log's output as it arrives; the job's final state ("" if the stream broke)."""
    for event in events:
        if isinstance(event, LogText):
            out.write(event.text.encode())
            out.flush()
        elif isinstance(event, LogEnded):
            return event.state
    return ""
