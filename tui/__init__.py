"""The mlsm terminal dashboard (Textual).

Public: :func:`run_dashboard`, and :class:`~tui.app.MlsmApp` with the
:class:`~tui.source.DataSource` interface for embedding and tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl


def run_dashboard(
    url: str,
    token: str,
    *,
    readonly: bool = False,
    verify: ssl.SSLContext | bool = True,
    allow_plain_http: bool = False,
    light: bool = False,
) -> None:
    """Open the dashboard against the master at ``url`` (blocks until the user quits).

    A master that is down shows as "unreachable" and is retried; a missing or expired
    ``token`` brings up a login dialog. ``verify`` and ``allow_plain_http`` are the
    client's (:class:`mlsm.client.AsyncClient`).
    """
    from tui.app import MlsmApp
    from tui.source import MasterSource

    source = MasterSource(url, token, verify=verify, allow_plain_http=allow_plain_http)
    MlsmApp(source, readonly=readonly, light=light).run()


__all__ = ["run_dashboard"]
