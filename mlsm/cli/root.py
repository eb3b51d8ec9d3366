"""The root ``mlsm`` click group: the full CLI, whose commands are loaded by name from
the registry (:data:`mlsm.cli._COMMANDS`). :func:`mlsm.cli.main` runs it for every call
its fast path (:mod:`mlsm.cli.fast`) does not take."""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

import click

from mlsm import PROTOCOL_VERSION, __version__
from mlsm.cli import _COMMANDS

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem


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


def run(args: list[str]) -> Any:
    """Run the click CLI on ``args``; click's own exits and errors end here, the rest
    (:class:`~mlsm.errors.MlsmError`, interrupts) reach :func:`mlsm.cli.main`."""
    from mlsm.cli.output import echo, show_click_error

    try:
        return cli.main(args=args, prog_name="mlsm", standalone_mode=False)
    except click.exceptions.Abort:
        echo("mlsm: aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        show_click_error(exc)
        sys.exit(exc.exit_code)
