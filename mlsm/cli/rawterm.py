"""The local terminal in raw mode for a remote shell, restored on every way out.

:func:`raw_terminal` puts the terminal on ``fd`` into raw mode (every key, Ctrl-C
included, goes to the remote shell; no local echo) and restores the saved settings when
the block ends however it ends: a return, an exception, a cancelled task, or SIGTERM /
SIGHUP (turned into an exception here, so the ``finally`` runs). Not a terminal: nothing
changes (a pipe feeds the shell as it is).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import termios
import tty
from collections.abc import Iterator
from types import FrameType

#: Signals that end the CLI; each restores the terminal first.
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Ended(Exception):
    """A signal ended the CLI (the terminal is restored on the way out)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def window_size(fd: int | None = None) -> tuple[int, int]:
    """(rows, cols) of the terminal, 24x80 when there is none."""
    try:
        size = os.get_terminal_size(sys.stdout.fileno() if fd is None else fd)
        return max(1, size.lines), max(1, size.columns)
    except OSError:
        return 24, 80


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[bool]:
    """Raw mode on ``fd`` for the block (yields whether it is a terminal)."""
    if not os.isatty(fd):
        yield False
        return
    saved = termios.tcgetattr(fd)
    old_handlers = {}

    def ending(signum: int, frame: FrameType | None) -> None:
        raise Ended(signum)

    for sig in ENDING_SIGNALS:
        old_handlers[sig] = signal.signal(sig, ending)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
