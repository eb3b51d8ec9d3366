"""The master's book of running transfers: a transfer that has ended (its final state set,
its row still being written) no longer holds its dataset on its nodes, so a delete or a
new copy asked for the moment its end is visible is not refused."""

from __future__ import annotations

from typing import Any, cast

import pytest

from mlsm.master.services.datasets.transfers import LiveTransfer, Transfers
from mlsm.wire import api


def _book(state: api.TransferState) -> Transfers:
    book = Transfers(cast(Any, None), cast(Any, None), cast(Any, None))
    live = LiveTransfer(
        id=7,
        kind="copy",
        dataset="big",
        node="dst",
        node_id=2,
        created_at=0.0,
        src_node="src",
        src_id=1,
        state=state,
    )
    book._live[live.id] = live
    return book


@pytest.mark.parametrize("state", ["pending", "running"])
def test_a_running_copy_holds_its_dataset_on_both_nodes(state: api.TransferState) -> None:
    book = _book(state)
    assert book.touching("big", 2) == book.touching("big", 1) == 7
    assert book.bringing("big", 2) == 7


@pytest.mark.parametrize("state", ["succeeded", "failed", "cancelled"])
def test_an_ended_copy_holds_nothing_while_its_row_is_written(state: api.TransferState) -> None:
    book = _book(state)
    assert book.touching("big", 2) is None and book.touching("big", 1) is None
    assert book.bringing("big", 2) is None
