"""``mlsm events`` (read and follow the lab's events) and ``mlsm notify`` (webhooks and
email for them)."""

from __future__ import annotations

import sys
import time

import click

from mlsm.cli.common import client_from, json_option, when
from mlsm.cli.output import echo, emit_json, emit_json_line, table
from mlsm.client import Client
from mlsm.errors import UnavailableError
from mlsm.wire.events import Event, NotifyCreate, parse_event_types

RECONNECT_S = 1.0  # a follower that lost the master asks again this often
RECENT = 20  # events shown before following


def _line(ev: Event) -> str:
    return f"{when(ev.ts)}  {ev.id:>6}  {ev.kind:<24} {ev.message}"


def _show(ev: Event, as_json: bool) -> None:
    if as_json:
        emit_json_line(ev)
    else:
        echo(_line(ev))
        sys.stdout.flush()


@click.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing events as they happen.")
@click.option(
    "--type",
    "types",
    multiple=True,
    help="Only these kinds (repeatable or comma-separated): job.failed, node.offline, "
    "or a subject such as job or node.",
)
@click.option("--after", type=click.IntRange(0), help="Only events after this id.")
@click.option(
    "-n", "--limit", type=click.IntRange(1, 10_000), default=RECENT, show_default=True,
    help="How many events to show (before following, with -f).",
)  # fmt: skip
@json_option
@click.pass_context
def events(
    ctx: click.Context,
    follow: bool,
    types: tuple[str, ...],
    after: int | None,
    limit: int,
    as_json: bool,
) -> None:
    """Show the lab's events: your jobs' and the nodes' (admins: all), oldest first.

    With -f, follow them live; a follower that loses the master (a restart) reconnects
    and goes on after the last event it printed, so none is missed or shown twice.
    With --json each event is one JSON object per line.
    """
    kinds = parse_event_types(",".join(types)) if types else []
    with client_from(ctx) as c:
        page = c.events.list(after=after, types=kinds, limit=limit)
        for ev in page.events:
            _show(ev, as_json)
        if not follow:
            return
        last = max([page.last_id, *(e.id for e in page.events)]) if after is None else after
        if after is not None and page.events:
            last = page.events[-1].id
        _follow(c, last, kinds, as_json)


def _follow(c: Client, last: int, kinds: list[str], as_json: bool) -> None:
    lost = False
    while True:
        try:
            for ev in c.events.follow(after=last, types=kinds):
                if lost:
                    echo("mlsm: reconnected", err=True)
                    lost = False
                last = ev.id
                _show(ev, as_json)
        except UnavailableError:
            if not lost:
                echo("mlsm: lost the master; reconnecting...", err=True)
                lost = True
        time.sleep(RECONNECT_S)


# ---------------------------------------------------------------- notify
@click.group()
def notify() -> None:
    """Send events to a webhook (Slack, Mattermost or your own) or by email."""


@notify.command("add")
@click.option("--webhook", "url", help="POST each event here (JSON, HMAC-SHA256 signed).")
@click.option("--email", help="Mail each event to this address (the master's SMTP server).")
@click.option(
    "--on",
    "on",
    required=True,
    help="Event types, comma-separated: job.failed,job.succeeded, or job, node, ...",
)
@click.option("--lab-wide", is_flag=True, help="Every event of the lab (admins).")
@click.option("--note", default="", help="A note to tell your subscriptions apart.")
@json_option
@click.pass_context
def notify_add(
    ctx: click.Context,
    url: str | None,
    email: str | None,
    on: str,
    lab_wide: bool,
    note: str,
    as_json: bool,
) -> None:
    """Subscribe to events. A webhook's signing secret is printed this once."""
    if (url is None) == (email is None):
        raise click.UsageError("give --webhook URL or --email ADDRESS")
    kinds = parse_event_types(on)
    body = NotifyCreate(on=kinds, url=url, email=email, lab_wide=lab_wide, note=note)
    with client_from(ctx) as c:
        created = c.notify.add(body)
    if as_json:
        emit_json(created)
        return
    sub = created.subscription
    echo(f"notification {sub.id}: {', '.join(sub.on)} -> {sub.channel} {sub.target}")
    if created.secret:
        echo(f"signing secret (shown only now): {created.secret}")


@notify.command("list")
@click.option("--all", "show_all", is_flag=True, help="Everyone's (admins).")
@json_option
@click.pass_context
def notify_list(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """Your notifications (admins: and the lab-wide ones)."""
    with client_from(ctx) as c:
        subs = c.notify.list(all=show_all)
    if as_json:
        emit_json(subs)
        return
    table(
        [
            (
                s.id,
                s.owner + (" (lab)" if s.lab_wide else ""),
                s.channel,
                s.target,
                ",".join(s.on),
                s.note,
            )
            for s in subs
        ],
        ["ID", "OWNER", "CHANNEL", "TARGET", "EVENTS", "NOTE"],
    )


@notify.command("remove")
@click.argument("sub_id", type=click.IntRange(1))
@click.pass_context
def notify_remove(ctx: click.Context, sub_id: int) -> None:
    """Stop a notification."""
    with client_from(ctx) as c:
        c.notify.remove(sub_id)
    echo(f"notification {sub_id} removed")


notify.add_command(notify_remove, "rm")


@notify.command("log")
@click.argument("sub_id", type=click.IntRange(1), required=False)
@click.option("-n", "--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
@click.pass_context
def notify_log(ctx: click.Context, sub_id: int | None, limit: int, as_json: bool) -> None:
    """What was sent, retried and given up (of one notification, or all of yours)."""
    with client_from(ctx) as c:
        rows = c.notify.log(subscription=sub_id, limit=limit)
    if as_json:
        emit_json(rows)
        return
    table(
        [
            (
                when(d.ts),
                d.subscription_id,
                d.event_id,
                d.kind,
                d.state,
                d.attempts,
                d.status if d.status is not None else "-",
                d.error,
            )
            for d in rows
        ],
        ["TIME", "NOTIFY", "EVENT", "KIND", "STATE", "TRIES", "HTTP", "ERROR"],
    )
