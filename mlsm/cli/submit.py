"""``mlsm submit``: one job (or an array) from the terminal, with the code it runs in.

Its options are written once (:data:`OPTIONS`) for its click command and for the fast
path (:mod:`mlsm.cli.fast`), which submits an ordinary command line without click.

Over 400 lines as one piece: the option rows, the job spec built from them and every form
of submit (a command line on either path, a script's directives, ``--from FILE``) share
the same helpers (``_spec_fields``, ``_ship_dir``, ``_send``); split, the forms would
drift apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, BinaryIO

from mlsm.cli.batch import read_script
from mlsm.cli.common import JSON, RootOptions, client_from, parse_duration
from mlsm.cli.opts import Arg, Declined, Opt, click_command, fast_parse
from mlsm.cli.output import echo, emit_json
from mlsm.errors import MlsmError, ValidationError

if TYPE_CHECKING:
    from collections.abc import Callable

    import click

    from mlsm.cli.batch import JobLine
    from mlsm.client import Client
    from mlsm.wire import api


def _kv(items: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            import click

            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=what)
        out[k] = v
    return out


#: The options of ``mlsm submit``, for its click command and its fast path (mlsm.cli.opts).
OPTIONS = (
    Opt(("--name",), "name", default="", help="A name for the job (default: the command)."),
    Opt(("--gpus",), "gpus", "int", 0, "Number of GPUs.", low=0, high=64, show_default=True),
    Opt(("--gpu-mem",), "gpu_mem", "float", 0.0, "GiB of memory each GPU must have.", low=0),
    Opt(("--cpus",), "cpus", "float", 0.0, "CPUs to reserve.", low=0),
    Opt(("--mem",), "mem", "float", 0.0, "GiB of memory to reserve.", low=0),
    Opt(("--node",), "node", help="Run on this node only."),
    Opt(
        ("--label",),
        "labels",
        help="Run on a node with this k=v label (repeatable).",
        multiple=True,
    ),
    Opt(
        ("--dataset",),
        "datasets",
        help="Run where this dataset is stored (repeatable).",
        multiple=True,
    ),
    Opt(
        ("--env",),
        "env_kind",
        "choice",
        "process",
        choices=("process", "venv", "conda", "docker"),
        show_default=True,
    ),
    Opt(("--venv",), "venv", default="", help="Path of a virtualenv on the node (--env venv)."),
    Opt(
        ("--conda",),
        "conda",
        default="",
        help="Name of a conda environment on the node (--env conda).",
    ),
    Opt(("--image",), "image", default="", help="Container image (--env docker)."),
    Opt(
        ("--mount",),
        "mounts",
        help="SRC:DST[:ro|rw] host path into the container (repeatable).",
        multiple=True,
    ),
    Opt(
        ("--keep-container",),
        "keep_container",
        "flag",
        help="Keep the container after the job ends.",
    ),
    Opt(
        ("--code",),
        "code_dir",
        "dir",
        help="Ship this directory and run the job in its copy (default: the current directory).",
    ),
    Opt(
        ("--no-code",),
        "no_code",
        "flag",
        help="Ship nothing: the job runs in its output directory.",
    ),
    Opt(
        ("--code-include-git",),
        "code_include_git",
        "flag",
        help="Ship the .git directory too (left out by default).",
    ),
    Opt(
        ("--project",),
        "project",
        default="",
        help="Run in your project NAME (mlsm project push), on a node that holds it; ships nothing.",
    ),
    Opt(
        ("--workdir",),
        "workdir",
        default="",
        help="Run in this absolute path on the node instead; ships nothing.",
    ),
    Opt(
        ("-e", "--setenv"),
        "env",
        help="KEY=VALUE for the job's environment (repeatable).",
        multiple=True,
    ),
    Opt(("--priority",), "priority", "int", 0, low=-1000, high=1000, show_default=True),
    Opt(
        ("--after",),
        "after",
        help="JOBID[:ok|any]: start after that job (repeatable).",
        multiple=True,
    ),
    Opt(
        ("--retries",),
        "retries",
        "int",
        0,
        "Requeue this often after an infrastructure fault.",
        low=0,
        high=100,
        show_default=True,
    ),
    Opt(("--timeout",), "timeout", help="Stop the job after this long (e.g. 90m, 2h)."),
    Opt(
        ("--array",),
        "array",
        default="",
        help="N tasks: A-B[%T] (MLSM_ARRAY_INDEX; at most T running at once).",
    ),
    Opt(("--hold",), "hold", "flag", help="Submit held; release with `mlsm job release ID`."),
    Opt(
        ("--preemptible",),
        "preemptible",
        "flag",
        help="Run on GPUs that would otherwise idle; stopped and requeued (no retry used) "
        "when a normal job needs them.",
    ),
    Opt(
        ("--preempt-grace",),
        "preempt_grace",
        help="Time between SIGTERM and SIGKILL when preempted, to checkpoint "
        "(e.g. 60s; default 10s).",
    ),
    Opt(
        ("--fetch",),
        "fetch_dir",
        "dir",
        help="Wait for the job to end, then fetch its outputs into DIR (array tasks: DIR/job-ID); "
        "exit as mlsm wait does.",
    ),
    Opt(
        ("-q", "--parsable"),
        "parsable",
        "flag",
        help="Print only the job's id (an array's id; one per job).",
    ),
    Opt(
        ("--dry-run",),
        "dry_run",
        "flag",
        help="Say where and why the job would run now, or why it would wait; submit nothing.",
    ),
    Opt(
        ("--from",),
        "from_file",
        "file",
        help="Submit one job per line of FILE (- for stdin): a command line or a JSON job spec.",
    ),
    JSON,
)
#: The command to run: every word after the options, unprocessed.
COMMAND = Arg("command", rest=True)


def _submit(**params: Any) -> None:
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
    import click

    ctx = click.get_current_context()
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
        from mlsm.cli.batch import directive_values

        params.update(directive_values(ctx, script, _NOT_DIRECTIVES, _from_command_line(ctx)))
    body, ship_dir = _request(params, script)
    with client_from(ctx) as c:
        if params["dry_run"]:
            _show_plan(c.jobs.plan(body), params["as_json"])
            return
        reply = _send(c, body, ship_dir, params)
        fetch_dir = params["fetch_dir"]
        if fetch_dir is not None:
            from pathlib import Path

            from mlsm.cli.outputs import end_status, fetch_ended, wait_for

            as_json = params["as_json"]
            ended = wait_for(c, reply.ids or [reply.job.id])
            for j in ended:
                echo(f"job {j.id} {j.state}" + (f": {j.reason}" if j.reason else ""), err=as_json)
            fetch_ended(c, ended, Path(fetch_dir), as_json=as_json)
            ctx.exit(end_status(ended))


def fast(argv: list[str]) -> Callable[[], None]:
    """The fast path (:mod:`mlsm.cli.fast`): a command line (not a script) submitted with
    any options but --from, --dry-run, --fetch and --code, prepared to send as the click
    command sends it."""
    params = fast_parse(OPTIONS, COMMAND, argv)  # declines --from, --fetch and --code
    command = params["command"]
    if params["dry_run"]:
        raise Declined("--dry-run is the click command's")
    if not command or read_script(command[0]) is not None:
        raise Declined("no command, or a script: the click command reads its directives")
    body, ship_dir = _request(params, None)
    root = RootOptions.from_env()

    def send() -> None:
        with client_from(root) as c:
            _send(c, body, ship_dir, params)

    return send


def _request(params: dict[str, Any], script: Any) -> tuple[api.JobSubmit, str | None]:
    """The job spec the options ask for, and the directory to ship (None: none). Sends
    nothing; a bad option is an error here, before anything is sent."""
    import msgspec

    from mlsm.wire import api
    from mlsm.wire.explain import validation_error

    command: tuple[str, ...] = params["command"]
    ship_dir = _ship_dir(params)
    if script is None:
        argv = list(command)
    else:
        from mlsm.cli.batch import script_argv

        argv = script_argv(script, command[1:], ship_dir)
    try:
        body = msgspec.convert({**_spec_fields(params), "argv": argv}, api.JobSubmit)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    return body, ship_dir


def _send(
    c: Client, body: api.JobSubmit, ship_dir: str | None, params: dict[str, Any]
) -> api.SubmitReply:
    """Ship the code (when asked), submit, and say what was submitted."""
    import msgspec

    as_json, parsable = params["as_json"], params["parsable"]
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
    return reply


def __getattr__(name: str) -> Any:
    """``submit``: the click command, made on first use (the fast path needs no click)."""
    if name == "submit":
        command = click_command(
            "submit",
            _submit,
            OPTIONS,
            COMMAND,
            ignore_unknown_options=False,
            allow_interspersed_args=False,
        )
        globals()[name] = command
        return command
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    submit: click.Command


#: Options a script's directives may not set: they say how to submit, not what.
_NOT_DIRECTIVES = frozenset({"from_file", "dry_run", "as_json", "parsable", "fetch_dir"})


def _from_command_line(ctx: click.Context) -> frozenset[str]:
    """The parameters given on the command line (they win over directives)."""
    import click

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
        import click

        other = f"--{elsewhere[0]}" if elsewhere else "--no-code"
        raise click.UsageError(f"--code ships a directory; it cannot go with {other}")
    if len(elsewhere) > 1:
        import click

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

    from mlsm.cli.batch import bad_lines, read_job_file
    from mlsm.wire import api
    from mlsm.wire.explain import validation_error

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
    from mlsm.cli.batch import bad_lines

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
