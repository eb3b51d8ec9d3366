"""The local terminal around a remote shell (mlsm.cli.rawterm): raw while the block runs,
its settings back however the block ends, a pipe left as it is."""

from __future__ import annotations

import os
import signal
import termios

import pytest

from mlsm.cli.rawterm import Ended, raw_terminal


@pytest.fixture
def tty_fd():
    master, slave = os.openpty()
    yield slave
    os.close(master)
    os.close(slave)


def _lflags(fd: int) -> int:
    return termios.tcgetattr(fd)[3]


def test_raw_inside_and_restored_after_an_exception(tty_fd: int) -> None:
    before = termios.tcgetattr(tty_fd)
    with pytest.raises(RuntimeError), raw_terminal(tty_fd) as is_tty:
        assert is_tty
        assert not _lflags(tty_fd) & (termios.ECHO | termios.ICANON | termios.ISIG)
        raise RuntimeError("the shell broke")
    assert termios.tcgetattr(tty_fd) == before


def test_sigterm_restores_the_terminal_and_the_handler(tty_fd: int) -> None:
    before = termios.tcgetattr(tty_fd)
    old = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Ended) as ended, raw_terminal(tty_fd):
        os.kill(os.getpid(), signal.SIGTERM)
    assert ended.value.signum == signal.SIGTERM
    assert termios.tcgetattr(tty_fd) == before
    assert signal.getsignal(signal.SIGTERM) == old


def test_a_pipe_is_left_as_it_is() -> None:
    r, w = os.pipe()
    try:
        with raw_terminal(r) as is_tty:
            assert not is_tty
    finally:
        os.close(r)
        os.close(w)
