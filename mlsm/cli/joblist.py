"""``mlsm jobs``: the job list, a table or JSON.

Its options are written once (:data:`OPTIONS`) for its click command and for the fast
path (:mod:`mlsm.cli.fast`), which lists without importing click: scripts poll this."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mlsm.cli.common import JSON, RootOptions, ago, client_from, when
from mlsm.cli.opts import Opt, click_command, fast_parse
from mlsm.cli.output import echo, emit_json, table
from mlsm.wire import api

if TYPE_CHECKING:
    import click

#: The options of ``mlsm jobs``, for its click command and its fast path (mlsm.cli.opts).
OPTIONS = (
    Opt(("--all",), "all_jobs", "flag", help="Include ended jobs."),
    Opt(
        ("--state",),
        "state",
        help="Only jobs in these states (comma-separated): " + ", ".join(api.JOB_STATES) + ".",
    ),
    Opt(("--user",), "user", help="Only this user's jobs."),
    Opt(("--node",), "node", help="Only jobs on this node."),
    Opt(("--limit",), "limit", "int", 1000, low=1, high=10000, show_default=True),
    Opt(
        ("--expand", "-x"),
        "expand",
        "flag",
        help="A row per array task (default: an array's tasks in one state are one row, 12_[0-3]).",
    ),
    JSON,
)


def _jobs(**params: Any) -> None:
    """List jobs (queued and running unless --all); REASON says why a job waits.

    The tasks of an array that share a state are one row (12_[0-3], STATE with their
    count) unless --expand; every command that takes a job takes a task id (12_3).
    """
    import click

    _prepare(click.get_current_context(), params)()


def fast(argv: list[str]) -> Callable[[], None]:
    """The fast path (:mod:`mlsm.cli.fast`): every form of ``mlsm jobs``."""
    return _prepare(RootOptions.from_env(), fast_parse(OPTIONS, None, argv))


def _prepare(ctx: click.Context | RootOptions, params: dict[str, Any]) -> Callable[[], None]:
    """Read the options (a bad --state is an error here, before anything is sent); the
    call that lists and shows."""
    state: str | None = params["state"]
    if state is not None:
        state = ",".join(api.parse_job_states(state)) or None

    def run() -> None:
        with client_from(ctx) as c:
            res = c.jobs.list(
                all=params["all_jobs"],
                state=state,
                user=params["user"],
                node=params["node"],
                limit=params["limit"],
            )
        _show(res, expand=params["expand"], as_json=params["as_json"])

    return run


def _show(res: api.JobList, *, expand: bool, as_json: bool) -> None:
    if as_json:
        emit_json(res)
        return
    from mlsm.cli.arrays import Row, group, task_id

    rows = [Row([j]) for j in res.jobs] if expand else group(res.jobs)
    lines: list[tuple[str, ...]] = [
        (
            str(r.first.id) if expand else r.id,
            r.first.name[:24],
            r.first.user,
            r.state,
            r.node,
            gpus(r.first) if len(r.jobs) == 1 else _each(r.first),
            ago(r.first.created_at),
            (_reason(r.first) if len(r.jobs) == 1 else r.reason) if _shows_reason(r.first) else "",
        )
        for r in rows
    ]
    heads = ["ID", "NAME", "USER", "STATE", "NODE", "GPUS", "SUBMITTED", "REASON"]
    if expand:  # the task ids beside the job ids
        lines = [
            (line[0], task_id(r.first), *line[1:]) for line, r in zip(lines, rows, strict=True)
        ]
        heads.insert(1, "TASK")
    table(lines, heads)
    if res.total > len(res.jobs):
        echo(f"({len(res.jobs)} of {res.total} shown; use --limit)", err=True)


def gpus(j: api.Job) -> str:
    """A job's GPUs: the count, with the indices it was given."""
    if not j.gpus:
        return "-"
    return f"{j.gpus} [{','.join(map(str, j.gpu_indices))}]" if j.gpu_indices else str(j.gpus)


def _each(j: api.Job) -> str:
    """The GPUs of a row of tasks: each task's count."""
    return f"{j.gpus} each" if j.gpus else "-"


def _shows_reason(j: api.Job) -> bool:
    return j.state in ("queued", "held") or j.state in api.FINAL_STATES


def _reason(j: api.Job) -> str:
    """Why it waits (with its expected start, when GPUs are reserved for it) or ended."""
    if j.expected_start is not None:
        return f"{j.reason} (expected start {when(j.expected_start)})"
    return j.reason


def __getattr__(name: str) -> Any:
    """``jobs``: the click command, made on first use (the fast path needs no click)."""
    if name == "jobs":
        command = click_command("jobs", _jobs, OPTIONS)
        globals()[name] = command
        return command
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    jobs: click.Command
