"""``mlsm job show``: everything about one job.

Its options are written once (:data:`OPTIONS`, :data:`REF`) for its click command and for
the fast path (:mod:`mlsm.cli.fast`), which shows a job without importing click: scripts
poll this until a job ends."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mlsm.cli.common import JSON, RootOptions, client_from, root_options, when
from mlsm.cli.jobrefs import JobRef, parse_ref
from mlsm.cli.opts import Arg, click_command, fast_parse
from mlsm.cli.output import echo, emit_json

if TYPE_CHECKING:
    import click

    from mlsm.wire import api

#: The options of ``mlsm job show`` and its argument, for its click command and its fast
#: path (mlsm.cli.opts).
OPTIONS = (JSON,)
REF = Arg("ref", metavar="JOB")


def _job_show(ref: JobRef, as_json: bool) -> None:
    """Everything about a job: spec, where it ran, why it waits or ended, its history.
    JOB is an id or an array task (12_3)."""
    import click

    show_job(root_options(click.get_current_context()), ref, as_json)


def fast(argv: list[str]) -> Callable[[], None]:
    """The fast path (:mod:`mlsm.cli.fast`): every form of ``mlsm job show``."""
    params = fast_parse(OPTIONS, REF, argv)
    ref = parse_ref(params["ref"])  # a bad one: click's run says it, as the JOB type does
    root = RootOptions.from_env()
    return lambda: show_job(root, ref, params["as_json"])


def show_job(root: RootOptions, ref: JobRef, as_json: bool) -> None:
    """Fetch the job and show it: JSON, or one line per fact and its history."""
    with client_from(root) as c:
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


def __getattr__(name: str) -> Any:
    """``show``: the click command, made on first use (the fast path needs no click)."""
    if name == "show":
        from mlsm.cli.jobrefs import JOB

        command = click_command("show", _job_show, OPTIONS, REF, arg_type=JOB)
        globals()[name] = command
        return command
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    show: click.Command
