"""``mlsm cancel``: jobs by id, range and array task, or by user, name and state, in one
call that the master resolves and applies job by job."""

from __future__ import annotations

import sys

import click
import msgspec

from mlsm.cli.common import client_from, json_option
from mlsm.cli.jobrefs import FORMS, Selection, parse_selection
from mlsm.cli.output import confirm, echo, emit_json
from mlsm.errors import ValidationError
from mlsm.wire import api

#: How many of a wide selection's ids the confirmation prompt lists.
PROMPT_IDS_SHOWN = 20


@click.command()
@click.argument("refs", nargs=-1, metavar="[JOB...]")
@click.option("--user", "-u", default=None, help="Only this user's jobs (admins; members: you).")
@click.option("--name", "-n", default="", help="Only jobs whose name matches this glob (* ? [..]).")
@click.option(
    "--state",
    "-t",
    default=None,
    help="Only jobs in these states (comma-separated; default with no JOB: not ended).",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask before cancelling a wide selection.")
@json_option
@click.pass_context
def cancel(
    ctx: click.Context,
    refs: tuple[str, ...],
    user: str | None,
    name: str,
    state: str | None,
    yes: bool,
    as_json: bool,
) -> None:
    """Cancel jobs: queued ones at once, running ones with SIGTERM then SIGKILL.

    JOB is an id, a range or a list (4-7, 4,9,12-14), an array (its id: every task) or
    array tasks (12_3, 12_[0-3]). --user, --name and --state narrow the jobs named, or
    with no JOB select them (members: only their own jobs). A selection by filters alone
    lists what it would cancel and asks first when a terminal is attached (--yes skips).

    The exit status is 1 when some job named was not cancelled (each said why).
    """
    sel = parse_selection(refs) if refs else Selection()
    states = api.parse_job_states(state) if state is not None else []
    if not refs and not (user or name or states):
        raise ValidationError("name jobs to cancel (" + FORMS + ") or filter them")
    request = sel.request(user=user, name=name, states=states)
    with client_from(ctx) as c:
        if not refs and not yes and sys.stdin.isatty():
            preview = c.jobs.cancel_select(msgspec.structs.replace(request, preview=True))
            if not preview.cancelled:
                echo("no job matches; nothing to cancel", err=True)
                return
            shown = " ".join(map(str, preview.cancelled[:PROMPT_IDS_SHOWN]))
            more = " ..." if len(preview.cancelled) > PROMPT_IDS_SHOWN else ""
            confirm(f"cancel {len(preview.cancelled)} job(s): {shown}{more}?")
            # Exactly the jobs shown: one that matches only now is not cancelled unasked.
            request = Selection(ids=preview.cancelled).request()
        res = c.jobs.cancel_select(request)
    if as_json:
        emit_json(res)
    else:
        for done in res.cancelled:
            echo(f"job {done} cancelled")
        for jid, why in res.skipped.items():
            echo(f"mlsm: job {jid} not cancelled: {why}", err=True)
        if not res.cancelled and not res.skipped:
            echo("no job matches; nothing cancelled", err=True)
    if res.skipped:
        sys.exit(1)
