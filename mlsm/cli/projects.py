"""``mlsm projects`` and ``mlsm project push|rm``: named working trees kept on nodes."""

from __future__ import annotations

import time

import click

from mlsm.cli.common import ago, client_from, human_bytes, json_option
from mlsm.cli.output import echo, emit_json, table
from mlsm.errors import MlsmError, TransferFailed

SYNC_POLL_S = 0.2  # how often `project push` looks whether the node is done
SYNC_DEADLINE_S = 3600.0  # how long `project push` waits for the node by default


@click.command()
@click.option("--all", "everyone", is_flag=True, help="Everyone's projects (admins).")
@json_option
@click.pass_context
def projects(ctx: click.Context, everyone: bool, as_json: bool) -> None:
    """List your projects: name, node, size, owner, state (admins: --all for everyone's)."""
    with client_from(ctx) as c:
        rows = c.projects.list(all=everyone)
    if as_json:
        emit_json(rows)
        return
    table(
        [
            (p.name, p.user, p.node, p.files, human_bytes(p.bytes), p.state, ago(p.updated_at))
            for p in rows
        ],
        ["NAME", "OWNER", "NODE", "FILES", "SIZE", "STATE", "UPDATED"],
    )


@click.group()
def project() -> None:
    """Push or remove a project: a named working tree of yours kept on one node.

    Jobs submitted with --project NAME run in it, on a node that holds it."""


@project.command("push")
@click.argument("name")
@click.argument("directory", default=".", type=click.Path(file_okay=False, exists=True))
@click.option("--node", required=True, help="The node that keeps the project.")
@click.option("--code-include-git", is_flag=True, help="Send the .git directory too.")
@click.option("--no-wait", is_flag=True, help="Return once sent, before the node has it.")
@json_option
@click.pass_context
def project_push(
    ctx: click.Context,
    name: str,
    directory: str,
    node: str,
    code_include_git: bool,
    no_wait: bool,
    as_json: bool,
) -> None:
    """Bring project NAME on a node up to DIRECTORY (default: the current directory).

    Only files the master lacks are sent, and the node changes only the files that
    differ (files deleted here stay there). .gitignore and .mlsmignore are honoured.
    """
    from mlsm.cli.codeship import ship
    from mlsm.wire.code import ProjectPush

    with client_from(ctx) as c:
        shipped = ship(c, directory, include_git=code_include_git)
        if not as_json:
            echo(shipped.summary(), err=True)
        p = c.projects.push(ProjectPush(name=name, node=node, digest=shipped.digest))
        deadline = time.monotonic() + SYNC_DEADLINE_S
        while not no_wait and p.state == "syncing" and time.monotonic() < deadline:
            time.sleep(SYNC_POLL_S)
            found = [x for x in c.projects.list() if x.name == name and x.node == node]
            if not found:
                raise MlsmError(f"project {name} on {node} went away while it was synced")
            p = found[0]
    if p.state == "failed":
        raise TransferFailed(f"node {node} could not sync project {name}: {p.message}")
    if as_json:
        emit_json(p)
    else:
        echo(f"project {name} on {node}: {p.state} ({p.files} files, {human_bytes(p.bytes)})")


@project.command("rm")
@click.argument("name")
@click.option("--node", required=True, help="The node to remove it from.")
@click.option("--user", default=None, help="Another user's project (admins).")
@click.pass_context
def project_rm(ctx: click.Context, name: str, node: str, user: str | None) -> None:
    """Remove project NAME's tree from a node (audited)."""
    with client_from(ctx) as c:
        c.projects.remove(name, node=node, user=user)
    echo(f"removing project {name} from {node}")
