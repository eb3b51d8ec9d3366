"""The ``mlsm`` command.

Subcommands are imported lazily (their short help lives here), so ``mlsm --help``, shell
completion and ``mlsm --version`` never import a command, and a command imports only what
it uses: ``mlsm submit`` and ``mlsm jobs`` load neither httpx, textual, litestar,
sqlalchemy nor docker, and answer in tens of milliseconds (docs/benchmarks.md). Errors print one
line on stderr and exit non-zero; a traceback means a bug in mlsm, never a user mistake.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlsm.cli.root import LazyGroup as LazyGroup
    from mlsm.cli.root import cli as cli

# httpx imports its own command-line tool (and with it rich and pygments, ~55 ms) only to
# offer `httpx.main`, which mlsm never uses; every CLI call would pay for it at start-up.
# None is the import system's "blocked" entry, which typeshed's dict[str, ModuleType] omits.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

# name -> (module, attribute, short help). The short help is the first sentence of the
# command's own help (a test keeps the two equal): `mlsm --help` and shell completion show
# it without importing the command.
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "ui": ("mlsm.cli.local", "ui", "Open the dashboard."),
    "up": (
        "mlsm.cli.local",
        "up",
        "Start the embedded local service (master with SQLite + a local agent) in the background.",
    ),
    "down": (
        "mlsm.cli.local",
        "down",
        "Stop the embedded local service; running jobs go on and are re-adopted by `mlsm up`.",
    ),
    "status": (
        "mlsm.cli.local",
        "status",
        "Show whether the embedded local service runs, and where you are logged in.",
    ),
    "master": (
        "mlsm.cli.master",
        "master",
        "Run the master server (foreground; use the systemd unit for a service).",
    ),
    "agent": (
        "mlsm.cli.agent",
        "agent",
        "Run the agent on this server (foreground; use the systemd unit for a service).",
    ),
    "login": (
        "mlsm.cli.auth",
        "login",
        "Log in to the master at URL; the session token is kept 0600 in your config.",
    ),
    "logout": (
        "mlsm.cli.auth",
        "logout",
        "Revoke this session on the master and forget the stored token.",
    ),
    "whoami": ("mlsm.cli.auth", "whoami", "Show who you are on which master."),
    "passwd": ("mlsm.cli.auth", "passwd", "Change your own password; your other sessions end."),
    "users": ("mlsm.cli.users", "users", "List users (admins)."),
    "user": ("mlsm.cli.users", "user", "Add, change and disable users."),
    "token": ("mlsm.cli.users", "token", "Create, list and revoke API tokens for scripts."),
    "audit": ("mlsm.cli.audit", "audit", "Read the audit log (admins), or verify its hash chain."),
    "join-token": (
        "mlsm.cli.nodes",
        "join_token",
        "Create, list and revoke join tokens for agents (admins).",
    ),
    "nodes": (
        "mlsm.cli.nodes",
        "nodes",
        "List nodes: state, GPUs busy/total, GPU use, CPU and memory.",
    ),
    "node": ("mlsm.cli.nodes", "node", "Show, drain, resume, label, set or remove a node."),
    "submit": (
        "mlsm.cli.submit",
        "submit",
        "Submit a job: mlsm submit [OPTIONS] -- CMD ARG... or mlsm submit SCRIPT [ARG...]",
    ),
    "jobs": (
        "mlsm.cli.joblist",
        "jobs",
        "List jobs (queued and running unless --all); REASON says why a job waits.",
    ),
    "job": (
        "mlsm.cli.jobs",
        "job",
        "Show, edit, release or purge a job.",
    ),
    "logs": (
        "mlsm.cli.jobs",
        "logs",
        "Print a job's log (stdout and stderr), or follow it live with -f.",
    ),
    "cancel": (
        "mlsm.cli.cancel",
        "cancel",
        "Cancel jobs: queued ones at once, running ones with SIGTERM then SIGKILL.",
    ),
    "wait": (
        "mlsm.cli.outputs",
        "wait",
        "Wait until the jobs end (ids or array tasks, 12_3).",
    ),
    "outputs": ("mlsm.cli.outputs", "outputs", "List or fetch a job's outputs."),
    "datasets": (
        "mlsm.cli.datasets",
        "datasets",
        "List datasets: one line per copy (name, node, size, files, tags).",
    ),
    "dataset": (
        "mlsm.cli.datasets",
        "dataset",
        "Show, import, copy, move and remove datasets; edit their description and tags.",
    ),
    "transfers": (
        "mlsm.cli.datasets",
        "transfers",
        "List dataset imports, copies, moves and deletes, newest first.",
    ),
    "db": (
        "mlsm.cli.db",
        "db",
        "Back up or upgrade the master's database (run on the master's server).",
    ),
    "projects": (
        "mlsm.cli.projects",
        "projects",
        "List your projects: name, node, size, owner, state (admins: --all for everyone's).",
    ),
    "project": (
        "mlsm.cli.projects",
        "project",
        "Push, copy or remove a project: a named working tree of yours kept on a node.",
    ),
    "settings": (
        "mlsm.cli.settings",
        "settings_cmd",
        "Show or change the lab's policies (admins change them).",
    ),
    "restart": (
        "mlsm.cli.restart",
        "restart",
        "Submit jobs again with the same request (command, resources, code snapshot): each becomes a new job, whose `mlsm job show` names the one it re-runs.",
    ),
    "events": (
        "mlsm.cli.events",
        "events",
        "Show the lab's events: your jobs' and the nodes' (admins: all), oldest first.",
    ),
    "notify": (
        "mlsm.cli.events",
        "notify",
        "Send events to a webhook (Slack, Mattermost or your own) or by email.",
    ),
    "usage": (
        "mlsm.cli.usage",
        "usage",
        "GPU-hours (allocated and utilisation-weighted), jobs, waits and energy.",
    ),
    "reserve": (
        "mlsm.cli.usage",
        "reserve",
        "Reserve GPUs for a while: mlsm reserve --gpus 2 --for 8h [--node N] [--start TIME].",
    ),
    "shell": (
        "mlsm.cli.interactive",
        "shell",
        "Open an interactive shell inside running job JOB_ID (its owner and admins).",
    ),
    "session": (
        "mlsm.cli.interactive",
        "session",
        "Allocate GPUs through the queue and open a shell there when they are yours.",
    ),
    "forward": (
        "mlsm.cli.interactive",
        "forward",
        "Forward local port LOCAL ([HOST:]PORT, default 127.0.0.1:PORT) to PORT inside JOB_ID.",
    ),
    "web": (
        "mlsm.cli.web",
        "web",
        "Serve the dashboard in a browser, behind the master's login and roles.",
    ),
    "completion": (
        "mlsm.cli.completion",
        "completion",
        "Print the completion script of SHELL (default: $SHELL's), or --install it.",
    ),
}


def main(argv: list[str] | None = None) -> Any:
    """The ``mlsm`` executable: a hot call (:mod:`mlsm.cli.fast`) runs without click, any
    other through the click CLI (:mod:`mlsm.cli.root`); errors end both the same way."""
    from mlsm.cli.output import echo, error
    from mlsm.errors import MlsmError

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        from mlsm.cli.fast import fast_call

        call = fast_call(args)
        if call is not None:
            return call()
        from mlsm.cli.root import run

        return run(args)
    except MlsmError as exc:
        error(_one_line(exc))
        sys.exit(2 if exc.code in ("config_invalid", "validation_error", "bad_request") else 1)
    except KeyboardInterrupt:
        echo("mlsm: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)


def __getattr__(name: str) -> Any:
    """``cli`` and ``LazyGroup`` live in :mod:`mlsm.cli.root` (importing click); they are
    found here too, without making every call import click."""
    if name in ("cli", "LazyGroup"):
        from mlsm.cli import root

        return getattr(root, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _one_line(exc: Any) -> str:
    """The error's message on one line, led by the field a validation error names. The
    message may come from a master or an HTTP server: :func:`~mlsm.cli.output.error` shows
    its controls as escapes."""
    message = " ".join(str(exc.message).split())
    details = exc.details if isinstance(exc.details, dict) else {}
    path = details.get("path") if exc.code == "validation_error" else None
    if isinstance(path, str) and path and not message.startswith(path):
        return f"{path}: {message}"
    return message
