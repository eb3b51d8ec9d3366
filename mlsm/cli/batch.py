"""Batch input for ``mlsm submit``: a script's ``#MLSM`` directives, and job files.

A batch script (``mlsm submit train.sh``) is a file that starts with ``#!``. Like
``#SBATCH``, the ``#MLSM --gpus 2`` lines among the comments at its top are submit options;
the first line that is not a comment (or blank) ends them. Options on the command line
win over directives. The job runs the script with its interpreter (``#!/bin/bash`` ->
``/bin/bash train.sh``), so it needs no execute bit.

A job file (``mlsm submit --from FILE``) holds one job per line: a command line (split as
a shell would split it, without running a shell) or a JSON object with the fields of the
API's job spec (``{"argv": [...], "gpus": 1}``). Blank lines and ``#`` comments are skipped.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import msgspec

from mlsm.errors import ValidationError

if TYPE_CHECKING:
    import click

DIRECTIVE = "#MLSM"
#: How much of a script's top is read for its shebang and directives.
MAX_SCRIPT_HEAD_BYTES = 64 << 10
#: The largest job file read (a line per job; MAX_BULK_JOBS lines of a few KiB).
MAX_JOB_FILE_BYTES = 64 << 20
#: Bad lines of a job file named in its error (the count is always given).
MAX_BAD_LINES_SHOWN = 5


@dataclass
class Script:
    path: str
    interpreter: list[str]
    #: (line number, the options of that ``#MLSM`` line)
    directives: list[tuple[int, list[str]]] = field(default_factory=list)


def read_script(path: str) -> Script | None:
    """The script at ``path`` (as typed), or None when it is no file that starts with
    ``#!`` (then the command is run as given)."""
    p = Path(path)
    try:
        if not p.is_file():
            return None
        with p.open("rb") as fh:
            head = fh.read(MAX_SCRIPT_HEAD_BYTES)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    lines = head.decode("utf-8", errors="replace").splitlines()
    try:
        interpreter = shlex.split(lines[0][2:])
    except ValueError as exc:
        raise ValidationError(f"{path} line 1: a #! line that cannot be read: {exc}") from None
    if not interpreter:
        raise ValidationError(f"{path} line 1: #! names no interpreter")
    script = Script(path, interpreter)
    for n, line in enumerate(lines[1:], 2):
        text = line.strip()
        if not text:
            continue
        if not text.startswith("#"):
            break  # the first command: directives end here
        if text.split(maxsplit=1)[0] != DIRECTIVE:
            continue  # a comment
        try:
            script.directives.append((n, shlex.split(text[len(DIRECTIVE) :])))
        except ValueError as exc:
            raise ValidationError(f"{path} line {n}: {exc}") from None
    return script


def directive_values(
    ctx: click.Context, script: Script, refused: frozenset[str], given: frozenset[str]
) -> dict[str, Any]:
    """The options the script's directives set (later lines win), by parameter name, but
    for those ``given`` on the command line; an unknown or bad directive is one error
    naming its line."""
    import click

    cmd = ctx.command
    out: dict[str, Any] = {}
    refused_opts = {
        opt: p.name for p in cmd.params if p.name in refused for opt in (*p.opts, *p.secondary_opts)
    }
    for n, args in script.directives:
        where = f"{script.path} line {n}"
        for arg in args:
            if arg.split("=", 1)[0] in refused_opts:
                raise ValidationError(f"{where}: {arg.split('=', 1)[0]} is not a directive")
        try:
            sub = cmd.make_context(ctx.info_name, [*args, "--", "true"], parent=ctx.parent)
        except click.exceptions.Exit:
            raise ValidationError(f"{where}: a directive cannot ask for help") from None
        except click.ClickException as exc:
            raise ValidationError(f"{where}: {exc.format_message()}") from None
        if sub.params.get("command") != ("true",):
            raise ValidationError(f"{where}: directives take options only, not a command")
        for name, value in sub.params.items():
            source = sub.get_parameter_source(name)
            if name == "command" or source is not click.core.ParameterSource.COMMANDLINE:
                continue
            if name not in given:
                out[name] = value
    return out


def script_argv(script: Script, args: tuple[str, ...], ship_dir: str | None) -> list[str]:
    """The job's command: the interpreter, the script (as the job sees it), its args."""
    path = script.path
    if ship_dir is not None:
        rel = Path(os.path.relpath(Path(path).resolve(), Path(ship_dir).resolve()))
        if rel.parts and rel.parts[0] == "..":
            raise ValidationError(
                f"{path} is outside the directory shipped with the job ({ship_dir}): "
                "submit from the script's directory or give --code DIR"
            )
        path = rel.as_posix()
    return [*script.interpreter, path, *args]


@dataclass
class JobLine:
    line: int
    fields: dict[str, Any]


def read_job_file(fh: IO[bytes], name: str) -> tuple[list[JobLine], list[str]]:
    """Every job of a job file, by line, and the lines that are no job (``"line 3: why"``)."""
    data = fh.read(MAX_JOB_FILE_BYTES + 1)
    if len(data) > MAX_JOB_FILE_BYTES:
        raise ValidationError(
            f"{name}: larger than {MAX_JOB_FILE_BYTES >> 20} MiB; split it", path="from"
        )
    jobs: list[JobLine] = []
    bad: list[str] = []
    for n, raw in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        try:
            if text.startswith("{"):
                obj = msgspec.json.decode(text)
                if not isinstance(obj, dict):
                    raise ValueError("expected a JSON object")
                jobs.append(JobLine(n, obj))
            else:
                jobs.append(JobLine(n, {"argv": shlex.split(text)}))
        except (ValueError, msgspec.DecodeError) as exc:
            bad.append(f"line {n}: {exc}")
    if not jobs and not bad:
        raise ValidationError(f"{name}: no jobs in it (one command or JSON object a line)")
    return jobs, bad


def bad_lines(name: str, bad: list[str], count: int = 0) -> ValidationError:
    """One error naming a job file's bad lines (``count`` of them in all, when more than
    were named); nothing was submitted."""
    count = max(count, len(bad))
    shown = "; ".join(bad[:MAX_BAD_LINES_SHOWN])
    more = f" (and {count - MAX_BAD_LINES_SHOWN} more)" if count > MAX_BAD_LINES_SHOWN else ""
    return ValidationError(
        f"{name}: {count} bad line(s), nothing submitted: {shown}{more}", path="from"
    )
