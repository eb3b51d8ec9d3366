"""The mlsm terminal dashboard (Textual).

Public: :func:`run_dashboard`, and :class:`~tui.app.MlsmApp` with the
:class:`~tui.source.DataSource` interface for embedding and tests.
"""

from __future__ import annotations


def run_dashboard(
    url: str, token: str, *, readonly: bool = False, verify: bool = True, light: bool = False
) -> None:
    """Open the dashboard against the master at ``url`` (blocks until the user quits).

    A master that is down shows as "unreachable" and is retried; a missing or expired
    ``token`` brings up a login dialog.
    """
    from tui.app import MlsmApp
    from tui.source import MasterSource

    MlsmApp(MasterSource(url, token, verify=verify), readonly=readonly, light=light).run()


__all__ = ["run_dashboard"]
