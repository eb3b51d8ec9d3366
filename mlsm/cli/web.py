"""``mlsm web``: serve the dashboard to browsers (:mod:`tui.web`)."""

from __future__ import annotations

import click

from mlsm.cli.common import settings_from
from mlsm.client import check_url, verify_from
from mlsm.errors import ConfigError


@click.command("web")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8050, show_default=True)
@click.option("--public-url", default=None, help="The URL browsers use (behind a proxy).")
@click.option("--tls-cert", default="", help="Serve HTTPS with this certificate ...")
@click.option("--tls-key", default="", help="... and this key.")
@click.pass_context
def web(
    ctx: click.Context, host: str, port: int, public_url: str | None, tls_cert: str, tls_key: str
) -> None:
    """Serve the dashboard in a browser, behind the master's login and roles.

    People log in with their mlsm user and password (checked by the master); each browser
    tab runs the dashboard as that user. Serve it over HTTPS (--tls-cert/--tls-key, or a
    proxy that terminates TLS) anywhere but on loopback."""
    from tui.web import WebDashboard

    s = settings_from(ctx)
    if not s.url:
        raise ConfigError("mlsm web needs a master: run `mlsm login URL` or set MLSM_URL")
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    url = check_url(s.url, allow_plain_http=s.allow_plain_http)
    WebDashboard(
        url,
        verify=verify_from(s),
        allow_plain_http=s.allow_plain_http,
        host=host,
        port=port,
        public_url=public_url,
        tls_cert=tls_cert,
        tls_key=tls_key,
    ).run()
