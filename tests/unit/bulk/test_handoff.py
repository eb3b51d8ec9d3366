"""The handoff between a filling thread and a working one (mlsm.bulk.handoff): bounded
buffers, order, errors, and what was handed over before a stop is still worked on."""

from __future__ import annotations

import threading

import pytest

from mlsm.bulk.handoff import Handoff
from tests.support.wait import wait_until

WAIT_S = 10.0


def test_the_buffers_are_bounded_and_reused_while_the_worker_is_busy() -> None:
    gate = threading.Event()
    seen: list[int] = []

    def work(item: int) -> None:
        gate.wait(WAIT_S)
        seen.append(item)

    handoff: Handoff[int] = Handoff(work, buffers=3, size=64)
    taken = []
    for i in range(3):
        buf = handoff.buffer()
        taken.append(id(buf))
        handoff.hand(buf, i)
    # every buffer is handed over and the worker holds the first: none is free
    assert handoff.free == 0
    assert handoff.in_flight == 3
    got: list[bytearray] = []
    waiter = threading.Thread(target=lambda: got.append(handoff.buffer()))
    waiter.start()
    assert not got  # the filling thread waits for a buffer; it does not allocate one
    gate.set()
    waiter.join(WAIT_S)
    assert got and id(got[0]) in taken  # a buffer came back, the same memory
    handoff.hand(got[0], 3)
    for i in range(4, 40):
        buf = handoff.buffer()
        assert id(buf) in taken
        handoff.hand(buf, i)
    handoff.finish()
    assert seen == list(range(40))  # in order, every one
    assert handoff.most_in_flight == 3


def test_the_workers_error_stops_it_and_reaches_the_filling_thread() -> None:
    seen: list[int] = []

    def work(item: int) -> None:
        if item == 2:
            raise OSError(28, "No space left on device")
        seen.append(item)

    handoff: Handoff[int] = Handoff(work, buffers=2, size=16)
    with pytest.raises(OSError, match="No space"):
        for i in range(1000):
            handoff.hand(handoff.buffer(), i)
    handoff.close()
    assert seen == [0, 1]  # nothing after the failure is worked on
    with pytest.raises(OSError):
        handoff.finish()


def test_close_works_on_everything_handed_over_before_it_and_then_nothing_runs() -> None:
    gate = threading.Event()
    seen: list[int] = []
    running = threading.Event()

    def work(item: int) -> None:
        running.set()
        gate.wait(WAIT_S)
        seen.append(item)

    handoff: Handoff[int] = Handoff(work, buffers=4, size=16)
    for i in range(4):
        handoff.hand(handoff.buffer(), i)
    wait_until(running.is_set, WAIT_S, "the worker to start")
    closer = threading.Thread(target=handoff.close)
    closer.start()
    gate.set()
    closer.join(WAIT_S)
    assert not closer.is_alive()
    assert seen == [0, 1, 2, 3]  # the cut lost nothing that had come
    assert handoff.in_flight == 0


def test_a_handoff_needs_two_buffers() -> None:
    with pytest.raises(ValueError):
        Handoff(lambda _item: None, buffers=1)
