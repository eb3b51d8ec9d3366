"""``mlsm restart``: a job's request submitted again, as a new job that names the old one."""

from __future__ import annotations

import click

from mlsm.cli.common import client_from, json_option
from mlsm.cli.jobrefs import JOB, JobRef
from mlsm.cli.output import echo, emit_json


@click.command()
@click.argument("refs", nargs=-1, required=True, type=JOB, metavar="JOB...")
@click.option("-q", "--parsable", is_flag=True, help="Print only the new ids, one per line.")
@json_option
@click.pass_context
def restart(ctx: click.Context, refs: tuple[JobRef, ...], parsable: bool, as_json: bool) -> None:
    """Submit jobs again with the same request (command, resources, code snapshot): each
    becomes a new job, whose `mlsm job show` names the one it re-runs. Any job of yours
    may be restarted, finished or not (admins: anyone's; the new job keeps its owner).
    An array task (12_3) keeps its index."""
    replies = []
    with client_from(ctx) as c:
        for ref in refs:
            reply = c.jobs.restart(ref.resolve(c))
            replies.append(reply)
            if as_json:
                continue
            if parsable:
                echo(str(reply.job.id))
            else:
                echo(f"job {ref} restarted as job {reply.job.id}")
            if reply.warning:
                echo(f"mlsm: warning: {reply.warning}; it will wait", err=True)
    if as_json:
        emit_json(replies)
