"""The ``mlsm`` command.

Subcommands are imported lazily (their help text lives here), so ``mlsm --help`` and
``mlsm --version`` never import textual, litestar, sqlalchemy or docker. Errors print one
line on stderr and exit non-zero; a traceback means a bug in mlsm, never a user mistake.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from mlsm import PROTOCOL_VERSION, __version__

# httpx imports its own command-line tool (and with it rich and pygments, ~55 ms) only to
# offer `httpx.main`, which mlsm never uses; every CLI call would pay for it at start-up.
# None is the import system's "blocked" entry, which typeshed's dict[str, ModuleType] omits.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

# name -> (module, attribute, short help)
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "ui": ("mlsm.cli.local", "ui", "Open the dashboard."),
    "up": ("mlsm.cli.local", "up", "Start the embedded local service (master + agent)."),
    "down": ("mlsm.cli.local", "down", "Stop the embedded local service."),
    "status": ("mlsm.cli.local", "status", "Show the embedded local service and the login."),
    "master": ("mlsm.cli.master", "master", "Run the master server."),
    "agent": ("mlsm.cli.agent", "agent", "Run the agent on this server."),
    "login": ("mlsm.cli.auth", "login", "Log in to a master and keep the token."),
    "logout": ("mlsm.cli.auth", "logout", "Revoke the session and forget the token."),
    "whoami": ("mlsm.cli.auth", "whoami", "Show who you are logged in as."),
    "passwd": ("mlsm.cli.auth", "passwd", "Change your own password."),
    "users": ("mlsm.cli.users", "users", "List users."),
    "user": ("mlsm.cli.users", "user", "Add, change and disable users."),
    "token": ("mlsm.cli.users", "token", "Create, list and revoke API tokens."),
    "audit": ("mlsm.cli.audit", "audit", "Read and verify the audit log."),
    "join-token": (
        "mlsm.cli.nodes",
        "join_token",
        "Create, list and revoke join tokens for agents.",
    ),
    "nodes": ("mlsm.cli.nodes", "nodes", "List nodes."),
    "node": ("mlsm.cli.nodes", "node", "Show, drain, resume or remove a node."),
    "submit": ("mlsm.cli.submit", "submit", "Submit a job: mlsm submit [OPTIONS] -- CMD ARG..."),
    "jobs": ("mlsm.cli.jobs", "jobs", "List jobs."),
    "job": ("mlsm.cli.jobs", "job", "Show a job."),
    "logs": ("mlsm.cli.jobs", "logs", "Print or follow a job's log."),
    "cancel": ("mlsm.cli.cancel", "cancel", "Cancel jobs by id, range, array, user, name, state."),
    "restart": ("mlsm.cli.restart", "restart", "Submit jobs again with the same request."),
    "wait": ("mlsm.cli.outputs", "wait", "Wait until jobs end (and fetch their outputs)."),
    "outputs": ("mlsm.cli.outputs", "outputs", "List or fetch a job's outputs."),
    "datasets": ("mlsm.cli.datasets", "datasets", "List datasets."),
    "dataset": ("mlsm.cli.datasets", "dataset", "Show, import, copy, move or remove datasets."),
    "transfers": ("mlsm.cli.datasets", "transfers", "List dataset imports, copies and deletes."),
    "db": ("mlsm.cli.db", "db", "Back up or upgrade the master's database."),
    "projects": ("mlsm.cli.projects", "projects", "List projects (trees kept on nodes)."),
    "project": ("mlsm.cli.projects", "project", "Push, copy or remove a project on a node."),
    "settings": ("mlsm.cli.settings", "settings_cmd", "Show or change the lab's policies."),
    "events": ("mlsm.cli.events", "events", "Show or follow the lab's events."),
    "notify": ("mlsm.cli.events", "notify", "Send events to webhooks or by email."),
    "usage": ("mlsm.cli.usage", "usage", "GPU-hours, utilisation, waits and energy."),
    "reserve": ("mlsm.cli.usage", "reserve", "Reserve GPUs for a while; list or cancel."),
    "shell": ("mlsm.cli.interactive", "shell", "Open a shell inside a running job."),
    "web": ("mlsm.cli.web", "web", "Serve the dashboard in a browser, behind the login."),
    "session": (
        "mlsm.cli.interactive",
        "session",
        "Allocate GPUs through the queue and open a shell there.",
    ),
    "forward": ("mlsm.cli.interactive", "forward", "Forward a local port to a port in a job."),
    "completion": (
        "mlsm.cli.completion",
        "completion",
        "Print or install the shell completion script.",
    ),
}


class LazyGroup(click.Group):
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
