"""The ``mlsm`` command.

Subcommands are imported lazily (their short help lives here), so ``mlsm --help``, shell
completion and ``mlsm --version`` never import a command, and a command imports only what
it uses: ``mlsm submit`` and ``mlsm jobs`` load neither httpx, textual, litestar,
sqlalchemy nor docker, and answer in tens of milliseconds (docs/benchmarks.md). Errors print one
line on stderr and exit non-zero; a traceback means a bug in mlsm, never a user mistake.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

import click

from mlsm import PROTOCOL_VERSION, __version__

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

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
        "mlsm.cli.jobs",
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


class LazyGroup(click.Group):
    """Commands by name (:data:`_COMMANDS`): a command's module is imported only when that
    command runs or shows its own help (click's "lazily loading subcommands" pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        entry = _COMMANDS.get(name)
        if entry is None:
            return None
        try:
            mod = importlib.import_module(entry[0])
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(entry[0]):
                return None  # a command whose module is not part of this build yet
            raise
        return getattr(mod, entry[1], None)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        """Command names with their short help from the registry (click's own would import
        every command to ask it), then the group's options."""
        from click.shell_completion import CompletionItem

        names = [
            CompletionItem(name, help=_COMMANDS[name][2])
            for name in self.list_commands(ctx)
            if name.startswith(incomplete)
        ]
        return names + click.Command.shell_complete(self, ctx, incomplete)


@click.group(
    cls=LazyGroup,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(
    __version__, "-V", "--version", message=f"mlsm %(version)s (protocol {PROTOCOL_VERSION})"
)
@click.option(
    "--url",
    envvar="MLSM_URL",
    help="Master URL (default: the stored login or the embedded service).",
)
@click.option(
    "--token", envvar="MLSM_TOKEN", help="API or session token (default: the stored login)."
)
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None) -> None:
    """mlsm - the ML Server Manager: your lab's GPU servers, jobs and datasets.

    With no command, opens the dashboard (starting the embedded local service when
    nothing is configured).
    """
    ctx.ensure_object(dict)
    ctx.obj["url"] = url
    ctx.obj["token"] = token
    if ctx.invoked_subcommand is None:
        from mlsm.cli.local import open_default

        open_default(ctx)


def main(argv: list[str] | None = None) -> Any:
    from mlsm.cli.output import echo, error, show_click_error
    from mlsm.errors import MlsmError

    try:
        return cli.main(args=argv, prog_name="mlsm", standalone_mode=False)
    except click.exceptions.Abort:
        echo("mlsm: aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        show_click_error(exc)
        sys.exit(exc.exit_code)
    except MlsmError as exc:
        error(_one_line(exc))
        sys.exit(2 if exc.code in ("config_invalid", "validation_error", "bad_request") else 1)
    except KeyboardInterrupt:
        echo("mlsm: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)


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
