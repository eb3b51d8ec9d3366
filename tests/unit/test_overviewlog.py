"""The overview answered as changes since a cursor (:mod:`mlsm.master.services.overviewlog`):
what a dashboard merges must equal the whole list at every step."""

from __future__ import annotations

import msgspec
import pytest

from mlsm.master.services import overviewlog
from mlsm.master.services.overviewlog import OverviewLog
from mlsm.wire import api

SUMMARY = api.LabSummary(
    nodes_online=0, nodes_total=0, gpus_total=0, gpus_busy=0, jobs_running=0, jobs_queued=0
)


def row(name: str, cpu: float = 1.0, state: api.NodeState = "online") -> api.NodeRow:
    return api.NodeRow(name=name, state=state, cpu_percent=cpu)


def merge(rows: dict[str, api.NodeRow], reply: api.LabOverview) -> dict[str, api.NodeRow]:
    """What the dashboard does with an answer."""
    if reply.full:
        return {r.name: r for r in reply.nodes}
    merged = {**rows, **{r.name: r for r in reply.nodes}}
    for name in reply.removed:
        del merged[name]
    return merged


def test_a_cursor_gets_only_the_changed_new_and_removed_rows() -> None:
    log = OverviewLog()
    log.record([row("a"), row("b"), row("c")])
    first = log.answer(SUMMARY, None)
    assert first.full and [r.name for r in first.nodes] == ["a", "b", "c"]

    log.record([row("a"), row("b", cpu=50.0), row("d")])  # b changed, c gone, d new
    reply = log.answer(SUMMARY, first.cursor)
    assert not reply.full
    assert [r.name for r in reply.nodes] == ["b", "d"]
    assert reply.nodes[0].cpu_percent == 50.0
    assert reply.removed == ["c"]
    assert merge({r.name: r for r in first.nodes}, reply) == {
        "a": row("a"),
        "b": row("b", cpu=50.0),
        "d": row("d"),
    }


def test_nothing_changed_is_an_empty_answer_with_the_same_cursor() -> None:
    log = OverviewLog()
    log.record([row("a"), row("b")])
    cursor = log.answer(SUMMARY, None).cursor
    log.record([row("a"), row("b")])
    reply = log.answer(SUMMARY, cursor)
    assert (reply.full, reply.nodes, reply.removed, reply.cursor) == (False, [], [], cursor)


def test_a_state_change_alone_is_a_changed_row() -> None:
    log = OverviewLog()
    log.record([row("a")])
    cursor = log.answer(SUMMARY, None).cursor
    log.record([row("a", state="stale")])
    assert [r.state for r in log.answer(SUMMARY, cursor).nodes] == ["stale"]


def test_a_node_removed_then_back_is_a_changed_row_not_a_removal() -> None:
    log = OverviewLog()
    log.record([row("a"), row("b")])
    cursor = log.answer(SUMMARY, None).cursor
    log.record([row("a")])
    log.record([row("a"), row("b", cpu=9.0)])
    reply = log.answer(SUMMARY, cursor)
    assert [r.name for r in reply.nodes] == ["b"] and reply.removed == []


def test_every_step_merged_equals_the_whole_list() -> None:
    """Many small changes, answered from cursors of every age: the merge is the list."""
    log = OverviewLog()
    steps = [
        [row("a"), row("b"), row("c")],
        [row("a", 2.0), row("c")],
        [row("a", 2.0), row("c"), row("e")],
        [row("e", 3.0)],
        [row("b"), row("e", 3.0), row("f")],
    ]
    seen: list[tuple[str, dict[str, api.NodeRow]]] = []
    for rows in steps:
        log.record(rows)
        whole = {r.name: r for r in log.answer(SUMMARY, None).nodes}
        assert whole == {r.name: r for r in rows}
        for cursor, had in seen:
            assert merge(had, log.answer(SUMMARY, cursor)) == whole
        seen.append((log.cursor, whole))


def test_another_masters_an_old_or_a_malformed_cursor_gets_the_whole_list() -> None:
    log = OverviewLog()
    log.record([row("a")])
    restarted = OverviewLog()  # the same lab after a master restart: another epoch
    restarted.record([row("a")])
    cursor = log.answer(SUMMARY, None).cursor
    assert restarted.answer(SUMMARY, cursor).full
    odd_digits = ("\u00b2", "\u0661", "\uff11", "1_0")  # superscript, Arabic, fullwidth
    malformed = ("", "x", f"{log.epoch}.", f"{log.epoch}.-1", f"{log.epoch}.99", "a.b.c")
    for bad in (*malformed, *(f"{log.epoch}.{d}" for d in odd_digits)):
        reply = log.answer(SUMMARY, bad)
        assert reply.full and [r.name for r in reply.nodes] == ["a"], bad


def test_a_cursor_older_than_the_removals_kept_gets_the_whole_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kept = 3
    monkeypatch.setattr(overviewlog, "REMOVALS_KEPT", kept)
    log = OverviewLog()
    names = [f"n{i:05d}" for i in range(kept + 2)]
    log.record([row(n) for n in names])
    old = log.answer(SUMMARY, None).cursor
    for i in range(kept + 1):  # one removal per step, one more than are kept
        log.record([row(n) for n in names[i + 1 :]])
    assert log.answer(SUMMARY, old).full
    recent = f"{log.epoch}.{log.seq - 1}"
    reply = log.answer(SUMMARY, recent)
    assert not reply.full and reply.removed == [names[kept]]


def test_the_answer_round_trips_as_json_for_an_old_client() -> None:
    """A client that knows only ``summary`` and ``nodes`` still decodes the answer."""

    class OldOverview(msgspec.Struct):
        summary: api.LabSummary
        nodes: list[api.NodeRow]

    log = OverviewLog()
    log.record([row("a")])
    body = msgspec.json.encode(log.answer(SUMMARY, None))
    assert [r.name for r in msgspec.json.decode(body, type=OldOverview).nodes] == ["a"]
