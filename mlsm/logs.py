"""The log lines of mlsm's long-running processes (master and agent), under the ``mlsm``
logger tree, on stderr: one JSON object a line where a program reads them (journald, log
shippers, a file), and plain lines for a person on a terminal (setting ``log_format``:
``auto``, the default, picks by whether stderr is a terminal; ``json`` or ``text`` force one).
A text line shows every control character of a message as an escape, so a logged request
path or job name cannot drive the terminal.

Kept apart from the master's HTTP plumbing so the agent formats its lines the same way
without importing the master (or Litestar).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from mlsm.termsafe import visible


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


class TextLogFormatter(logging.Formatter):
    """``02:55:01 info  mlsm.master  message  key=value ...`` for a person reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{when} {record.levelname.lower():<7} {record.name}  {record.getMessage()}"
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict) and extra:
            line += "  " + " ".join(f"{k}={v}" for k, v in extra.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
            return visible(line, "\n")
        return visible(line)


def log_formatter(log_format: str, stream: Any = None) -> logging.Formatter:
    """The formatter ``log_format`` names; ``auto``: text on a terminal, else JSON."""
    if log_format == "auto":
        target = sys.stderr if stream is None else stream
        isatty = getattr(target, "isatty", None)
        log_format = "text" if callable(isatty) and isatty() else "json"
    return TextLogFormatter() if log_format == "text" else JsonLogFormatter()


def setup_logging(level: str, log_format: str = "auto") -> None:
    """Send every ``mlsm.*`` record at ``level`` or above to stderr, as ``log_format`` says."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(log_formatter(log_format))
    root = logging.getLogger("mlsm")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
