"""``mlsm submit``: one job (or an array) from the terminal, with the code it runs in."""

from __future__ import annotations

import click

from mlsm.cli.common import client_from, json_option, parse_duration
from mlsm.cli.output import echo, emit_json
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
    help="Wait for the job to end, then fetch its outputs into DIR (array tasks: DIR/job-ID).",
)
@json_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def submit(
    ctx: click.Context,
    /,
    command: tuple[str, ...],
    env: tuple[str, ...],
    labels: tuple[str, ...],
    timeout: str | None,
    preempt_grace: str | None,
    datasets: tuple[str, ...],
    mounts: tuple[str, ...],
    after: tuple[str, ...],
    as_json: bool,
    gpu_mem: float,
    mem: float,
    fetch_dir: str | None,
    code_dir: str | None,
    no_code: bool,
    code_include_git: bool,
    **opts: object,
) -> None:
    """Submit a job: mlsm submit [OPTIONS] -- CMD ARG...

    The current directory (or --code DIR) is shipped with the job: the job runs on its
    node in its own copy of that tree, as you. Files listed in .gitignore or .mlsmignore
    stay behind, and so does .git unless --code-include-git; links that leave the tree,
    devices, sockets and FIFOs are refused. Only files the master does not have yet are
    sent. Outputs go to $MLSM_OUTPUT_DIR (the job's output directory on the node).
    --no-code ships nothing (the job runs in its output directory), --workdir PATH runs
    in a path on the node, --project NAME in a project pushed with mlsm project push.

    The command is run as an argument list, never through a shell; to use shell syntax,
    submit a script file or say so: mlsm submit -- bash -c 'a | b'.
    """
    import msgspec

    elsewhere = [
        f for f, v in (("--workdir", opts["workdir"]), ("--project", opts["project"])) if v
    ]
    if code_dir is not None and (no_code or elsewhere):
        raise click.UsageError(
            f"--code ships a directory; it cannot go with {(elsewhere or ['--no-code'])[0]}"
        )
    if len(elsewhere) > 1:
        raise click.UsageError("--workdir and --project name two places to run in; give one")
    ship_dir = None if (no_code or elsewhere) else (code_dir or ".")
    try:
        body = msgspec.convert(
            {
                **opts,
                "argv": list(command),
                "env": _kv(env, "-e"),
                "labels": _kv(labels, "--label"),
                "datasets": list(datasets),
                "mounts": list(mounts),
                "after": list(after),
                "gpu_mem_gib": gpu_mem,
                "mem_gib": mem,
                "timeout_s": parse_duration(timeout) if timeout else 0.0,
                "preempt_grace_s": parse_duration(preempt_grace) if preempt_grace else 0.0,
            },
            api.JobSubmit,
        )
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    with client_from(ctx) as c:
        shipped = None
        if ship_dir is not None:
            from mlsm.cli.codeship import ship

            shipped = ship(c, ship_dir, include_git=code_include_git)
            body = msgspec.structs.replace(body, code=shipped.digest)
        reply = c.jobs.submit(body)
        if shipped is not None:  # said once the job exists: a refused submit is one line
            echo(shipped.summary(), err=True)
        if as_json:
            emit_json(reply)
        elif len(reply.ids) > 1:
            echo(f"submitted array of {len(reply.ids)} jobs: {reply.ids[0]}..{reply.ids[-1]}")
        else:
            echo(f"submitted job {reply.job.id}")
        if fetch_dir is not None:
            from pathlib import Path

            from mlsm.cli.outputs import fetch_ended, wait_for

            ended = wait_for(c, reply.ids or [reply.job.id])
            for j in ended:
                echo(f"job {j.id} {j.state}" + (f": {j.reason}" if j.reason else ""), err=as_json)
            fetch_ended(c, ended, Path(fetch_dir), as_json=as_json)
            if any(j.state != "succeeded" for j in ended):
                ctx.exit(1)
