"""Every struct that crosses a process boundary.

:mod:`mlsm.wire.agent` is the MessagePack protocol between agents and the master;
:mod:`mlsm.wire.api` is the JSON API used by the CLI and the dashboard.
"""
