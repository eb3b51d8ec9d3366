"""The one rule for "is this GPU busy?", used by the scheduler, the node views and the summary.

A GPU is, in this order:

* **mlsm** when an mlsm job is placed on it (the master's own placements, whatever the
  GPU's process list says at this instant);
* **foreign** when a process that mlsm did not start uses it: a process the agent did not
  attribute to a job (``job_id`` unset) whose pid is none of the node's job pids. A process
  of an mlsm job that the agent has not attributed yet (its pid is a job's pid) is not
  foreign;
* **error** when it could not be read this time (nothing can be said about it, so it is
  not handed out);
* **free** otherwise.

Everything but free is busy: the scheduler gives only free GPUs, the summary counts the busy
ones, and a node view shows each GPU's holders and whether it is foreign. Pure: no I/O, no
clock, so the three callers agree by construction.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Literal

from mlsm.wire.agent import GpuSample

GpuUse = Literal["free", "mlsm", "foreign", "error"]


@dataclass(frozen=True, slots=True)
class GpuState:
    """What a GPU is used by, and the facts behind it (for the words in :attr:`why`)."""

    use: GpuUse
    job_ids: Sequence[int] = ()  # mlsm: the jobs placed on it
    pids: Sequence[int] = ()  # foreign: the processes mlsm did not start
    error: str = ""  # error: what the agent said

    @property
    def busy(self) -> bool:
        return self.use != "free"

    @property
    def foreign(self) -> bool:
        return self.use == "foreign"

    @property
    def why(self) -> str:
        if self.use == "mlsm":
            return "held by mlsm job(s) " + ", ".join(str(j) for j in self.job_ids)
        if self.use == "foreign":
            return "used by process(es) mlsm did not start: pid " + ", ".join(
                str(p) for p in self.pids
            )
        if self.use == "error":
            return f"could not be read: {self.error}"
        return "free"


FREE = GpuState("free")


def gpu_state(sample: GpuSample, holders: Sequence[int], job_pids: Container[int]) -> GpuState:
    """The state of one GPU: ``holders`` are the mlsm jobs placed on it, ``job_pids`` the
    pids of the jobs its node reports."""
    if holders:
        return GpuState("mlsm", job_ids=holders)
    if sample.processes:
        foreign = [p.pid for p in sample.processes if p.job_id is None and p.pid not in job_pids]
        if foreign:
            return GpuState("foreign", pids=foreign)
    if sample.error:
        return GpuState("error", error=sample.error)
    return FREE


__all__ = ["FREE", "GpuState", "GpuUse", "gpu_state"]
