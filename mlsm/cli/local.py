"""``mlsm up``, ``down``, ``status`` and ``ui``: the embedded one-machine lab and the dashboard."""

from __future__ import annotations

import sys

import click

from mlsm.cli.common import json_option, settings_from
from mlsm.cli.output import echo, emit_json


@click.command()
@click.option(
    "--simulate-gpus",
    default=None,
    metavar="SPEC",
    help="Give the local agent simulated GPUs (demos), e.g. 2xA100-80GB; 'none' for real "
    "GPUs. Remembered: a later plain `mlsm up` keeps it; a change restarts the agent.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port of the local master (default 8765, or the one it had; a busy one is an error).",
)
@click.pass_context
def up(ctx: click.Context, simulate_gpus: str | None, port: int | None) -> None:
    """Start the embedded local service (master with SQLite + a local agent) in the background."""
    from mlsm.local import up as start

    if simulate_gpus and simulate_gpus.strip().lower() != "none":
        from agent.collectors.simulated import parse_spec

        try:
            parse_spec(simulate_gpus)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--simulate-gpus") from None
    start(settings_from(ctx), simulate_gpus=simulate_gpus, port=port)


@click.command()
@click.pass_context
def down(ctx: click.Context) -> None:
    """Stop the embedded local service; running jobs go on and are re-adopted by `mlsm up`."""
    from mlsm.local import down as stop

    done = stop(settings_from(ctx))
    if done.stopped:
        echo(
            "stopped " + " and ".join(done.stopped) + "; running jobs keep running, "
            "and the next `mlsm up` re-adopts them"
        )
    else:
        echo("mlsm is not running")
    if done.restored_url:
        echo(f"the CLI talks to {done.restored_url} again (the login `mlsm up` kept aside)")


@click.command()
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show whether the embedded local service runs, and where you are logged in."""
    from mlsm.local import status as st

    s = settings_from(ctx)
    info = st(s)
    info["login_url"] = s.url
    if as_json:
        emit_json(info)
    else:
        if info["master_pid"]:
            echo(
                f"local service: running at {info['url']} (master pid {info['master_pid']}, agent pid {info['agent_pid'] or '-'})"
                f"{'' if info['healthy'] else ' - NOT ANSWERING'}"
            )
        else:
            echo("local service: not running (start it with `mlsm up`)")
        if info["simulate_gpus"]:
            echo(f"local agent:   simulated GPUs {info['simulate_gpus']}")
        echo(f"data dir:      {info['data_dir']}")
        echo(f"logged in to:  {s.url or '-'}")
    if info["master_pid"] and not info["healthy"]:
        sys.exit(1)


@click.command()
@click.option("--readonly", is_flag=True, help="Hide every action: look, do not touch.")
@click.pass_context
def ui(ctx: click.Context, readonly: bool) -> None:
    """Open the dashboard."""
    _open(ctx, readonly=readonly, start_local=False)


def open_default(ctx: click.Context) -> None:
    """`mlsm` with no command: start the local service when nothing is configured, then the dashboard."""
    _open(ctx, readonly=False, start_local=True)


def _open(ctx: click.Context, *, readonly: bool, start_local: bool) -> None:
    from mlsm.client import check_url, verify_from
    from mlsm.errors import ConfigError
    from mlsm.local import local_url, not_running_hint, recorded_url, up

    s = settings_from(ctx)
    url = s.url
    if not url or url.rstrip("/") == recorded_url(s):  # nothing else, or the local service
        running = local_url(s)
        if not running and start_local:  # a first run, or after `mlsm down` or a reboot
            running = up(s, quiet=False)
            s = settings_from(ctx)
        if not running:
            raise ConfigError(
                not_running_hint(s, url)
                or "no master configured: run `mlsm login URL` or `mlsm up`"
            )
        url = running
    url = check_url(url, allow_plain_http=s.allow_plain_http)
    from tui import run_dashboard

    run_dashboard(
        url,
        s.token,
        readonly=readonly,
        verify=verify_from(s) if url.startswith("https") else True,
        allow_plain_http=s.allow_plain_http,
    )
