"""The master: the Litestar app (:mod:`.app`), its services, database and scheduler.

Only the ``mlsm master`` process imports this package; the CLI, the dashboard and the
agent reach it over HTTP.
"""
