"""Job references as people type them, Slurm's way: ``12`` (a job; for an array, all of
it), ``4-7`` and ``4,9,12-14`` (ids and ranges), ``12_3`` (task 3 of array 12) and
``12_[0-3,7]`` (several tasks). Parsed once here for every command that takes jobs: a bad
or too large reference is one readable line, found before anything is sent."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlsm.errors import NotFound, ValidationError
from mlsm.wire import api
from mlsm.wire.ints import INT64_MAX

if TYPE_CHECKING:
    import click

    from mlsm.client import Client

_ID = r"\d+"
_TASK = re.compile(rf"^({_ID})_(?:({_ID})|\[([0-9,\-]+)\])$")
_RANGE = re.compile(rf"^({_ID})(?:-({_ID}))?$")
#: What the refs a command takes look like, for its help.
FORMS = "ID, A-B, A,B,C, ARRAY_I, ARRAY_[I-J,K]"


@dataclass
class Selection:
    """Job ids and array tasks (array id -> indices), in the order given."""

    ids: list[int] = field(default_factory=list)
    tasks: dict[int, list[int]] = field(default_factory=dict)

    def count(self) -> int:
        return len(self.ids) + sum(len(v) for v in self.tasks.values())

    def request(self, **filters: Any) -> api.CancelRequest:
        tasks = [api.ArrayTasks(array=a, indices=i) for a, i in self.tasks.items()]
        return api.CancelRequest(ids=self.ids, tasks=tasks, **filters)


def _show(ref: str) -> str:
    """A reference as an error quotes it: a runaway one is cut short."""
    return repr(ref if len(ref) <= 40 else ref[:40] + "...")


def _bounded(text: str, ref: str, lo: int, what: str) -> int:
    n = int(text) if len(text) <= len(str(INT64_MAX)) else INT64_MAX + 1
    if not lo <= n <= INT64_MAX:
        raise ValidationError(f"{_show(ref)}: {what} go from {lo} to {INT64_MAX}", path="JOB")
    return n


def _span(first: int, last: int, ref: str) -> range:
    if last < first:
        raise ValidationError(f"{_show(ref)}: the range is empty (A-B needs A <= B)", path="JOB")
    if last - first + 1 > api.MAX_CANCEL_IDS:
        raise ValidationError(
            f"{_show(ref)}: at most {api.MAX_CANCEL_IDS} jobs at once", path="JOB"
        )
    return range(first, last + 1)


def _split(arg: str) -> list[str]:
    """``4,9,12_[0,2]`` -> ``["4", "9", "12_[0,2]"]``: commas inside brackets stay."""
    parts, depth, cur = [], 0, ""
    for ch in arg:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts]


def parse_selection(args: tuple[str, ...] | list[str]) -> Selection:
    """Every reference in ``args``; at most MAX_CANCEL_IDS jobs and tasks in all."""
    sel = Selection()
    for arg in args:
        for ref in _split(arg):
            if m := _TASK.match(ref):
                array = _bounded(m.group(1), ref, 1, "job ids")
                indices = sel.tasks.setdefault(array, [])
                if m.group(2) is not None:
                    indices.append(_bounded(m.group(2), ref, 0, "task indices"))
                else:
                    for piece in m.group(3).split(","):
                        r = _RANGE.match(piece)
                        if r is None:
                            raise ValidationError(
                                f"{_show(ref)}: expected ARRAY_[I-J,K] with task indices",
                                path="JOB",
                            )
                        first = _bounded(r.group(1), ref, 0, "task indices")
                        last = _bounded(r.group(2), ref, 0, "task indices") if r.group(2) else first
                        indices.extend(_span(first, last, ref))
            elif m := _RANGE.match(ref):
                first = _bounded(m.group(1), ref, 1, "job ids")
                last = _bounded(m.group(2), ref, 1, "job ids") if m.group(2) else first
                sel.ids.extend(_span(first, last, ref))
            else:
                raise ValidationError(
                    f"{_show(ref)}: expected a job id, a range A-B or an array task ARRAY_I",
                    path="JOB",
                )
            if sel.count() > api.MAX_CANCEL_IDS:
                raise ValidationError(f"at most {api.MAX_CANCEL_IDS} jobs at once", path="JOB")
    sel.ids = list(dict.fromkeys(sel.ids))
    sel.tasks = {a: list(dict.fromkeys(i)) for a, i in sel.tasks.items()}
    return sel


@dataclass(frozen=True)
class JobRef:
    """One job: by id, or as task ``index`` of array ``job``."""

    job: int
    index: int | None = None

    def __str__(self) -> str:
        return str(self.job) if self.index is None else f"{self.job}_{self.index}"

    def resolve(self, c: Client) -> int:
        """The job's id (an array task is looked up on the master)."""
        if self.index is None:
            return self.job
        tasks = c.jobs.list(array=self.job, all=True, limit=api.MAX_CANCEL_IDS).jobs
        for t in tasks:
            if t.array_index == self.index:
                return t.id
        if not tasks:
            raise NotFound(f"job {self.job} is not an array (or does not exist)")
        raise NotFound(f"array {self.job} has no task {self.index}")


def parse_ref(text: str) -> JobRef:
    """``12`` or ``12_3``; anything else (a range, a list) is one readable error."""
    ref = text.strip()
    if m := re.fullmatch(_ID, ref):
        return JobRef(_bounded(m.group(0), ref, 1, "job ids"))
    if (m := _TASK.match(ref)) and m.group(2) is not None:
        return JobRef(
            _bounded(m.group(1), ref, 1, "job ids"), _bounded(m.group(2), ref, 0, "task indices")
        )
    raise ValidationError(
        f"{_show(ref)}: expected a job id (12) or an array task (12_3)", path="JOB"
    )


def __getattr__(name: str) -> Any:
    """``JOB``, the click parameter type of one job, made when a command that uses click
    asks for it (``mlsm job show``'s fast path parses with :func:`parse_ref` alone)."""
    if name == "JOB":
        import click

        class JobRefType(click.ParamType[JobRef]):
            """A click parameter that takes one job: ``12`` or ``12_3``."""

            name = "JOB"

            def convert(
                self, value: Any, param: click.Parameter | None, ctx: click.Context | None
            ) -> Any:
                if isinstance(value, JobRef):
                    return value
                return parse_ref(str(value))  # a bad one is mlsm's one-line error

        globals()[name] = job = JobRefType()
        return job
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    JOB: click.ParamType[JobRef]
