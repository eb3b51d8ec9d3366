"""``mlsm projects`` and ``mlsm project push|copy|rm``: named working trees kept on nodes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from mlsm.cli.common import ago, client_from, human_bytes, json_option
from mlsm.cli.output import echo, emit_json, table
from mlsm.errors import MlsmError, TransferFailed

if TYPE_CHECKING:
    from mlsm.client import Client
    from mlsm.wire.code import Project

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
    """Push, copy or remove a project: a named working tree of yours kept on a node.

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
        if not no_wait:
            p = _wait_synced(c, p, everyone=False)
    _done(p, as_json)


def _wait_synced(c: Client, p: Project, *, everyone: bool) -> Project:
    """Poll until the node has project ``p`` (or says why not)."""
    deadline = time.monotonic() + SYNC_DEADLINE_S
    while p.state == "syncing" and time.monotonic() < deadline:
        time.sleep(SYNC_POLL_S)
        found = [
            x
            for x in c.projects.list(all=everyone)
            if x.name == p.name and x.node == p.node and x.user == p.user
        ]
        if not found:
            raise MlsmError(f"project {p.name} on {p.node} went away while it was synced")
        p = found[0]
    return p


def _done(p: Project, as_json: bool) -> None:
    if p.state == "failed":
        raise TransferFailed(f"node {p.node} could not sync project {p.name}: {p.message}")
    if as_json:
        emit_json(p)
    else:
        echo(f"project {p.name} on {p.node}: {p.state} ({p.files} files, {human_bytes(p.bytes)})")


@project.command("copy")
@click.argument("name")
@click.option("--from", "source", required=True, help="The node that holds the project.")
@click.option("--to", "target", required=True, help="The node to copy it to.")
@click.option("--user", default=None, help="Whose project (default: yours).")
@click.option("--no-wait", is_flag=True, help="Return once asked, before the target has it.")
@json_option
@click.pass_context
def project_copy(
    ctx: click.Context,
    name: str,
    source: str,
    target: str,
    user: str | None,
    no_wait: bool,
    as_json: bool,
) -> None:
    """Copy project NAME from one node to another (admins; audited).

    The target node pulls the source's tree through the master and changes only the
    files that differ; files on the target the source does not have stay.
    """
    from mlsm.wire.code import ProjectCopy

    with client_from(ctx) as c:
        owner = user or c.me().username
        p = c.projects.copy(ProjectCopy(name=name, user=owner, source=source, target=target))
        if not no_wait:
            p = _wait_synced(c, p, everyone=True)
    _done(p, as_json)


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
