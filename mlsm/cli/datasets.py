"""``mlsm datasets``, ``mlsm dataset ...`` and ``mlsm transfers``: the catalog and transfers."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import click

from mlsm.cli.common import ago, client_from, human_bytes, json_option, require_role
from mlsm.cli.output import clear_status_line, confirm, echo, emit_json, status_line, table
from mlsm.wire import api

if TYPE_CHECKING:
    from mlsm.client import Client


@click.command()
@click.option("--node", help="Only datasets stored on this node.")
@json_option
@click.pass_context
def datasets(ctx: click.Context, node: str | None, as_json: bool) -> None:
    """List datasets: one line per copy (name, node, size, files, tags)."""
    with client_from(ctx) as c:
        rows = c.datasets.list(node=node)
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
    """Show, import, copy, move and remove datasets; edit their description and tags."""


@dataset.command("show")
@click.argument("name")
@json_option
@click.pass_context
def dataset_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Where each copy lives, its size and files, a sample of its tree, which jobs used it."""
    with client_from(ctx) as c:
        d = c.datasets.get(name)
    if as_json:
        emit_json(d)
        return
    echo(f"dataset   {d.name}")
    echo(f"owner     {d.owner or '-'}")
    echo(f"tags      {', '.join(d.tags) or '-'}")
    if d.description:
        echo(f"about     {d.description}")
    for cp in d.copies:
        echo(
            f"copy      {cp.node} ({cp.node_state}): {cp.path}  {human_bytes(cp.size)}, {cp.files} files, modified {ago(cp.modified)}"
            + (f", {cp.digest}" if cp.digest else "")
        )
        if cp.top:
            echo("          " + "  ".join(cp.top[:10]) + ("  ..." if len(cp.top) > 10 else ""))
    echo(f"used by   {', '.join(f'job {j}' for j in d.used_by) or '-'}")


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
        d = c.datasets.update(name, body)
    if as_json:
        emit_json(d)
    else:
        echo(f"dataset {d.name} updated")


# ---------------------------------------------------------------- changes on nodes (admins)
WAIT_POLL_S = 0.5  # how often --wait asks for progress


def _progress_line(t: api.Transfer) -> str:
    done = human_bytes(t.done_bytes)
    total = f" of {human_bytes(t.total_bytes)}" if t.total_bytes else ""
    rate = f" at {human_bytes(t.rate_bps)}/s" if t.rate_bps else ""
    return f"{t.kind} {t.dataset} -> {t.node}: {t.state}, {done}{total}{rate}  {t.message}".rstrip()


def _follow(c: Client, t: api.Transfer, as_json: bool) -> None:
    """Show live progress (on a terminal) until the transfer ends; exit non-zero unless it
    succeeded. Ctrl-C stops watching, not the transfer."""
    live = sys.stderr.isatty() and not as_json
    try:
        while t.state in ("pending", "running"):
            if live:
                status_line(_progress_line(t)[:200])
            time.sleep(WAIT_POLL_S)
            t = c.transfers.get(t.id)
    except KeyboardInterrupt:
        echo(err=True)  # end the progress line
        echo(
            f"mlsm: stopped watching; transfer {t.id} goes on "
            f"(`mlsm dataset transfers`, `mlsm dataset cancel {t.id}`)",
            err=True,
        )
        sys.exit(130)
    if live:
        clear_status_line()
    if as_json:
        emit_json(t)
    elif t.state == "succeeded":
        echo(_progress_line(t))
    if t.state != "succeeded":
        raise click.ClickException(f"transfer {t.id} {t.state}: {t.message or 'no reason given'}")


def _started(c: Client, t: api.Transfer, wait: bool | None, as_json: bool) -> None:
    if wait is None:
        wait = sys.stdout.isatty()
    if wait:
        _follow(c, t, as_json)
    elif as_json:
        emit_json(t)
    else:
        echo(f"transfer {t.id} started ({t.kind} {t.dataset} -> {t.node}); see `mlsm transfers`")


wait_option = click.option(
    "--wait/--no-wait",
    default=None,
    help="Show progress until it ends (default: on a terminal).",
)


@dataset.command("import")
@click.argument("url", required=False, default="")
@click.option("--node", required=True, help="Node whose dataset root receives it.")
@click.option("--name", required=True, help="Dataset name (one path component).")
@click.option("--sha256", default="", help="Expected sha256 of the downloaded file.")
@click.option("--no-unpack", is_flag=True, help="Keep an archive as one file.")
@click.option(
    "--from-node",
    default=None,
    help="Import from this node's disk instead of a URL (with --path; admins).",
)
@click.option(
    "--path",
    "from_path",
    default="",
    help="Absolute path of the directory (or file) on --from-node; it must be below one "
    "of that node's import roots.",
)
@wait_option
@json_option
@click.pass_context
def dataset_import(
    ctx: click.Context,
    url: str,
    node: str,
    name: str,
    sha256: str,
    no_unpack: bool,
    from_node: str | None,
    from_path: str,
    wait: bool | None,
    as_json: bool,
) -> None:
    """Download URL (http/https) onto NODE as dataset NAME, or bring a directory of
    another node (--from-node NODE --path DIR: direct between the two when they reach
    each other, else relayed by the master; verified file by file) (admins)."""
    body = api.DatasetImport(
        url=url,
        node=node,
        name=name,
        sha256=sha256.removeprefix("sha256:"),
        unpack=not no_unpack,
        from_node=from_node,
        path=from_path,
    )
    with client_from(ctx) as c:
        t = c.datasets.start_import(body)
        _started(c, t, wait, as_json)


def _transfer(
    ctx: click.Context, name: str, src: str, dst: str, move: bool, wait: bool | None, as_json: bool
) -> None:
    body = api.DatasetTransfer(name=name, src=src, dst=dst, move=move)
    with client_from(ctx) as c:
        t = c.datasets.start_transfer(body)
        _started(c, t, wait, as_json)


@dataset.command("copy")
@click.argument("name")
@click.option("--from", "src", required=True, help="Node that holds the dataset.")
@click.option("--to", "dst", required=True, help="Node that receives a copy.")
@wait_option
@json_option
@click.pass_context
def dataset_copy(
    ctx: click.Context, name: str, src: str, dst: str, wait: bool | None, as_json: bool
) -> None:
    """Copy a dataset to another node, verified file by file (admins)."""
    _transfer(ctx, name, src, dst, False, wait, as_json)


@dataset.command("move")
@click.argument("name")
@click.option("--from", "src", required=True, help="Node that holds the dataset.")
@click.option("--to", "dst", required=True, help="Node that receives it.")
@wait_option
@json_option
@click.pass_context
def dataset_move(
    ctx: click.Context, name: str, src: str, dst: str, wait: bool | None, as_json: bool
) -> None:
    """Move a dataset: copy, verify file by file, then delete the source (admins)."""
    _transfer(ctx, name, src, dst, True, wait, as_json)


@dataset.command("rm")
@click.argument("name")
@click.option("--node", required=True, help="Node whose copy is removed.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@wait_option
@json_option
@click.pass_context
def dataset_rm(
    ctx: click.Context, name: str, node: str, yes: bool, wait: bool | None, as_json: bool
) -> None:
    """Delete the copy of NAME on NODE from its disk (admins; audited)."""
    with client_from(ctx) as c:
        if not yes:
            require_role(c, "admin", "deleting a dataset")
            if not sys.stdin.isatty():
                raise click.ClickException("deleting needs confirmation: add --yes")
            confirm(f"Delete dataset {name} from the disk of {node}?")
        t = c.datasets.delete(name, node=node)
        _started(c, t, True if wait is None else wait, as_json)


@dataset.command("digest")
@click.argument("name")
@click.option("--node", required=True, help="Node whose copy is hashed.")
@wait_option
@json_option
@click.pass_context
def dataset_digest(
    ctx: click.Context, name: str, node: str, wait: bool | None, as_json: bool
) -> None:
    """Compute the content digest of a copy (sha256 over every file; admins)."""
    with client_from(ctx) as c:
        t = c.datasets.digest(name, node=node)
        _started(c, t, True if wait is None else wait, as_json)


def _transfer_rows(rows: list[api.Transfer]) -> None:
    table(
        [
            (
                t.id,
                t.kind,
                t.dataset,
                t.node,
                t.state,
                human_bytes(t.done_bytes),
                human_bytes(t.total_bytes) if t.total_bytes else "-",
                f"{human_bytes(t.rate_bps)}/s" if t.rate_bps else "-",
                ago(t.created_at),
                t.message[:60],
            )
            for t in rows
        ],
        ["ID", "KIND", "DATASET", "NODE", "STATE", "DONE", "TOTAL", "RATE", "CREATED", "MESSAGE"],
    )


@click.command()
@click.option("--active", is_flag=True, help="Only transfers still running.")
@json_option
@click.pass_context
def transfers(ctx: click.Context, active: bool, as_json: bool) -> None:
    """List dataset imports, copies, moves and deletes, newest first."""
    with client_from(ctx) as c:
        rows = c.transfers.list()
    if active:
        rows = [t for t in rows if t.state in ("pending", "running")]
    if as_json:
        emit_json(rows)
    else:
        _transfer_rows(rows)


@dataset.command("transfers")
@click.option("--active", is_flag=True, help="Only transfers still running.")
@json_option
@click.pass_context
def dataset_transfers(ctx: click.Context, active: bool, as_json: bool) -> None:
    """List dataset imports, copies, moves, deletes and digests, newest first."""
    ctx.invoke(transfers, active=active, as_json=as_json)


@dataset.command("cancel")
@click.argument("transfer_id", type=int)
@json_option
@click.pass_context
def dataset_cancel(ctx: click.Context, transfer_id: int, as_json: bool) -> None:
    """Cancel an import, copy or move; nothing half-made stays behind (admins)."""
    with client_from(ctx) as c:
        t = c.transfers.cancel(transfer_id)
    if as_json:
        emit_json(t)
    else:
        echo(f"transfer {t.id}: {t.state} {t.message}".rstrip())
