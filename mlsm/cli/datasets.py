from __future__ import annotations

import click

from mlsm.cli.common import ago, client_from, emit_json, human_bytes, json_option, table
from mlsm.wire import api


@click.command()
@click.option("--node", help="Only datasets stored on this node.")
@json_option
@click.pass_context
def datasets(ctx: click.Context, node: str | None, as_json: bool) -> None:
    """List datasets: one line per copy (name, node, size, files, tags)."""
    with client_from(ctx) as c:
        rows = c.call("GET", "/api/v1/datasets", params={"node": node}, type=list[api.Dataset])
    if as_json:
        emit_json(rows)
        return
    table(
        [
            (
                d.name,
                cp.node,
                cp.node_state,
                human_bytes(cp.size),
                cp.files,
                ago(cp.modified),
                ",".join(d.tags) or "-",
                d.owner or "-",
            )
            for d in rows
            for cp in d.copies
        ],
        ["DATASET", "NODE", "NODE STATE", "SIZE", "FILES", "MODIFIED", "TAGS", "OWNER"],
    )


@click.group()
def dataset() -> None:
    """Show datasets and edit their description and tags."""


@dataset.command("show")
@click.argument("name")
@json_option
@click.pass_context
def dataset_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Where each copy lives, its size and files, a sample of its tree, which jobs used it."""
    with client_from(ctx) as c:
        d = c.call("GET", f"/api/v1/datasets/{name}", type=api.Dataset)
    if as_json:
        emit_json(d)
        return
    click.echo(f"dataset   {d.name}")
    click.echo(f"owner     {d.owner or '-'}")
    click.echo(f"tags      {', '.join(d.tags) or '-'}")
    if d.description:
        click.echo(f"about     {d.description}")
    for cp in d.copies:
        click.echo(
            f"copy      {cp.node} ({cp.node_state}): {cp.path}  {human_bytes(cp.size)}, {cp.files} files, modified {ago(cp.modified)}"
            + (f", {cp.digest}" if cp.digest else "")
        )
        if cp.top:
            click.echo(
                "          " + "  ".join(cp.top[:10]) + ("  ..." if len(cp.top) > 10 else "")
            )
    click.echo(f"used by   {', '.join(f'job {j}' for j in d.used_by) or '-'}")


@dataset.command("set")
@click.argument("name")
@click.option("--description", help="A description.")
@click.option("--tag", "tags", multiple=True, help="Tag (repeatable; replaces the tags).")
@click.option("--owner", help="Owner (admins).")
@json_option
@click.pass_context
def dataset_set(
    ctx: click.Context,
    name: str,
    description: str | None,
    tags: tuple[str, ...],
    owner: str | None,
    as_json: bool,
) -> None:
    """Edit a dataset's description, tags or owner (owners and admins)."""
    body = api.DatasetUpdate(
        description=description, tags=list(tags) if tags else None, owner=owner
    )
    with client_from(ctx) as c:
        d = c.call("PATCH", f"/api/v1/datasets/{name}", json=body, type=api.Dataset)
    if as_json:
        emit_json(d)
    else:
        click.echo(f"dataset {d.name} updated")
