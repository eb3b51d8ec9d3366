"""``mlsm login``, ``logout``, ``passwd`` and ``whoami``: the saved session and who it is."""

from __future__ import annotations

import click

from mlsm.cli.common import client_from, json_option, read_password, settings_from
from mlsm.cli.output import echo, emit_json, prompt_secret
from mlsm.client import Client, check_url, ssl_context


@click.command()
@click.argument("url")
@click.option("--user", "-u", "username", help="User name (default: your Unix user name).")
@click.option("--ca-file", help="CA bundle that signed the master's certificate.")
@click.option("--fingerprint", help="Pin the master certificate's SHA-256 fingerprint.")
@click.pass_context
def login(
    ctx: click.Context, url: str, username: str | None, ca_file: str | None, fingerprint: str | None
) -> None:
    """Log in to the master at URL; the session token is kept 0600 in your config."""
    import getpass

    from mlsm.config import save_credentials

    s = settings_from(ctx)
    url = check_url(url, allow_plain_http=s.allow_plain_http)
    username = username or getpass.getuser()
    password = read_password(f"Password for {username}@{url}")
    verify = ssl_context(ca_file or "")
    if fingerprint:
        from mlsm.tls import normalise_fingerprint, pinned_context

        fingerprint = normalise_fingerprint(fingerprint)
        verify = pinned_context(fingerprint, url)
    with Client(url, verify=verify, allow_plain_http=s.allow_plain_http) as c:
        reply = c.auth.login(username, password)
    path = save_credentials(url, reply.token, ca_file=ca_file or "", fingerprint=fingerprint or "")
    echo(f"logged in to {url} as {reply.username} ({reply.role}); token kept in {path}")


@click.command()
@click.pass_context
def logout(ctx: click.Context) -> None:
    """Revoke this session on the master and forget the stored token."""
    from mlsm.config import clear_credentials
    from mlsm.errors import MlsmError

    try:
        with client_from(ctx) as c:
            c.auth.logout()
    except MlsmError as exc:
        echo(f"mlsm: note: {exc.message}", err=True)
    clear_credentials()
    echo("logged out")


@click.command()
@click.option(
    "--revoke-tokens", is_flag=True, help="End your API tokens too (after a suspected leak)."
)
@click.pass_context
def passwd(ctx: click.Context, revoke_tokens: bool) -> None:
    """Change your own password; your other sessions end.

    The current password comes from the prompt or MLSM_PASSWORD, the new one from the
    prompt or MLSM_NEW_PASSWORD. API tokens keep working unless --revoke-tokens.
    """
    import os

    from mlsm.wire import api

    current = read_password("Current password")
    new = os.environ.get("MLSM_NEW_PASSWORD") or ""
    if not new:
        import sys

        from mlsm.errors import ConfigError

        if not sys.stdin.isatty():
            raise ConfigError("no new password given: set MLSM_NEW_PASSWORD or run from a terminal")
        new = prompt_secret("New password", confirm=True)
    body = api.PasswordChange(
        current_password=current, new_password=new, revoke_api_tokens=revoke_tokens
    )
    with client_from(ctx) as c:
        res = c.auth.change_password(body)
    what = "other sessions and API tokens" if revoke_tokens else "other sessions"
    echo(f"password changed; {res.revoked} token(s) ended ({what})")


@click.command()
@json_option
@click.pass_context
def whoami(ctx: click.Context, as_json: bool) -> None:
    """Show who you are on which master."""
    with client_from(ctx) as c:
        me = c.auth.me()
        if as_json:
            emit_json(me)
        else:
            echo(f"{me.username} ({me.role}) at {c.url}")
