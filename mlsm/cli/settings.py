"""``mlsm settings``: show the lab's policies, or change them (admins)."""

from __future__ import annotations

import click

from mlsm.cli.common import client_from, human_bytes, json_option, parse_duration
from mlsm.cli.output import echo, emit_json
from mlsm.wire import api


@click.group("settings")
def settings_cmd() -> None:
    """Show or change the lab's policies (admins change them)."""


@settings_cmd.command("show")
@json_option
@click.pass_context
def settings_show(ctx: click.Context, as_json: bool) -> None:
    """Show the lab's policies."""
    with client_from(ctx) as c:
        s = c.settings.get()
    if as_json:
        emit_json(s)
        return
    echo(f"image patterns      {', '.join(s.image_patterns) or 'any image'}")
    echo(f"mountable paths     {', '.join(s.mount_allow) or 'none (members mount nothing)'}")
    echo(f"import may reach    {', '.join(s.import_allow_cidrs) or 'public addresses only'}")
    echo(f"largest import      {human_bytes(s.import_max_bytes)}")
    echo(
        "job dirs, logs kept  "
        + (
            f"{s.job_retention_days:g} days after the job ends"
            if s.job_retention_days
            else "until purged"
        )
    )
    echo(
        "node disk threshold "
        + (
            f"{s.node_disk_high_pct:g}% full: oldest finished jobs' dirs go first"
            if s.node_disk_high_pct
            else "none"
        )
    )
    echo(f"code snapshot       {s.code_max_files} files, {human_bytes(s.code_max_bytes)} at most")
    echo(f"webhooks may reach  {', '.join(s.webhook_allow_cidrs) or 'public addresses only'}")
    echo("idle-GPU policy     " + _idle_line(s))

    echo(f"default time limit  {_limit(s.default_time_limit_s)}")
    echo(f"max time limit      {_limit(s.max_time_limit_s)} (members)")
    echo(f"max GPUs per job    {s.max_gpus_per_job or 'any'} (members)")
    echo(f"member max priority {s.member_max_priority}")
    echo(
        "reservations        "
        + (
            f"members up to {s.reservation_max_gpus} GPUs, {s.reservation_max_hours:g} h at most"
            if s.reservation_max_gpus
            else "admins only"
        )
    )


def _idle_line(s: api.LabSettings) -> str:
    if not s.idle_gpu_enabled:
        return "off"
    exempt = f"; exempt: {', '.join(s.idle_gpu_exempt_users)}" if s.idle_gpu_exempt_users else ""
    return (
        f"below {s.idle_gpu_pct:g}% for {s.idle_gpu_window_s:g} s: warned, then "
        f"{s.idle_gpu_action}ed after {s.idle_gpu_grace_s:g} s{exempt}"
    )


def _limit(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds else "none"


@settings_cmd.command("set")
@click.option(
    "--image-pattern",
    "image_patterns",
    multiple=True,
    help="Image members may run, e.g. 'pytorch/pytorch:*' (repeatable; replaces the list).",
)
@click.option("--any-image", is_flag=True, help="Allow every image (clears the patterns).")
@click.option(
    "--mount-allow",
    multiple=True,
    help="Host path members may mount into containers (repeatable; replaces the list).",
)
@click.option("--no-mounts", is_flag=True, help="Allow no host mounts.")
@click.option(
    "--import-allow-cidr",
    "import_allow_cidrs",
    multiple=True,
    help="Internal range dataset imports may reach (repeatable; replaces the list).",
)
@click.option("--no-import-cidrs", is_flag=True, help="Imports may reach public addresses only.")
@click.option("--import-max-gib", type=click.FloatRange(0), help="Largest dataset import in GiB.")
@click.option(
    "--job-retention-days",
    type=click.FloatRange(0, 36500),
    help="Keep a finished job's directory (on its node) and shipped log this many days "
    "(0: until purged).",
)
@click.option(
    "--node-disk-high-pct",
    type=click.FloatRange(0, 100),
    help="A node fuller than this (percent) removes the oldest finished jobs' directories "
    "first, before their retention ends (0: no threshold).",
)
@click.option(
    "--code-max-files",
    type=click.IntRange(1),
    help="Most files a shipped code snapshot or project push may hold.",
)
@click.option(
    "--code-max-mib",
    type=click.FloatRange(0),
    help="Most MiB a shipped code snapshot or project push may hold.",
)
@click.option(
    "--webhook-allow-cidr",
    "webhook_allow_cidrs",
    multiple=True,
    help="Internal range webhooks may reach (repeatable; replaces the list).",
)
@click.option("--no-webhook-cidrs", is_flag=True, help="Webhooks may reach public addresses only.")
@click.option(
    "--idle-gpu/--no-idle-gpu",
    "idle_gpu",
    default=None,
    help="Turn the idle-GPU policy on or off.",
)
@click.option(
    "--idle-pct",
    type=click.FloatRange(0, 100, min_open=True),
    help="Idle: GPU utilisation below this %.",
)
@click.option("--idle-window", help="Idle for this long (e.g. 60m) before the warning.")
@click.option("--idle-grace", help="Then this long (e.g. 30m) before the job is stopped.")
@click.option(
    "--idle-action", type=click.Choice(["cancel", "requeue"]), help="What stops an idle job."
)
@click.option(
    "--idle-exempt-user",
    "idle_exempt_users",
    multiple=True,
    help="A user whose jobs the idle-GPU policy leaves alone (repeatable; replaces the list).",
)
@click.option("--no-idle-exempt-users", is_flag=True, help="Nobody is exempt by name.")
@click.option(
    "--default-time-limit",
    help="Time limit of a job that asks for none, e.g. 24h (0: none).",
)
@click.option(
    "--max-time-limit", help="Longest time limit a member's job may ask, e.g. 72h (0: any)."
)
@click.option(
    "--max-gpus-per-job", type=click.IntRange(0, 64), help="GPUs a member's job may ask (0: any)."
)
@click.option(
    "--member-max-priority",
    type=click.IntRange(-1000, 1000),
    help="Highest --priority a member may give (lower is always allowed).",
)
@click.option(
    "--reservation-max-gpus",
    type=click.IntRange(0, 100_000),
    help="GPUs a member may hold reserved at once (0: members may not reserve).",
)
@click.option(
    "--reservation-max-hours",
    type=click.FloatRange(0, 365 * 24, min_open=True),
    help="Longest reservation a member may make, in hours.",
)
@json_option
@click.pass_context
def settings_set(
    ctx: click.Context,
    image_patterns: tuple[str, ...],
    any_image: bool,
    mount_allow: tuple[str, ...],
    no_mounts: bool,
    import_allow_cidrs: tuple[str, ...],
    no_import_cidrs: bool,
    import_max_gib: float | None,
    job_retention_days: float | None,
    node_disk_high_pct: float | None,
    code_max_files: int | None,
    code_max_mib: float | None,
    webhook_allow_cidrs: tuple[str, ...],
    no_webhook_cidrs: bool,
    idle_gpu: bool | None,
    idle_pct: float | None,
    idle_window: str | None,
    idle_grace: str | None,
    idle_action: str | None,
    idle_exempt_users: tuple[str, ...],
    no_idle_exempt_users: bool,
    default_time_limit: str | None,
    max_time_limit: str | None,
    max_gpus_per_job: int | None,
    member_max_priority: int | None,
    reservation_max_gpus: int | None,
    reservation_max_hours: float | None,
    as_json: bool,
) -> None:
    """Change the lab's policies (admins; audited)."""
    body = api.LabSettingsUpdate(
        image_patterns=[] if any_image else (list(image_patterns) or None),
        mount_allow=[] if no_mounts else (list(mount_allow) or None),
        import_allow_cidrs=[] if no_import_cidrs else (list(import_allow_cidrs) or None),
        import_max_bytes=int(import_max_gib * (1 << 30)) if import_max_gib is not None else None,
        job_retention_days=job_retention_days,
        node_disk_high_pct=node_disk_high_pct,
        code_max_files=code_max_files,
        code_max_bytes=int(code_max_mib * (1 << 20)) if code_max_mib is not None else None,
        webhook_allow_cidrs=[] if no_webhook_cidrs else (list(webhook_allow_cidrs) or None),
        idle_gpu_enabled=idle_gpu,
        idle_gpu_pct=idle_pct,
        idle_gpu_window_s=parse_duration(idle_window) if idle_window else None,
        idle_gpu_grace_s=parse_duration(idle_grace) if idle_grace else None,
        idle_gpu_action="requeue"
        if idle_action == "requeue"
        else "cancel"
        if idle_action
        else None,
        idle_gpu_exempt_users=[] if no_idle_exempt_users else (list(idle_exempt_users) or None),
        default_time_limit_s=_seconds(default_time_limit),
        max_time_limit_s=_seconds(max_time_limit),
        max_gpus_per_job=max_gpus_per_job,
        member_max_priority=member_max_priority,
        reservation_max_gpus=reservation_max_gpus,
        reservation_max_hours=reservation_max_hours,
    )
    with client_from(ctx) as c:
        s = c.settings.update(body)
    if as_json:
        emit_json(s)
    else:
        echo("settings updated")


def _seconds(text: str | None) -> float | None:
    """A time limit flag: a duration, or 0 for none."""
    if text is None:
        return None
    return 0.0 if text.strip() in ("0", "none") else parse_duration(text)
