"""``mlsm users``, ``mlsm user ...`` and ``mlsm token ...``: accounts and API tokens."""

from __future__ import annotations

from typing import cast

import click

from mlsm.cli.common import (
    ago,
    client_from,
    json_option,
    parse_duration,
    read_password,
    require_role,
    when,
)
from mlsm.cli.output import echo, emit_json, table
from mlsm.wire import api


@click.command()
@json_option
@click.pass_context
def users(ctx: click.Context, as_json: bool) -> None:
    """List users (admins)."""
    with client_from(ctx) as c:
        rows = c.users.list()
    if as_json:
        emit_json(rows)
        return
    table(
        [
            (
                u.username,
                u.role,
                "disabled" if u.disabled else "active",
                u.unix_user or "-",
                "-" if u.gpu_cap is None else u.gpu_cap,
                ago(u.last_login),
            )
            for u in rows
        ],
        ["USER", "ROLE", "STATE", "UNIX USER", "GPU CAP", "LAST LOGIN"],
    )


@click.group()
def user() -> None:
    """Add, change and disable users."""


def _patch(ctx: click.Context, name: str, body: api.UserUpdate, as_json: bool, done: str) -> None:
    with client_from(ctx) as c:
        u = c.users.update(name, body)
    if as_json:
        emit_json(u)
    else:
        echo(done.format(u=u))


@user.command("add")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["member", "admin", "superadmin"]),
    default="member",
    show_default=True,
)
@click.option("--unix-user", default="", help="Unix account the user's jobs run as on nodes.")
@json_option
@click.pass_context
def user_add(ctx: click.Context, name: str, role: str, unix_user: str, as_json: bool) -> None:
    """Add a user (password: prompt or MLSM_PASSWORD)."""
    with client_from(ctx) as c:
        require_role(c, "admin", "adding users")
        password = read_password(f"Password for {name}", confirm=True)
        u = c.users.create(
            api.UserCreate(
                username=name, password=password, role=cast(api.Role, role), unix_user=unix_user
            )
        )
    if as_json:
        emit_json(u)
    else:
        echo(f"user {u.username} added ({u.role})")


@user.command("show")
@click.argument("name")
@json_option
@click.pass_context
def user_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show one user."""
    with client_from(ctx) as c:
        u = c.users.get(name)
    if as_json:
        emit_json(u)
        return
    for k, v in (
        ("user", u.username),
        ("role", u.role),
        ("state", "disabled" if u.disabled else "active"),
        ("unix user", u.unix_user or "-"),
        ("gpu cap", "-" if u.gpu_cap is None else u.gpu_cap),
        ("created", when(u.created_at)),
        ("last login", when(u.last_login)),
    ):
        echo(f"{k:<11} {v}")


@user.command("set-role")
@click.argument("name")
@click.argument("role", type=click.Choice(["member", "admin", "superadmin"]))
@json_option
@click.pass_context
def user_set_role(ctx: click.Context, name: str, role: str, as_json: bool) -> None:
    """Change a user's role (admins: superadmin only)."""
    body = api.UserUpdate(role=cast(api.Role, role))
    _patch(ctx, name, body, as_json, "user {u.username} is now {u.role}")


@user.command("disable")
@click.argument("name")
@json_option
@click.pass_context
def user_disable(ctx: click.Context, name: str, as_json: bool) -> None:
    """Disable a user: their sessions end and their API tokens stop working at once."""
    _patch(ctx, name, api.UserUpdate(disabled=True), as_json, "user {u.username} disabled")


@user.command("enable")
@click.argument("name")
@json_option
@click.pass_context
def user_enable(ctx: click.Context, name: str, as_json: bool) -> None:
    """Enable a disabled user."""
    _patch(ctx, name, api.UserUpdate(disabled=False), as_json, "user {u.username} enabled")


@user.command("passwd")
@click.argument("name")
@click.option(
    "--revoke-tokens",
    is_flag=True,
    help="End the user's API tokens too (their sessions always end).",
)
@click.pass_context
def user_passwd(ctx: click.Context, name: str, revoke_tokens: bool) -> None:
    """Set a user's password (prompt or MLSM_PASSWORD); their sessions end at once."""
    with client_from(ctx) as c:
        require_role(c, "admin", "setting another user's password")
    password = read_password(f"New password for {name}", confirm=True)
    body = api.UserUpdate(password=password, revoke_api_tokens=revoke_tokens)
    ended = "sessions and API tokens" if revoke_tokens else "sessions"
    _patch(ctx, name, body, False, "password of {u.username} changed; their " + ended + " ended")


@user.command("revoke-tokens")
@click.argument("name")
@click.pass_context
def user_revoke_tokens(ctx: click.Context, name: str) -> None:
    """End every session and API token of a user (after a suspected leak)."""
    body = api.UserUpdate(revoke_api_tokens=True)
    _patch(ctx, name, body, False, "sessions and API tokens of {u.username} ended")


@user.command("set")
@click.argument("name")
@click.option("--unix-user", help="Unix account the user's jobs run as on nodes ('' to clear).")
@click.option("--gpu-cap", type=int, help="Most GPUs the user may hold at once.")
@click.option("--no-gpu-cap", is_flag=True, help="Remove the user's GPU cap.")
@json_option
@click.pass_context
def user_set(
    ctx: click.Context,
    name: str,
    unix_user: str | None,
    gpu_cap: int | None,
    no_gpu_cap: bool,
    as_json: bool,
) -> None:
    """Set a user's Unix account or GPU cap."""
    _patch(
        ctx,
        name,
        api.UserUpdate(unix_user=unix_user, gpu_cap=gpu_cap, clear_gpu_cap=no_gpu_cap),
        as_json,
        "user {u.username} updated",
    )


@click.group()
def token() -> None:
    """Create, list and revoke API tokens for scripts."""


@token.command("create")
@click.argument("name")
@click.option("--ttl", help="Lifetime, e.g. 30d, 12h (default: no expiry).")
@json_option
@click.pass_context
def token_create(ctx: click.Context, name: str, ttl: str | None, as_json: bool) -> None:
    """Create an API token; it is shown once."""
    body = api.ApiTokenCreate(name=name, ttl_s=parse_duration(ttl) if ttl else None)
    with client_from(ctx) as c:
        t = c.tokens.create(body)
    if as_json:
        emit_json(t)
        return
    echo(t.token)
    echo(f"token {t.info.id} '{t.info.name}' created; it is shown only this once", err=True)


@token.command("list")
@click.option("--all", "all_users", is_flag=True, help="Every user's tokens (admins).")
@json_option
@click.pass_context
def token_list(ctx: click.Context, all_users: bool, as_json: bool) -> None:
    """List your tokens."""
    with client_from(ctx) as c:
        rows = c.tokens.list(all=all_users)
    if as_json:
        emit_json(rows)
        return
    table(
        [
            (
                t.id,
                t.kind,
                t.name,
                t.username,
                when(t.created_at),
                when(t.expires_at) if t.expires_at else "never",
                ago(t.last_used),
            )
            for t in rows
        ],
        ["ID", "KIND", "NAME", "USER", "CREATED", "EXPIRES", "LAST USED"],
    )


@token.command("revoke")
@click.argument("token_ids", nargs=-1, type=int, required=True)
@click.pass_context
def token_revoke(ctx: click.Context, token_ids: tuple[int, ...]) -> None:
    """Revoke tokens by id."""
    with client_from(ctx) as c:
        for tid in token_ids:
            c.tokens.revoke(tid)
            echo(f"token {tid} revoked")
