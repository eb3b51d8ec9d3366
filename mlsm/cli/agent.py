"""``mlsm agent``: join this server to a master and run its agent (or print a systemd unit)."""

from __future__ import annotations

import click

from mlsm.cli.common import settings_from
from mlsm.cli.output import echo


def _labels(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise click.BadParameter(f"{item!r} is not key=value", param_hint="--label")
        out[k] = v
    return out


@click.command()
@click.option("--master", help="URL of the master (MLSM_MASTER).")
@click.option(
    "--join-token", help="One-time join token from `mlsm join-token create` (first start only)."
)
@click.option("--name", "node_name", help="Node name (default: the host name).")
@click.option(
    "--data-dir",
    "agent_data_dir",
    help="Agent state, job outputs and logs (default <data dir>/agent).",
)
@click.option(
    "--dataset-root",
    "dataset_roots",
    multiple=True,
    help="A directory whose entries are datasets (repeatable).",
)
@click.option(
    "--import-root",
    "import_roots",
    multiple=True,
    help="A directory below which admins may import datasets to other nodes "
    "(mlsm dataset import --from-node; repeatable; none: no imports from this node's disk).",
)
@click.option("--label", "labels", multiple=True, help="k=v label of this node (repeatable).")
@click.option("--simulate-gpus", help="Simulated GPUs for tests and demos, e.g. 2xA100-80GB.")
@click.option(
    "--default-unix-user",
    help="Run jobs of users with no Unix mapping as this account (agent as root).",
)
@click.option(
    "--single-user",
    is_flag=True,
    default=None,
    help="Run every job as the agent's own account, even as root (a one-person machine).",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "text"]),
    help="Log lines as JSON or text (default auto: text on a terminal, else JSON).",
)
@click.option(
    "--print-systemd-unit",
    is_flag=True,
    help="Print a systemd unit for this agent with these settings and exit.",
)
@click.pass_context
def agent(
    ctx: click.Context,
    /,
    labels: tuple[str, ...],
    dataset_roots: tuple[str, ...],
    import_roots: tuple[str, ...],
    print_systemd_unit: bool,
    **flags: object,
) -> None:
    """Run the agent on this server (foreground; use the systemd unit for a service)."""
    import asyncio
    import os
    from pathlib import Path

    from mlsm.errors import ConfigError

    overrides: dict[str, object] = dict(flags)
    if labels:
        overrides["labels"] = _labels(labels)
    if dataset_roots:
        overrides["dataset_roots"] = [str(Path(p).resolve()) for p in dataset_roots]
    if import_roots:
        overrides["import_roots"] = [str(Path(p).resolve()) for p in import_roots]
    s = settings_from(ctx, **overrides)
    if print_systemd_unit:
        from mlsm.packaging import agent_unit

        echo(agent_unit(s), lines=True)
        return
    if not s.master:
        raise ConfigError("the agent needs --master URL (or MLSM_MASTER)")
    from mlsm.client import check_url

    check_url(s.master, allow_plain_http=s.allow_plain_http)
    from agent.main import Agent, AgentConfig
    from mlsm.logs import setup_logging

    setup_logging(s.log_level, s.log_format)
    data = s.agent_data_path
    from agent.runtimes.accounts import data_dir_mode

    data.mkdir(parents=True, exist_ok=True, mode=data_dir_mode(os.geteuid() == 0, s.single_user))
    verify: object = True
    fp_file = data / "master-fingerprint"
    token = s.join_token
    if token and "@" in token:
        from agent.link import write_secret
        from mlsm.tls import normalise_fingerprint

        write_secret(fp_file, normalise_fingerprint(token.split("@", 1)[1]))
    if fp_file.exists() and not s.master.startswith("https://"):
        raise ConfigError(
            f"this agent is pinned to the master's certificate ({fp_file}), but --master "
            f"{s.master} is not https: use the https:// URL (the node secret never crosses "
            "plain HTTP once a certificate is pinned)"
        )
    if fp_file.exists():
        verify = _pinned_with_retry(fp_file.read_text().strip(), s.master)
    elif s.ca_file:
        from mlsm.client import ssl_context

        verify = ssl_context(s.ca_file)
    cfg = AgentConfig(
        master=s.master,
        data_dir=data,
        name=s.node_name,
        join_token=token,
        labels=s.labels,
        dataset_roots=[Path(p) for p in s.dataset_roots],
        import_roots=[Path(p) for p in s.import_roots],
        simulate_gpus=s.simulate_gpus,
        verify=verify,
        heartbeat_interval=s.heartbeat_interval,
        default_unix_user=s.default_unix_user,
        single_user=s.single_user,
        code_cache_bytes=s.code_cache_bytes,
        bulk_direct=s.bulk_direct,
    )
    os.umask(0o022)
    asyncio.run(Agent(cfg).run())


PIN_RETRY_MAX_S = 30.0


def _pinned_with_retry(fingerprint: str, url: str) -> object:
    """The pinned TLS context; while the master is unreachable, wait for it (backoff), as the
    agent does for every other call. A different certificate is refused at once."""
    import logging
    import time

    from mlsm.errors import UnavailableError
    from mlsm.tls import pinned_context

    wait = 0.5
    while True:
        try:
            return pinned_context(fingerprint, url)
        except UnavailableError as exc:
            logging.getLogger("mlsm.agent").warning("%s; retrying in %.0f s", exc.message, wait)
            time.sleep(wait)  # nothing else to do before the first contact
            wait = min(PIN_RETRY_MAX_S, wait * 2)
