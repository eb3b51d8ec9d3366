"""The hot calls without click: ``mlsm submit``, ``mlsm jobs`` and ``mlsm job show``.

Scripts call these in loops (a benchmark's thousand submits, a poll every few
milliseconds), where a Python process's start and imports are most of a call. Each such
command writes its options once (:mod:`mlsm.cli.opts`) and splits its body in two: a
*prepare* step that reads the options and builds the request (pure: it sends nothing, and
raises :class:`~mlsm.cli.opts.Declined` for what only the click command does, such as a
script's ``#MLSM`` lines) and a *send* step shared with the click command. A call the fast
path declines, or whose preparation fails in any way, runs through the click command from
the start, so every refusal is worded, and exits, as click and the command word it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

#: argv's leading words -> the module whose ``fast(argv)`` prepares the call (or raises
#: :class:`~mlsm.cli.opts.Declined`).
FAST: dict[tuple[str, ...], str] = {
    ("submit",): "mlsm.cli.submit",
    ("jobs",): "mlsm.cli.joblist",
    ("job", "show"): "mlsm.cli.jobshow",
}
#: Set by a shell asking click for completions: that is always click's.
COMPLETE_VAR = "_MLSM_COMPLETE"


def fast_call(args: list[str]) -> Callable[[], Any] | None:
    """The prepared call for ``args``, ready to send, or None for the click CLI."""
    if os.environ.get(COMPLETE_VAR):
        return None
    for words, module in FAST.items():
        if tuple(args[: len(words)]) == words:
            try:
                prepare = importlib.import_module(module).fast
                call: Callable[[], Any] | None = prepare(args[len(words) :])
                return call
            except Exception:  # Declined, or a refusal: click's run of the call words it
                return None
    return None
