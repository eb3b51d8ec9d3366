"""Behaviour of the pure scheduler: one rule per test."""

from __future__ import annotations

import random

import pytest

from mlsm.master.scheduler import (
    GpuSlot,
    NodeCap,
    PendingJob,
    SchedContext,
    add_usage,
    decay_usage,
    schedule,
)

GIB = 1 << 30


def node(name="gpu0", gpus=8, mem_gib=80, busy=(), **kw) -> NodeCap:
    slots = [GpuSlot(i, mem_gib * GIB, free=i not in busy) for i in range(gpus)]
    return NodeCap(name=name, gpus=slots, **kw)


def job(id, user="alice", **kw) -> PendingJob:
    kw.setdefault("submitted_at", float(id))
    return PendingJob(id=id, user=user, **kw)


def placed(result) -> dict[int, tuple[str, tuple[int, ...]]]:
    return {p.job_id: (p.node, p.gpu_indices) for p in result.placements}


# ---------------------------------------------------------------- order
def test_higher_priority_goes_first_even_when_younger():
    r = schedule([job(1, gpus=1), job(2, gpus=1, priority=5)], [node(gpus=1)])
    assert list(placed(r)) == [2]
    assert r.reasons == {1: "no online node has 1 free GPU"}


def test_older_job_goes_first_within_a_priority():
    r = schedule(
        [job(2, gpus=1, submitted_at=20.0), job(1, gpus=1, submitted_at=10.0)], [node(gpus=1)]
    )
    assert list(placed(r)) == [1]


def test_lower_recent_usage_goes_first():
    jobs = [job(1, "alice", gpus=1), job(2, "bob", gpus=1)]
    ctx = SchedContext(usage={"alice": 10.0, "bob": 2.0})
    assert list(placed(schedule(jobs, [node(gpus=1)], ctx))) == [2]


def test_two_users_flooding_the_queue_alternate():
    alice = [job(i, "alice", gpus=1) for i in range(1, 5)]  # all older than bob's
    bob = [job(i, "bob", gpus=1) for i in range(11, 15)]
    r = schedule(alice + bob, [node(gpus=4)])
    users = ["alice" if p.job_id < 10 else "bob" for p in r.placements]
    assert users == ["alice", "bob", "alice", "bob"]


def test_cpu_only_floods_alternate_too():
    alice = [job(i, "alice", cpus=4) for i in range(1, 5)]
    bob = [job(i, "bob", cpus=4) for i in range(11, 15)]
    r = schedule(alice + bob, [node(gpus=0, cpus_free=8)])
    assert sorted(placed(r)) == [1, 11]


def test_big_job_that_cannot_fit_does_not_block_smaller_ones():
    jobs = [job(1, gpus=8, priority=10), job(2, gpus=2)]
    r = schedule(jobs, [node(gpus=8, busy={0})])
    assert list(placed(r)) == [2]
    assert r.reasons[1] == "no online node has 8 free GPUs"


# ---------------------------------------------------------------- caps and limits
def test_user_gpu_cap_counts_gpus_in_use_and_placed_this_pass():
    ctx = SchedContext(user_gpus_in_use={"alice": 1}, user_caps={"alice": 4})
    r = schedule([job(1, gpus=2), job(2, gpus=2), job(3, gpus=1)], [node()], ctx)
    assert sorted(placed(r)) == [1, 3]
    assert r.reasons == {2: "user GPU cap 4 reached"}


def test_job_above_the_cap_says_so():
    ctx = SchedContext(user_caps={"alice": 4})
    r = schedule([job(1, gpus=8)], [node()], ctx)
    assert r.reasons == {1: "asks for 8 GPUs, more than the user GPU cap of 4"}


def test_cap_does_not_limit_jobs_without_gpus():
    ctx = SchedContext(user_gpus_in_use={"alice": 4}, user_caps={"alice": 4})
    assert list(placed(schedule([job(1)], [node()], ctx))) == [1]


def test_array_throttle_counts_running_and_placed_tasks():
    tasks = [job(i, gpus=1, array_parent=100, array_throttle=8) for i in range(101, 105)]
    ctx = SchedContext(running_array={100: 6})
    r = schedule(tasks, [node()], ctx)
    assert sorted(placed(r)) == [101, 102]
    assert r.reasons == {103: "array throttle 8 reached", 104: "array throttle 8 reached"}


# ---------------------------------------------------------------- allocation
def test_best_fit_keeps_an_empty_server_free():
    nodes = [node("empty"), node("half", busy={0, 1, 2, 3})]
    r = schedule([job(1, gpus=2), job(2, gpus=8)], nodes)
    assert placed(r) == {1: ("half", (4, 5)), 2: ("empty", tuple(range(8)))}


def test_gpus_come_from_the_shortest_run_that_fits():
    r = schedule([job(1, gpus=2)], [node(busy={3, 6, 7})])  # free runs 0-2 and 4-5
    assert placed(r)[1] == ("gpu0", (4, 5))


def test_per_gpu_memory_need_picks_big_enough_gpus():
    small, big = node("small", mem_gib=24), node("big", mem_gib=80)
    r = schedule([job(1, gpus=1, gpu_mem_bytes=40 * GIB)], [small, big])
    assert placed(r)[1][0] == "big"


def test_busy_and_foreign_gpus_are_never_handed_out():
    r = schedule([job(1, gpus=2)], [node(gpus=4, busy={0, 2})])
    assert placed(r)[1] == ("gpu0", (1, 3))


def test_job_without_gpus_fits_on_a_node_whose_gpus_are_all_busy():
    r = schedule([job(1, cpus=2)], [node(busy=set(range(8)))])
    assert placed(r) == {1: ("gpu0", ())}


def test_cpus_and_memory_are_reserved_per_node():
    jobs = [job(1, cpus=10, mem_bytes=8 * GIB), job(2, cpus=10)]
    r = schedule(jobs, [node(cpus_free=16, mem_free_bytes=64 * GIB)])
    assert list(placed(r)) == [1]
    assert r.reasons == {2: "no online node has 10 CPUs free"}


def _random_case(seed: int) -> tuple[list[PendingJob], list[NodeCap]]:
    rnd = random.Random(seed)
    nodes = []
    for n in range(rnd.choice([1, 3, 6, 40])):
        gpus = [
            GpuSlot(i, rnd.choice([16, 24, 40, 80]) * GIB, free=rnd.random() < 0.7)
            for i in rnd.sample(range(16), rnd.randint(0, 8))
        ]
        nodes.append(
            NodeCap(
                name=f"n{n}",
                schedulable=rnd.random() < 0.85,
                gpus=gpus,
                cpus_free=float(rnd.randint(0, 32)),
                mem_free_bytes=rnd.randint(0, 256) * GIB,
                labels={"rack": rnd.choice("xy")},
            )
        )
    jobs = [
        job(
            i,
            rnd.choice("abc"),
            priority=rnd.choice([0, 0, 1]),
            gpus=rnd.choice([0, 1, 1, 2, 3, 4, 8]),
            gpu_mem_bytes=rnd.choice([0, 0, 20, 40, 70, 90]) * GIB,
            cpus=float(rnd.choice([0, 0, 1, 4, 16])),
            mem_bytes=rnd.choice([0, 0, 8, 64]) * GIB,
            node=rnd.choice([None, None, None, "n0", "n9"]),
            labels=rnd.choice([{}, {}, {"rack": "x"}]),
        )
        for i in range(rnd.randint(0, 60))
    ]
    return jobs, nodes


def _fits(j: PendingJob, n: NodeCap, used: set[int], cpus: float, mem: int) -> bool:
    if not n.schedulable or j.node not in (None, n.name):
        return False
    if any(n.labels.get(k) != v for k, v in j.labels.items()):
        return False
    if (j.cpus and n.cpus_free - cpus < j.cpus) or (
        j.mem_bytes and n.mem_free_bytes - mem < j.mem_bytes
    ):
        return False
    ok = [
        g for g in n.gpus if g.free and g.index not in used and g.mem_total_bytes >= j.gpu_mem_bytes
    ]
    return len(ok) >= j.gpus


def test_random_passes_never_double_allocate_overcommit_or_leave_a_fit_unused():
    for seed in range(300):
        jobs, nodes = _random_case(seed)
        r = schedule(jobs, nodes)
        by_id = {j.id: j for j in jobs}
        caps = {n.name: n for n in nodes}
        assert set(placed(r)).isdisjoint(r.reasons)
        assert set(placed(r)) | set(r.reasons) | set(r.never) == set(by_id)
        used = {n.name: set() for n in nodes}
        cpus = dict.fromkeys(caps, 0.0)
        mem = dict.fromkeys(caps, 0)
        for p in r.placements:
            j, n = by_id[p.job_id], caps[p.node]
            assert _fits(j, n, used[n.name], cpus[n.name], mem[n.name]), f"seed {seed}"
            slots = {g.index: g for g in n.gpus}
            assert len(p.gpu_indices) == j.gpus
            for i in p.gpu_indices:
                assert slots[i].free
                assert slots[i].mem_total_bytes >= j.gpu_mem_bytes
                assert i not in used[n.name], f"seed {seed}: GPU handed out twice"
                used[n.name].add(i)
            cpus[n.name] += j.cpus
            mem[n.name] += j.mem_bytes
        for jid in r.reasons:  # capacity only shrinks, so a waiting job fits nowhere at the end
            j = by_id[jid]
            assert not any(_fits(j, n, used[n.name], cpus[n.name], mem[n.name]) for n in nodes), (
                f"seed {seed}: job {jid} waits ({r.reasons[jid]}) but fits"
            )


# ---------------------------------------------------------------- node state and filters
def test_draining_and_offline_nodes_get_nothing():
    nodes = [
        node("gpu1", schedulable=False, reason_unschedulable="draining"),
        node("gpu2", schedulable=False, reason_unschedulable="offline"),
    ]
    r = schedule([job(1, gpus=1), job(2, node="gpu1"), job(3, node="gpu2")], nodes)
    assert r.placements == []
    assert r.reasons == {
        1: "no online nodes",
        2: "node gpu1 is draining",
        3: "node gpu2 is offline",
    }


def test_named_node_is_honoured_and_unknown_names_said():
    r = schedule([job(1, node="gpu1", gpus=1), job(2, node="nope")], [node("gpu0"), node("gpu1")])
    assert placed(r)[1][0] == "gpu1"
    assert r.reasons == {2: "no node named nope"}


def test_labels_must_all_match():
    nodes = [node("a", labels={"gpu": "a100"}), node("b", labels={"gpu": "a100", "ib": "yes"})]
    r = schedule(
        [job(1, labels={"gpu": "a100", "ib": "yes"}), job(2, labels={"gpu": "h100"})], nodes
    )
    assert placed(r)[1][0] == "b"
    assert r.reasons == {2: "no online node is labelled gpu=h100"}


def test_job_runs_where_its_dataset_is():
    nodes = [node("a"), node("b", datasets=frozenset({"imagenet"}))]
    r = schedule([job(1, gpus=1, datasets=("imagenet",)), job(2, datasets=("coco",))], nodes)
    assert placed(r)[1][0] == "b"
    assert r.reasons == {2: "no online node holds dataset coco"}


def test_dataset_only_on_an_offline_node_names_it():
    nodes = [
        node("a"),
        node("b", schedulable=False, reason_unschedulable="offline", datasets=frozenset({"coco"})),
    ]
    r = schedule([job(1, datasets=("coco",))], nodes)
    assert r.reasons == {1: "dataset coco is only on b (offline)"}


def test_docker_jobs_need_docker():
    plain = node("a")
    r = schedule([job(1, env_kind="docker")], [plain])
    assert r.reasons == {1: "no online node can run docker jobs (Docker unavailable)"}
    docker = node("b", runtimes=frozenset({"process", "docker"}))
    assert placed(schedule([job(1, env_kind="docker")], [plain, docker]))[1][0] == "b"


def test_filters_that_each_match_but_not_together_are_named_together():
    nodes = [
        node("a", datasets=frozenset({"coco"})),
        node("b", runtimes=frozenset({"process", "docker"})),
    ]
    r = schedule([job(1, env_kind="docker", datasets=("coco",))], nodes)
    assert r.reasons == {1: "no online node holds dataset coco and can run docker jobs"}


# ---------------------------------------------------------------- dependencies
@pytest.mark.parametrize(
    ("state", "mode", "outcome"),
    [
        ("succeeded", "ok", "placed"),
        ("running", "ok", "waiting for job 17"),
        ("queued", "any", "waiting for job 17"),
        ("failed", "any", "placed"),
        ("cancelled", "any", "placed"),
        ("failed", "ok", "never: dependency 17 failed"),
        ("cancelled", "ok", "never: dependency 17 was cancelled"),
        ("interrupted", "ok", "never: dependency 17 was interrupted"),
    ],
)
def test_dependency_modes(state, mode, outcome):
    r = schedule([job(1, deps=((17, mode),))], [node()], SchedContext(dep_states={17: state}))
    if outcome == "placed":
        assert list(placed(r)) == [1]
    elif outcome.startswith("never: "):
        assert r.never == {1: outcome.removeprefix("never: ")} and not r.reasons
    else:
        assert r.reasons == {1: outcome} and not r.never


def test_dependency_on_an_unknown_job_can_never_run():
    r = schedule([job(1, deps=((99, "ok"),))], [node()])
    assert r.never == {1: "dependency 99 does not exist"}


# ---------------------------------------------------------------- reasons
@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        ({"gpus": 1, "gpu_mem_bytes": 90 * GIB}, "no online node has GPUs with >= 90 GiB"),
        ({"gpus": 16}, "no online node has 16 GPUs"),
        ({"gpus": 8, "gpu_mem_bytes": 40 * GIB}, "no online node has 8 GPUs with >= 40 GiB"),
        ({"gpus": 2, "gpu_mem_bytes": 40 * GIB}, "no online node has 2 free GPUs with >= 40 GiB"),
        ({"gpus": 1, "cpus": 64}, "no online node has 1 free GPU plus 64 CPUs free"),
        ({"mem_bytes": 512 * GIB}, "no online node has 512 GiB memory free"),
        ({"gpus": 1, "node": "small"}, "node small does not have 1 free GPU"),
    ],
)
def test_reason_names_what_is_missing(request_, reason):
    nodes = [
        node("small", gpus=4, mem_gib=24, busy={0, 1, 2, 3}, cpus_free=8, mem_free_bytes=64 * GIB),
        node("big", gpus=4, mem_gib=80, busy={0, 1, 2}, cpus_free=8, mem_free_bytes=64 * GIB),
    ]
    assert schedule([job(1, **request_)], nodes).reasons == {1: reason}


# ---------------------------------------------------------------- usage accounting
def test_usage_halves_every_half_life():
    assert decay_usage(8.0, 3600, 3600) == pytest.approx(4.0)
    assert decay_usage(8.0, 7200, 3600) == pytest.approx(2.0)
    assert decay_usage(8.0, 0, 3600) == 8.0


def test_usage_adds_gpu_hours():
    assert add_usage(1.0, gpus=2, elapsed_s=1800) == pytest.approx(2.0)


# ---------------------------------------------------------------- Unix accounts
def test_an_unmapped_members_job_goes_only_where_an_account_of_that_name_exists():
    nodes = [node("a", accounts=frozenset({"bob"})), node("b", accounts=frozenset({"alice"}))]
    r = schedule([job(1, "alice", gpus=1)], nodes)
    assert placed(r) == {1: ("b", (0,))}


def test_a_job_whose_user_has_no_account_anywhere_waits_saying_what_an_admin_does():
    r = schedule([job(1, "carol", gpus=1)], [node("a", accounts=frozenset({"alice"}))])
    assert not r.placements
    assert r.reasons[1] == (
        "no Unix account for carol on any online node: an admin maps one "
        "(`mlsm user set carol --unix-user ACCOUNT`) or creates account carol there"
    )
    named = schedule([job(2, "carol", node="a")], [node("a", accounts=frozenset({"alice"}))])
    assert named.reasons[2].startswith("no Unix account for carol on node a: an admin maps")


def test_mapped_users_and_admins_need_no_same_named_account():
    nodes = [node("a", accounts=frozenset())]
    ctx = SchedContext(mapped_users=frozenset({"carol", "root"}))
    r = schedule([job(1, "carol", gpus=1), job(2, "root", gpus=1), job(3, "dave")], nodes, ctx)
    assert set(placed(r)) == {1, 2}
    assert r.reasons[3].startswith("no Unix account for dave")


def test_a_node_that_takes_anyones_jobs_is_not_filtered():
    r = schedule([job(1, "carol", gpus=1)], [node("a", accounts=None)])
    assert placed(r) == {1: ("a", (0,))}


def test_the_account_filter_combines_with_the_others_in_one_reason():
    nodes = [
        node("a", accounts=frozenset({"carol"}), labels={"rack": "1"}),
        node("b", accounts=frozenset(), labels={"rack": "2"}),
    ]
    r = schedule([job(1, "carol", labels={"rack": "2"})], nodes)
    assert r.reasons[1] == "no online node is labelled rack=2 and has a Unix account for carol"


def test_job_runs_where_its_project_is():
    nodes = [node("a", gpus=1), node("b", projects=frozenset({"alice/exp"}))]
    r = schedule([job(1, gpus=1, project="alice/exp", code=True), job(2, project="bob/x")], nodes)
    assert placed(r)[1][0] == "b"
    assert r.reasons == {2: "no online node holds project bob/x"}


def test_project_only_on_a_draining_node_names_it():
    nodes = [
        node("a"),
        node("b", schedulable=False, reason_unschedulable="draining", projects=frozenset({"al/p"})),
    ]
    r = schedule([job(1, project="al/p", code=True)], nodes)
    assert r.reasons == {1: "project al/p is only on b (draining)"}
    r = schedule([job(2, node="a", project="al/p", code=True)], nodes)
    assert r.reasons == {2: "node a does not hold project al/p"}


def test_shipped_code_goes_only_to_agents_that_can_run_it():
    old, new = node("old", gpus=1, code=False), node("new", gpus=4)
    assert placed(schedule([job(1, gpus=1, code=True)], [old, new]))[1][0] == "new"
    r = schedule([job(2, code=True)], [old])
    assert r.reasons == {
        2: "no online node runs an agent that can run shipped code (upgrade mlsm on the nodes)"
    }
    r = schedule([job(3, node="old", code=True)], [old, new])
    assert r.reasons == {3: "node old runs an agent too old for shipped code (upgrade mlsm on it)"}
