"""Array jobs as one row: ``12_[0-3]`` stands for the tasks of array 12 that share a state,
as Slurm's squeue shows them (``mlsm jobs --expand`` lists every task)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from mlsm.wire import api


def span(indices: Iterable[int]) -> str:
    """``[0, 1, 2, 3, 7]`` -> ``"0-3,7"``."""
    out: list[str] = []
    run: list[int] = []
    for i in sorted(set(indices)):
        if run and i != run[-1] + 1:
            out.append(_run(run))
            run = []
        run.append(i)
    if run:
        out.append(_run(run))
    return ",".join(out)


def _run(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"


def task_id(j: api.Job) -> str:
    """``12_3`` for a task of array 12, the plain id for any other job."""
    if j.array_parent is None or j.array_index is None:
        return str(j.id)
    return f"{j.array_parent}_{j.array_index}"


@dataclass
class Row:
    """One line of the listing: a job, or the tasks of one array in one state."""

    jobs: list[api.Job] = field(default_factory=list)

    @property
    def first(self) -> api.Job:
        return self.jobs[0]

    @property
    def id(self) -> str:
        if len(self.jobs) == 1:
            return task_id(self.first)
        indices = [j.array_index for j in self.jobs if j.array_index is not None]
        return f"{self.first.array_parent}_[{span(indices)}]"

    @property
    def state(self) -> str:
        n = len(self.jobs)
        return self.first.state if n == 1 else f"{self.first.state} ({n})"

    @property
    def node(self) -> str:
        nodes = sorted({j.node for j in self.jobs if j.node})
        if not nodes:
            return "-"
        return nodes[0] if len(nodes) == 1 else f"{nodes[0]} +{len(nodes) - 1}"

    @property
    def reason(self) -> str:
        reasons = {j.reason for j in self.jobs}
        first = self.first.reason
        return first if len(reasons) == 1 else f"{first} (and {len(reasons) - 1} other reasons)"


def group(jobs: Iterable[api.Job]) -> list[Row]:
    """Rows in the jobs' order; the tasks of an array that share a state are one row, at
    the place of the first of them."""
    rows: list[Row] = []
    by_key: dict[tuple[int, str], Row] = {}
    for j in jobs:
        if j.array_parent is None:
            rows.append(Row([j]))
            continue
        key = (j.array_parent, j.state)
        row = by_key.get(key)
        if row is None:
            row = by_key[key] = Row([])
            rows.append(row)
        row.jobs.append(j)
    return rows
