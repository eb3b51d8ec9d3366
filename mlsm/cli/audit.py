"""``mlsm audit``: read the master's audit log (admins)."""

from __future__ import annotations

import sys
import time

import click

from mlsm.cli.common import client_from, json_option, parse_duration, when
from mlsm.cli.output import echo, emit_json, table


@click.command()
@click.option(
    "--verify",
    is_flag=True,
    help="Check the hash chain; exit 1 and name the first broken row if it is broken.",
)
@click.option("--since", help="Only rows newer than this long ago (e.g. 1h, 7d).")
@click.option("--actor", help="Only rows by this user.")
@click.option("--action", help="Only this action (wildcards: user.*).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@json_option
@click.pass_context
def audit(
    ctx: click.Context,
    verify: bool,
    since: str | None,
    actor: str | None,
    action: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Read the audit log (admins), or verify its hash chain."""
    with client_from(ctx) as c:
        if verify:
            res = c.audit.verify()
            if as_json:
                emit_json(res)
            else:
                echo(res.message if res.ok else f"BROKEN at row {res.first_broken}: {res.message}")
            sys.exit(0 if res.ok else 1)
        rows = c.audit.list(
            since=time.time() - parse_duration(since) if since else None,
            actor=actor,
            action=action,
            limit=limit,
        )
    if as_json:
        emit_json(rows)
        return
    table(
        [
            (r.id, when(r.ts), r.actor, r.role, r.action, r.target, r.outcome, r.client)
            for r in rows
        ],
        ["ID", "TIME", "ACTOR", "ROLE", "ACTION", "TARGET", "OUTCOME", "CLIENT"],
    )
