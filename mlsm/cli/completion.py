"""``mlsm completion [bash|zsh|fish] [--install]``: the shell completion script.

The script is click's own (``_MLSM_COMPLETE=<shell>_source mlsm``), so it always matches the
installed mlsm: at each TAB the shell runs ``mlsm`` to ask for candidates. ``--install``
writes it where that shell loads completions from by itself, so a new shell has it with no
start-up cost from Python; regenerate after upgrading mlsm.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from mlsm.cli.output import echo

SHELLS = ("bash", "zsh", "fish")
#: The variable click's completion reads (``_<PROG>_COMPLETE``).
COMPLETE_VAR = "_MLSM_COMPLETE"


def script(shell: str) -> str:
    """The completion script of ``shell`` for the ``mlsm`` command."""
    from click.shell_completion import get_completion_class

    from mlsm.cli import cli

    cls = get_completion_class(shell)
    assert cls is not None, f"click knows {shell} completion"
    return cls(cli, {}, "mlsm", COMPLETE_VAR).source()


def install_path(shell: str) -> Path:
    """Where ``shell`` finds a completion for ``mlsm`` without any line in its rc file
    (zsh: a directory the printed ``fpath`` line adds)."""
    from mlsm.config import xdg_config_home, xdg_data_home

    if shell == "bash":  # bash-completion looks in $XDG_DATA_HOME/bash-completion/completions
        return xdg_data_home() / "bash-completion" / "completions" / "mlsm"
    if shell == "zsh":
        return Path.home() / ".zfunc" / "_mlsm"
    return xdg_config_home() / "fish" / "completions" / "mlsm.fish"


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so a shell never
    reads half a script and a link at ``path`` is replaced, not written through."""
    from mlsm.atomicfile import write_atomic
    from mlsm.errors import ConfigError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text, 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None


def _guess_shell() -> str:
    name = Path(os.environ.get("SHELL", "")).name
    if name in SHELLS:
        return name
    from mlsm.errors import ConfigError

    raise ConfigError(
        f"name the shell: mlsm completion {'|'.join(SHELLS)} (SHELL is {name or 'not set'})"
    )


@click.command()
@click.argument("shell", type=click.Choice(SHELLS), required=False)
@click.option(
    "--install",
    is_flag=True,
    help="Write the script where the shell loads it from, instead of printing it.",
)
def completion(shell: str | None, install: bool) -> None:
    """Print the completion script of SHELL (default: $SHELL's), or --install it.

    \b
    bash: ~/.local/share/bash-completion/completions/mlsm (needs bash-completion)
    zsh:  ~/.zfunc/_mlsm (add the two lines printed to ~/.zshrc once)
    fish: ~/.config/fish/completions/mlsm.fish
    """
    shell = shell or _guess_shell()
    text = script(shell)
    if not install:
        echo(text, nl=not text.endswith("\n"), lines=True)
        return
    path = install_path(shell)
    _write(path, text)
    echo(f"installed {shell} completion: {path}")
    if shell == "zsh":
        echo("add these lines to ~/.zshrc once, before any other compinit:", lines=True)
        echo(f"  fpath=({path.parent} $fpath)")
        echo("  autoload -Uz compinit && compinit")
    elif shell == "bash":
        echo(
            "new shells load it (with the bash-completion package; without it add "
            f'`source "{path}"` to ~/.bashrc)'
        )
    else:
        echo("new shells load it")
