"""Database access: models, the engine/session factory and migrations."""

from mlsm.master.db.engine import Database

__all__ = ["Database"]
