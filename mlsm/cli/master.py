"""``mlsm master``: run the master (the first start can create the first superadmin)."""

from __future__ import annotations

import click

from mlsm.cli.common import read_password, settings_from
from mlsm.cli.output import echo


@click.command()
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default 8765).")
@click.option("--data-dir", help="Where the master keeps its database and logs.")
@click.option("--database-url", help="sqlite+aiosqlite:///PATH or postgresql+asyncpg://...")
@click.option("--tls-cert", help="Serve HTTPS with this certificate (PEM).")
@click.option("--tls-key", help="Private key of --tls-cert (PEM).")
@click.option(
    "--tls-self-signed",
    is_flag=True,
    help="Serve HTTPS with a self-signed certificate kept in the data dir.",
)
@click.option(
    "--init-admin",
    metavar="NAME",
    help="Create this superadmin if there are no users (password: prompt or MLSM_PASSWORD).",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "text"]),
    help="Log lines as JSON or text (default auto: text on a terminal, else JSON).",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    metavar="ADDR|CIDR",
    help="A reverse proxy whose X-Forwarded-For names the client (repeatable; default none).",
)
@click.option(
    "--print-fingerprint",
    is_flag=True,
    help="Print the SHA-256 fingerprint of the master's certificate (for `mlsm login "
    "--fingerprint`) and exit.",
)
@click.pass_context
def master(
    ctx: click.Context,
    /,
    init_admin: str | None,
    tls_self_signed: bool,
    trusted_proxies: tuple[str, ...],
    print_fingerprint: bool,
    **flags: object,
) -> None:
    """Run the master server (foreground; use the systemd unit for a service)."""
    from mlsm.master.server import run_master

    settings = settings_from(ctx, trusted_proxies=list(trusted_proxies), **flags)
    if print_fingerprint:
        from mlsm.tls import SELF_SIGNED_CERT

        _print_fingerprint(settings.tls_cert or str(settings.data_path / SELF_SIGNED_CERT))
        return
    if tls_self_signed and not settings.tls_cert:
        import socket

        import msgspec

        from mlsm.tls import ensure_self_signed

        hosts = [socket.getfqdn(), socket.gethostname(), "localhost", "127.0.0.1"]
        if settings.host not in ("0.0.0.0", "::", ""):
            hosts.insert(0, settings.host)
        cert, key = ensure_self_signed(
            settings.data_path, list(dict.fromkeys(h for h in hosts if h))
        )
        settings = msgspec.structs.replace(settings, tls_cert=str(cert), tls_key=str(key))
    password = None
    if init_admin:
        import asyncio

        from mlsm.master.server import has_users

        if asyncio.run(has_users(settings)):
            init_admin = None  # users exist: nothing to create, no password to ask for
    if init_admin:
        import msgspec

        from mlsm.wire.api import UserCreate

        password = read_password(f"Password for {init_admin}", confirm=True)
        try:
            msgspec.convert({"username": init_admin, "password": password}, UserCreate)
        except msgspec.ValidationError as exc:
            from mlsm.wire.explain import validation_error

            raise validation_error(exc) from None
    run_master(settings, init_admin=init_admin, password=password)


def _print_fingerprint(cert: str) -> None:
    """What people pin with `mlsm login --fingerprint`, read from the certificate file."""
    from mlsm.errors import ConfigError
    from mlsm.tls import fingerprint_of_file

    try:
        fingerprint = fingerprint_of_file(cert)
    except (OSError, ValueError):
        raise ConfigError(
            f"no certificate at {cert}: the master serves plain HTTP, or give --tls-cert "
            "(or --data-dir of a master started with --tls-self-signed)"
        ) from None
    echo(f"sha256:{fingerprint}")
