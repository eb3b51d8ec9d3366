"""Which ports a forward may reach on the node (agent.channels.forward): only one that the
job's own account listens on, never the node's other services."""

from __future__ import annotations

import os
import socket

import pytest

from agent.channels.forward import ForwardError, connect_in_netns, connect_local, same_netns
from tests.support.procs import free_port


@pytest.fixture
def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


def test_a_port_the_jobs_account_listens_on_is_reached(listener: int) -> None:
    conn = connect_local(listener, os.getuid())
    try:
        assert conn.getpeername()[1] == listener
    finally:
        conn.close()


def test_a_port_of_another_account_is_refused(listener: int) -> None:
    with pytest.raises(ForwardError, match="nothing of the job's listens on port"):
        connect_local(listener, os.getuid() + 12345)


def test_a_port_nobody_listens_on_is_refused() -> None:
    with pytest.raises(ForwardError):
        connect_local(free_port(), os.getuid())


@pytest.mark.skipif(os.geteuid() != 0, reason="entering a network namespace needs root")
def test_entering_ones_own_namespace_connects_and_leaves_the_caller_where_it_was(
    listener: int,
) -> None:
    assert same_netns(os.getpid())
    conn = connect_in_netns(os.getpid(), listener)
    conn.close()
    assert same_netns(os.getpid())
