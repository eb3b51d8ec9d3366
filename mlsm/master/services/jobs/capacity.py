"""What a node offers the scheduler: its GPUs (free or taken, by the one GPU rule, or all
free as with nothing running) and whose jobs it takes by account name."""

from __future__ import annotations

from mlsm.master import scheduler as sched
from mlsm.master.gpustate import gpu_state
from mlsm.master.services.livenode import LiveNode
from mlsm.wire import agent as w


def gpu_slots(node: LiveNode, holders: dict[int, list[int]]) -> list[sched.GpuSlot]:
    """The node's GPUs as the scheduler sees them: free by the one GPU rule."""
    pids = {r.pid for r in node.jobs.values() if r.pid}
    return [
        sched.GpuSlot(
            index=g.index,
            mem_total_bytes=g.mem_total,
            free=not gpu_state(g, holders.get(g.index, ()), pids).busy,
        )
        for g in node.gpus
    ]


def node_accounts(info: w.NodeInfo) -> frozenset[str] | None:
    """Whose jobs a node takes by account name (see accounts.py on the agent): None when
    it takes anyone's (every job runs as one account there, or it has a default account for
    users without one); an agent that runs as root and predates the account list takes
    only mapped users' jobs."""
    if not info.runs_as_root or info.job_account or info.default_unix_user:
        return None
    return frozenset(info.unix_users)


def whole_gpus(node: LiveNode) -> list[sched.GpuSlot]:
    """The node's GPUs, every one free: the node as it would be with nothing running."""
    return [sched.GpuSlot(index=g.index, mem_total_bytes=g.mem_total) for g in node.gpus]
