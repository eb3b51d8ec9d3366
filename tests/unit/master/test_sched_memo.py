"""What a pass remembers about a request holds only while what it was worked out from
does: jobs of one shape in a row still see each other's placements."""

from __future__ import annotations

from mlsm.master.scheduler import GpuSlot, Hold, NodeCap, PendingJob, SchedContext, schedule

GIB = 1 << 30
NOW = 1_000_000.0


def _node(name: str, free: int, cpus: float) -> NodeCap:
    gpus = [GpuSlot(i, 80 * GIB, free=i < free) for i in range(4)]
    return NodeCap(name=name, gpus=gpus, cpus_free=cpus)


def test_a_node_with_a_hold_that_runs_out_of_cpus_is_not_offered_again() -> None:
    # held: GPU 0 of 2 free is bob's, so alice may use 1 there: fewer than plain's 2,
    # so her CPU jobs go there first, until its CPUs run out.
    nodes = [_node("plain", 2, 64), _node("held", 2, 4)]
    ctx = SchedContext(now=NOW, holds=[Hold("held", (0,), NOW - 1, NOW + 3600, "bob", "bob's")])
    jobs = [PendingJob(id=i, user="alice", submitted_at=i, cpus=4) for i in (1, 2, 3)]
    r = schedule(jobs, nodes, ctx)
    assert [(p.job_id, p.node) for p in r.placements] == [(1, "held"), (2, "plain"), (3, "plain")]


def test_a_wait_for_a_hold_ends_when_the_hold_holder_takes_the_gpus() -> None:
    # The same shape waits twice "reserved for bob's"; once bob's job takes the held GPUs
    # the next one waits for plain want of GPUs.
    nodes = [_node("held", 1, 64)]
    ctx = SchedContext(now=NOW, holds=[Hold("held", (0,), NOW - 1, NOW + 3600, "bob", "bob's")])
    jobs = [
        PendingJob(id=1, user="alice", submitted_at=1, gpus=1),
        PendingJob(id=2, user="bob", submitted_at=2, gpus=1),
        PendingJob(id=3, user="alice", submitted_at=3, gpus=1),
    ]
    r = schedule(jobs, nodes, ctx)
    assert [(p.job_id, p.node) for p in r.placements] == [(2, "held")]
    assert r.reasons[1] == "the free GPUs on held are reserved for bob's"
    assert r.reasons[3] == "no online node has 1 free GPU"
