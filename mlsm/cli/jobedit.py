"""``mlsm job edit``: change a queued or held job, within the caller's rights."""

from __future__ import annotations

import click

from mlsm.cli.common import client_from, json_option, parse_duration
from mlsm.cli.jobrefs import JOB, JobRef
from mlsm.cli.output import echo, emit_json
from mlsm.errors import ValidationError
from mlsm.wire import api


@click.command("edit")
@click.argument("ref", type=JOB, metavar="JOB")
@click.option("--priority", type=click.IntRange(-1000, 1000), default=None, help="New priority.")
@click.option("--gpus", type=click.IntRange(0, 64), default=None, help="New number of GPUs.")
@click.option(
    "--time-limit",
    "--timeout",
    "time_limit",
    default=None,
    help="New time limit (90m, 2h; 0: none).",
)
@click.option("--name", default=None, help="New name.")
@click.option("--hold", "hold", flag_value=True, default=None, help="Hold it: it is not scheduled.")
@click.option("--release", "hold", flag_value=False, help="Release a held job into the queue.")
@json_option
@click.pass_context
def job_edit(
    ctx: click.Context,
    ref: JobRef,
    priority: int | None,
    gpus: int | None,
    time_limit: str | None,
    name: str | None,
    hold: bool | None,
    as_json: bool,
) -> None:
    """Change a queued or held job: priority, GPUs, time limit, name; hold or release it.

    Members may lower their jobs' priority but not raise it above the default (0); admins
    set any. A job that started or ended cannot be edited (mlsm restart runs it again).
    """
    timeout_s = None if time_limit is None else parse_duration(time_limit)
    change = api.JobEdit(priority=priority, gpus=gpus, timeout_s=timeout_s, name=name, hold=hold)
    if change == api.JobEdit():
        raise ValidationError(
            "say what to change: --priority, --gpus, --time-limit, --name, --hold or --release"
        )
    with client_from(ctx) as c:
        j = c.jobs.edit(ref.resolve(c), change)
    if as_json:
        emit_json(j)
        return
    limit = f"{j.timeout_s:g} s" if j.timeout_s else "none"
    echo(
        f"job {j.id} {j.state}: priority {j.priority}, {j.gpus} GPU(s), time limit {limit}"
        + (f" ({j.reason})" if j.state == "held" else "")
    )
