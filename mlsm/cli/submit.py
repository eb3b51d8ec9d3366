"""``mlsm submit``: one job (or an array) from the terminal, with the code it runs in."""

from __future__ import annotations

from typing import Any, BinaryIO

import click

from mlsm.cli.batch import (
    JobLine,
    bad_lines,
    directive_values,
    read_job_file,
    read_script,
    script_argv,
)
from mlsm.cli.common import client_from, json_option, parse_duration
from mlsm.cli.output import echo, emit_json
from mlsm.errors import MlsmError, ValidationError
from mlsm.wire import api
from mlsm.wire.explain import validation_error


def _kv(items: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=what)
        out[k] = v
    return out


@click.command(context_settings={"ignore_unknown_options": False, "allow_interspersed_args": False})
@click.option("--name", default="", help="A name for the job (default: the command).")
@click.option(
    "--gpus", type=click.IntRange(0, 64), default=0, show_default=True, help="Number of GPUs."
)
@click.option(
    "--gpu-mem", type=click.FloatRange(0), default=0.0, help="GiB of memory each GPU must have."
)
@click.option("--cpus", type=click.FloatRange(0), default=0.0, help="CPUs to reserve.")
@click.option("--mem", type=click.FloatRange(0), default=0.0, help="GiB of memory to reserve.")
@click.option("--node", default=None, help="Run on this node only.")
@click.option(
    "--label", "labels", multiple=True, help="Run on a node with this k=v label (repeatable)."
)
@click.option(
    "--dataset", "datasets", multiple=True, help="Run where this dataset is stored (repeatable)."
)
@click.option(
    "--env",
    "env_kind",
    type=click.Choice(["process", "venv", "conda", "docker"]),
    default="process",
    show_default=True,
)
@click.option("--venv", default="", help="Path of a virtualenv on the node (--env venv).")
@click.option("--conda", default="", help="Name of a conda environment on the node (--env conda).")
@click.option("--image", default="", help="Container image (--env docker).")
@click.option(
    "--mount",
    "mounts",
    multiple=True,
    help="SRC:DST[:ro|rw] host path into the container (repeatable).",
)
@click.option("--keep-container", is_flag=True, help="Keep the container after the job ends.")
@click.option(
    "--code",
    "code_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Ship this directory and run the job in its copy (default: the current directory).",
)
@click.option("--no-code", is_flag=True, help="Ship nothing: the job runs in its output directory.")
@click.option(
    "--code-include-git", is_flag=True, help="Ship the .git directory too (left out by default)."
)
@click.option(
    "--project",
    default="",
    help="Run in your project NAME (mlsm project push), on a node that holds it; ships nothing.",
)
@click.option(
    "--workdir",
    default="",
    help="Run in this absolute path on the node instead; ships nothing.",
)
@click.option(
    "-e", "--setenv", "env", multiple=True, help="KEY=VALUE for the job's environment (repeatable)."
)
@click.option("--priority", type=click.IntRange(-1000, 1000), default=0, show_default=True)
@click.option("--after", multiple=True, help="JOBID[:ok|any]: start after that job (repeatable).")
@click.option(
    "--retries",
    type=click.IntRange(0, 100),
    default=0,
    show_default=True,
    help="Requeue this often after an infrastructure fault.",
)
@click.option("--timeout", default=None, help="Stop the job after this long (e.g. 90m, 2h).")
@click.option(
    "--array", default="", help="N tasks: A-B[%T] (MLSM_ARRAY_INDEX; at most T running at once)."
)
@click.option("--hold", is_flag=True, help="Submit held; release with `mlsm job release ID`.")
@click.option(
    "--preemptible",
    is_flag=True,
    help="Run on GPUs that would otherwise idle; stopped and requeued (no retry used) "
    "when a normal job needs them.",
)
@click.option(
    "--preempt-grace",
    default=None,
    help="Time between SIGTERM and SIGKILL when preempted, to checkpoint (e.g. 60s; default 10s).",
)
@click.option(
    "--fetch",
    "fetch_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Wait for the job to end, then fetch its outputs into DIR (array tasks: DIR/job-ID); "
    "exit as mlsm wait does.",
)
@click.option(
    "-q", "--parsable", is_flag=True, help="Print only the job's id (an array's id; one per job)."
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Say where and why the job would run now, or why it would wait; submit nothing.",
)
@click.option(
    "--from",
    "from_file",
    type=click.File("rb"),
    default=None,
    help="Submit one job per line of FILE (- for stdin): a command line or a JSON job spec.",
)
@json_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def submit(ctx: click.Context, /, **params: Any) -> None:
    """Submit a job: mlsm submit [OPTIONS] -- CMD ARG...  or  mlsm submit SCRIPT [ARG...]

    The current directory (or --code DIR) is shipped with the job: the job runs on its
    node in its own copy of that tree, as you. Files listed in .gitignore or .mlsmignore
    stay behind, and so does .git unless --code-include-git; links that leave the tree,
    devices, sockets and FIFOs are refused. Only files the master does not have yet are
    sent. Outputs go to $MLSM_OUTPUT_DIR (the job's output directory on the node).
    --no-code ships nothing (the job runs in its output directory), --workdir PATH runs
    in a path on the node, --project NAME in a project pushed with mlsm project push.

    The command is run as an argument list, never through a shell; to use shell syntax,
    submit a script file or say so: mlsm submit -- bash -c 'a | b'.

    A script that starts with #! is run with its interpreter, and the `#MLSM --gpus 2`
    lines among the comments at its top are options (options given here win).
    --from FILE submits every line of FILE in one call (all or none); -q prints only ids.
    """
    import msgspec

    from_file = params.pop("from_file")
    command: tuple[str, ...] = params["command"]
    if from_file is not None:
        if command:
            raise ValidationError("--from FILE takes the commands from FILE; give no command")
        if params["dry_run"] or params["fetch_dir"]:
            raise ValidationError("--from FILE cannot go with --dry-run or --fetch")
        _submit_file(ctx, from_file, params)
        return
    if not command:
        raise ValidationError("give a command (mlsm submit -- CMD ARG...) or a script")
    script = read_script(command[0])
    if script is not None:
        params.update(directive_values(ctx, script, _NOT_DIRECTIVES, _from_command_line(ctx)))
    ship_dir = _ship_dir(params)
    argv = list(command) if script is None else script_argv(script, command[1:], ship_dir)
    try:
        body = msgspec.convert({**_spec_fields(params), "argv": argv}, api.JobSubmit)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    as_json, parsable = params["as_json"], params["parsable"]
    with client_from(ctx) as c:
        if params["dry_run"]:
            _show_plan(c.jobs.plan(body), as_json)
            return
        shipped = None
        if ship_dir is not None:
            from mlsm.cli.codeship import ship

            shipped = ship(c, ship_dir, include_git=params["code_include_git"])
            body = msgspec.structs.replace(body, code=shipped.digest)
        reply = c.jobs.submit(body)
        if shipped is not None and not parsable:  # said once the job exists
            echo(shipped.summary(), err=True)
        if as_json:
            emit_json(reply)
        elif parsable:
            echo(str(reply.job.id))
        elif len(reply.ids) > 1:
            echo(
                f"submitted array {reply.job.id} of {len(reply.ids)} jobs: "
                f"{reply.ids[0]}..{reply.ids[-1]} (tasks {reply.job.id}_[...])"
            )
        else:
            echo(f"submitted job {reply.job.id}")
        if reply.warning:
            echo(f"mlsm: warning: {reply.warning}; it will wait", err=True)
        fetch_dir = params["fetch_dir"]
        if fetch_dir is not None:
            from pathlib import Path

            from mlsm.cli.outputs import end_status, fetch_ended, wait_for

            ended = wait_for(c, reply.ids or [reply.job.id])
            for j in ended:
                echo(f"job {j.id} {j.state}" + (f": {j.reason}" if j.reason else ""), err=as_json)
            fetch_ended(c, ended, Path(fetch_dir), as_json=as_json)
            ctx.exit(end_status(ended))


#: Options a script's directives may not set: they say how to submit, not what.
_NOT_DIRECTIVES = frozenset({"from_file", "dry_run", "as_json", "parsable", "fetch_dir"})


def _from_command_line(ctx: click.Context) -> frozenset[str]:
    """The parameters given on the command line (they win over directives)."""
    return frozenset(
        name
        for name in ctx.params
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    )


def _ship_dir(params: dict[str, Any]) -> str | None:
    """The directory to ship, or None; conflicting choices are a usage error."""
    code_dir, no_code = params["code_dir"], params["no_code"]
    elsewhere = [f for f in ("workdir", "project") if params[f]]
    if code_dir is not None and (no_code or elsewhere):
        other = f"--{elsewhere[0]}" if elsewhere else "--no-code"
        raise click.UsageError(f"--code ships a directory; it cannot go with {other}")
    if len(elsewhere) > 1:
        raise click.UsageError("--workdir and --project name two places to run in; give one")
    return None if (no_code or elsewhere) else (code_dir or ".")


def _spec_fields(params: dict[str, Any]) -> dict[str, Any]:
    """The API job spec's fields from the command's options (argv aside)."""
    timeout = params["timeout"]
    return {
        **{k: params[k] for k in _SPEC_OPTIONS},
        "env": _kv(params["env"], "-e"),
        "labels": _kv(params["labels"], "--label"),
        "datasets": list(params["datasets"]),
        "mounts": list(params["mounts"]),
        "after": list(params["after"]),
        "gpu_mem_gib": params["gpu_mem"],
        "mem_gib": params["mem"],
        "timeout_s": parse_duration(timeout) if timeout else 0.0,
        "preempt_grace_s": parse_duration(grace) if (grace := params["preempt_grace"]) else 0.0,
    }


#: Options that are job spec fields of the same name.
_SPEC_OPTIONS = (
    "name",
    "gpus",
    "cpus",
    "node",
    "env_kind",
    "venv",
    "conda",
    "image",
    "keep_container",
    "workdir",
    "priority",
    "retries",
    "array",
    "hold",
    "project",
    "preemptible",
)


def _show_plan(plan: api.SubmitPlan, as_json: bool) -> None:
    if as_json:
        emit_json(plan)
        return
    if plan.start_now:
        gpus = f" on GPUs {','.join(map(str, plan.gpu_indices))}" if plan.gpu_indices else ""
        echo(f"would start now on {plan.node}{gpus} (dry run: nothing submitted)")
    elif plan.never:
        echo(f"would be cancelled: {plan.reason} (dry run: nothing submitted)")
    else:
        echo(f"would wait: {plan.reason} (dry run: nothing submitted)")
    if plan.warning:
        echo(f"mlsm: warning: {plan.warning}; it would wait", err=True)


def _submit_file(ctx: click.Context, fh: BinaryIO, params: dict[str, Any]) -> None:
    """``--from FILE``: every line a job, in one call; the options given are each line's
    defaults (a JSON line's own fields win)."""
    import msgspec

    name = "stdin" if fh.name in ("-", "<stdin>") else fh.name
    lines, bad = read_job_file(fh, name)
    base = _spec_fields(params)
    ship_dir = _ship_dir(params)
    specs: list[api.JobSubmit] = []
    for job in lines:
        try:
            specs.append(msgspec.convert({**base, **job.fields}, api.JobSubmit))
        except msgspec.ValidationError as exc:
            bad.append(f"line {job.line}: {validation_error(exc).message}")
    if bad:
        raise bad_lines(name, sorted(bad, key=_line_number))
    with client_from(ctx) as c:
        if ship_dir is not None and any(_runs_in_code(s) for s in specs):
            from mlsm.cli.codeship import ship

            shipped = ship(c, ship_dir, include_git=params["code_include_git"])
            specs = [
                msgspec.structs.replace(s, code=shipped.digest) if _runs_in_code(s) else s
                for s in specs
            ]
        try:
            reply = c.jobs.submit_many(specs)
        except MlsmError as exc:
            raise _by_line(exc, lines, name) from None
    if params["as_json"]:
        emit_json(reply)
    elif params["parsable"]:
        for jid in reply.ids:
            echo(str(jid))
    else:
        echo(f"submitted {len(reply.ids)} jobs from {name}: {reply.ids[0]}..{reply.ids[-1]}")


def _line_number(problem: str) -> int:
    """``"line 12: ..."`` -> 12 (problems are named in the file's order)."""
    return int(problem.split(":", 1)[0].removeprefix("line "))


def _runs_in_code(spec: api.JobSubmit) -> bool:
    return not (spec.workdir or spec.project or spec.code)


def _by_line(exc: MlsmError, lines: list[JobLine], name: str) -> MlsmError:
    """The master's per-job problems (``jobs[i]``) as the job file's line numbers."""
    problems = exc.details.get("errors") if isinstance(exc.details, dict) else None
    if not isinstance(problems, list):
        return exc
    bad = [
        f"line {lines[p['index']].line}: {p['message']}"
        for p in problems
        if isinstance(p, dict) and isinstance(p.get("index"), int) and p["index"] < len(lines)
    ]
    count = exc.details.get("count")
    return bad_lines(name, bad, count if isinstance(count, int) else 0)
