"""``mlsm usage`` (GPU-hours, utilisation, waits, energy; tables, JSON, CSV or charts) and
``mlsm reserve`` (set GPUs aside for a while; list and cancel reservations)."""

from __future__ import annotations

import csv
import io
import re
import shutil
import time
from datetime import datetime

import click

from mlsm.cli.common import client_from, json_option, parse_duration, when
from mlsm.cli.output import echo, emit_json, table
from mlsm.errors import ValidationError
from mlsm.wire import usage as wu

_SGR = re.compile(r"\x1b\[[0-9;]*m")
#: Charts printed by --plot: their height in lines, and the widest they get.
PLOT_LINES = 14
PLOT_MAX_COLUMNS = 120


def parse_time(text: str, *, now: float | None = None, future: bool = False) -> float:
    """A point in time: ``30d``/``12h`` (that long ago; with ``future``, ``+2h`` or ``2h``
    from now), ``now``, or a local date and time (``2027-01-31``, ``2027-01-31 14:00``)."""
    now = time.time() if now is None else now
    t = text.strip()
    if t == "now":
        return now
    if t and (t[0].isdecimal() or t[0] == "+") and t[-1].lower() in "smhd":
        d = parse_duration(t.lstrip("+"))
        return now + d if future or t.startswith("+") else now - d
    try:
        return datetime.fromisoformat(t).timestamp()
    except ValueError:
        raise ValidationError(
            f"{text!r} is not a time: use 30d, 12h, +2h, now, 2027-01-31 or '2027-01-31 14:00'"
        ) from None


def _hours(v: float) -> str:
    return f"{v:.2f}"


def _wait(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.1f}h"


def _row(r: wu.UsageRow) -> list[str]:
    return [
        r.key,
        _hours(r.gpu_hours),
        _hours(r.util_gpu_hours),
        str(r.jobs),
        _wait(r.wait_median_s),
        _wait(r.wait_p90_s),
        f"{r.energy_kwh:.2f}",
    ]


_HEADERS = ["", "GPU-H", "UTIL GPU-H", "JOBS", "WAIT MED", "WAIT P90", "KWH"]
_CSV_HEADERS = [
    "key",
    "gpu_hours",
    "util_gpu_hours",
    "jobs",
    "wait_median_s",
    "wait_p90_s",
    "energy_kwh",
]


def _csv(report: wu.UsageReport) -> str:
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow([report.by if h == "key" else h for h in _CSV_HEADERS])
    for r in [*report.rows, report.total]:
        out.writerow(
            [
                r.key,
                f"{r.gpu_hours:.6f}",
                f"{r.util_gpu_hours:.6f}",
                r.jobs,
                "" if r.wait_median_s is None else f"{r.wait_median_s:.1f}",
                "" if r.wait_p90_s is None else f"{r.wait_p90_s:.1f}",
                f"{r.energy_kwh:.6f}",
            ]
        )
    return buf.getvalue()


def _plots(report: wu.UsageReport, tl: wu.UsageTimeline) -> None:
    import plotext as plt

    from mlsm import charts

    width = min(shutil.get_terminal_size((80, 24)).columns, PLOT_MAX_COLUMNS)
    for k in range(4):
        plt.clear_figure()
        plt.plotsize(width, PLOT_LINES)
        plt.theme("clear")
        if k == 0:
            charts.gpu_hours_bars(plt, report)
        elif k == 1:
            charts.utilisation_lines(plt, tl)
        elif k == 2:
            charts.queue_lines(plt, tl)
        else:
            charts.wait_lines(plt, tl)
        # plotext ends lines with colour resets even without colours: they are dropped.
        echo(_SGR.sub("", plt.build()), lines=True)


@click.command("usage")
@click.option(
    "--by",
    type=click.Choice(wu.USAGE_BY),
    default="user",
    show_default=True,
    help="Group by user, node, node label (k=v) or GPU model.",
)
@click.option("--since", default="30d", show_default=True, help="Start: 30d, 12h, a date.")
@click.option("--until", default=None, help="End (default: now): 1d, a date and time.")
@click.option("--user", default=None, help="Only this user's jobs (admins; members see theirs).")
@json_option
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV instead of a table.")
@click.option("--plot", is_flag=True, help="Draw charts in the terminal.")
@click.pass_context
def usage(
    ctx: click.Context,
    by: wu.UsageBy,
    since: str,
    until: str | None,
    user: str | None,
    as_json: bool,
    as_csv: bool,
    plot: bool,
) -> None:
    """GPU-hours (allocated and utilisation-weighted), jobs, waits and energy."""
    now = time.time()
    t0 = parse_time(since, now=now)
    t1 = parse_time(until, now=now) if until else None
    with client_from(ctx) as c:
        report = c.usage.report(by=by, since=t0, until=t1, user=user)
        tl = c.usage.timeline(since=t0, until=t1) if plot else None
    if as_json:
        emit_json(report)
        return
    if as_csv:
        echo(_csv(report), nl=False, lines=True)
        return
    whose = f" ({report.user}'s jobs)" if report.user else ""
    echo(f"usage from {when(report.since)} to {when(report.until)} by {report.by}{whose}")
    table([_row(r) for r in report.rows] + [_row(report.total)], [report.by.upper(), *_HEADERS[1:]])
    if tl is not None:
        _plots(report, tl)


# ---------------------------------------------------------------- reservations
def _reservation_rows(items: list[wu.Reservation]) -> list[list[str]]:
    rows = []
    for r in items:
        flag = f" USED WITHOUT RESERVATION: GPU {r.unreserved_gpus}" if r.unreserved_gpus else ""
        rows.append(
            [
                str(r.id),
                r.user or "(maintenance)",
                r.node,
                ",".join(str(i) for i in r.gpu_indices),
                when(r.start),
                when(r.end),
                r.state + flag,
                r.note,
            ]
        )
    return rows


_RES_HEADERS = ["ID", "FOR", "NODE", "GPUS", "START", "END", "STATE", "NOTE"]


@click.group("reserve", invoke_without_command=True)
@click.option("--gpus", type=click.IntRange(1, 64), help="How many GPUs to reserve.")
@click.option("--for", "duration", help="How long: 8h, 30m, 2d.")
@click.option("--start", default=None, help="When it starts (default now): +2h, a date and time.")
@click.option("--node", default=None, help="The node (default: the master picks one).")
@click.option("--user", default=None, help="For this user (admins).")
@click.option("--maintenance", is_flag=True, help="For maintenance: nobody's jobs (admins).")
@click.option("--note", default="", help="Why (shown in listings).")
@json_option
@click.pass_context
def reserve(
    ctx: click.Context,
    gpus: int | None,
    duration: str | None,
    start: str | None,
    node: str | None,
    user: str | None,
    maintenance: bool,
    note: str,
    as_json: bool,
) -> None:
    """Reserve GPUs for a while: mlsm reserve --gpus 2 --for 8h [--node N] [--start TIME].

    Also: mlsm reserve list, mlsm reserve cancel ID."""
    if ctx.invoked_subcommand is not None:
        return
    if gpus is None or duration is None:
        raise click.UsageError("give --gpus N and --for DURATION (or: reserve list | cancel ID)")
    body = wu.ReservationCreate(
        gpus=gpus,
        duration_s=parse_duration(duration),
        start=parse_time(start, future=True) if start else None,
        node=node,
        user=user,
        maintenance=maintenance,
        note=note,
    )
    with client_from(ctx) as c:
        made = c.reservations.create(body)
    if as_json:
        emit_json(made)
        return
    whom = made.user or "maintenance"
    echo(
        f"reservation {made.id}: {made.node} GPU {','.join(map(str, made.gpu_indices))} "
        f"for {whom}, {when(made.start)} to {when(made.end)}"
    )


@reserve.command("list")
@click.option("--all", "show_all", is_flag=True, help="Ended and cancelled ones too.")
@json_option
@click.pass_context
def reserve_list(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """List reservations (those not over yet)."""
    with client_from(ctx) as c:
        items = c.reservations.list(all=show_all)
    if as_json:
        emit_json(items)
        return
    table(_reservation_rows(items), _RES_HEADERS)


@reserve.command("cancel")
@click.argument("reservation_id", type=click.IntRange(1))
@json_option
@click.pass_context
def reserve_cancel(ctx: click.Context, reservation_id: int, as_json: bool) -> None:
    """End a reservation now (its user, its maker, or an admin)."""
    with client_from(ctx) as c:
        r = c.reservations.cancel(reservation_id)
    if as_json:
        emit_json(r)
        return
    echo(f"reservation {r.id} cancelled")
