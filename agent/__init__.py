"""The headless agent that runs on every GPU server (:mod:`agent.main` starts it).

It imports no Litestar, no dashboard and no master code: it talks to the master only
through :mod:`agent.link` and the structs in :mod:`mlsm.wire`.
"""
