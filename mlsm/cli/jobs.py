"""``mlsm jobs``, ``job ...``, ``logs`` and ``cancel``: jobs from the terminal (``submit``
is :mod:`mlsm.cli.submit`)."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import click

from mlsm.cli.common import client_from, human_bytes, json_option, when
from mlsm.cli.jobedit import job_edit
from mlsm.cli.jobrefs import JOB, JobRef
from mlsm.cli.output import LogSink, echo, emit_json, log_sink
from mlsm.errors import Unreachable
from mlsm.wire import api
from mlsm.wire.follow import LogEnded, LogEvent, LogText

#: The exit status of ``mlsm logs -f`` (and of any command that waits for a job's end):
#: how the job ended, apart from mlsm's own 1 (an error) and 2 (a bad argument).
JOB_END_EXIT: dict[str, int] = {"succeeded": 0, "failed": 3, "cancelled": 4, "interrupted": 5}


@click.group()
def job() -> None:
    """Show, edit, release or purge a job."""


@job.command("show")
@click.argument("ref", type=JOB, metavar="JOB")
@json_option
@click.pass_context
def job_show(ctx: click.Context, ref: JobRef, as_json: bool) -> None:
    """Everything about a job: spec, where it ran, why it waits or ended, its history.
    JOB is an id or an array task (12_3)."""
    with client_from(ctx) as c:
        j = c.jobs.get(ref.resolve(c))
    if as_json:
        emit_json(j)
        return
    import shlex

    rows = [
        ("job", f"{j.id} {j.name}"),
        ("user", j.user),
        ("state", j.state),
        ("reason", j.reason or "-"),
        ("command", shlex.join(j.argv)),
        (
            "env",
            j.env_kind
            + (f" {j.venv}" if j.venv else "")
            + (f" {j.conda}" if j.conda else "")
            + (f" {j.image}" if j.image else ""),
        ),
        (
            "resources",
            f"{j.gpus} GPU(s)"
            + (f" >= {j.gpu_mem_gib:g} GiB" if j.gpu_mem_gib else "")
            + (f", {j.cpus:g} CPUs" if j.cpus else "")
            + (f", {j.mem_gib:g} GiB" if j.mem_gib else ""),
        ),
        ("node", f"{j.node} GPUs {j.gpu_indices}" if j.node else "-"),
        ("priority", j.priority),
        ("attempt", f"{j.attempt} of {j.retries + 1 + j.preemptions}"),
        ("time limit", f"{j.timeout_s:g} s" if j.timeout_s else "none"),
        (
            "preemptible",
            (f"yes, {j.preempt_grace_s or 10:g} s to stop" if j.preemptible else "no")
            + (f", preempted {j.preemptions} time(s)" if j.preemptions else ""),
        ),
        ("expected start", when(j.expected_start) if j.expected_start else "-"),
        ("submitted", when(j.created_at)),
        ("started", when(j.started_at)),
        ("ended", when(j.ended_at)),
        ("exit code", "-" if j.exit_code is None else j.exit_code),
        ("log", f"{j.log_size} bytes" + (" (removed by retention)" if j.log_removed_at else "")),
        ("outputs", _outputs_line(j)),
    ]
    if j.idle_warned_at is not None or j.idle_exempt:
        idle = f"warned {when(j.idle_warned_at)}" if j.idle_warned_at else "not warned"
        rows.append(("idle GPUs", idle + (" (exempt)" if j.idle_exempt else "")))
    if j.after:
        rows.append(("after", ", ".join(j.after)))
    if j.datasets:
        rows.append(("datasets", ", ".join(j.datasets)))
    if j.array_index is not None:
        rows.append(
            (
                "array",
                f"task {j.array_index} of {j.array_parent}"
                + (f" (max {j.array_throttle} at once)" if j.array_throttle else ""),
            )
        )
    if j.timeout_s:
        rows.append(("timeout", f"{j.timeout_s:g} s"))
    if j.restarted_from is not None:
        rows.append(("restart", f"of job {j.restarted_from}"))
    for k, v in rows:
        echo(f"{k:<10} {v}")
    echo("history:")
    for e in j.history:
        echo(f"  {when(e.ts)}  {e.state:<11} {e.message}")


def _outputs_line(j: api.Job) -> str:
    """Where the job's files are on its node, or why they are gone."""
    if j.outputs_removed_at is not None:
        return f"removed {when(j.outputs_removed_at)} ({j.outputs_removed_why})"
    if not j.node:
        return "-"
    return f"{j.node}:{j.output_dir}" if j.output_dir else j.node


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
