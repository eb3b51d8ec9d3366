"""The log lines of mlsm's long-running processes (master and agent): one JSON object a line
on stderr, under the ``mlsm`` logger tree, so journald and log shippers read them as data.

Kept apart from the master's HTTP plumbing so the agent formats its lines the same way
without importing the master (or Litestar).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any


class JsonLogFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...}``; a record's ``fields`` dict adds keys."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            data.update(extra)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def setup_logging(level: str) -> None:
    """Send every ``mlsm.*`` record at ``level`` or above to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger("mlsm")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
