"""One definition of a hot command's options, read two ways.

``mlsm submit``, ``mlsm jobs`` and ``mlsm job show`` are called in loops by scripts and
benchmarks, and importing click alone costs a call more than its request does. So their
options are written once here as :class:`Opt` rows, from which :func:`click_command`
makes the click command (help, errors, completion: the full CLI) and :func:`fast_parse`
reads an ordinary call with the standard library's ``argparse``, without click.

The fast reading only ever *accepts*: anything it does not take as click would (an
unknown or malformed option, a value out of range, ``--help``, a value of a kind it does
not convert) raises :class:`Declined`, and the caller runs the click command on the same
argv instead, so every message and exit status of a refused call is click's own. Both
readings hand the same parameter dict to the same command body.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import msgspec

if TYPE_CHECKING:
    import click

#: How an option's value is read: text, a bounded number, one of ``choices``, an on/off
#: flag, or a directory / a file (only click reads those: the fast path declines them).
Kind = Literal["str", "int", "float", "choice", "flag", "dir", "file"]


class Declined(Exception):
    """The fast path does not handle this call; the click command will."""


class Opt(msgspec.Struct, frozen=True):
    """One option: its flags, the parameter it fills, how its value is read. (A Struct:
    made at every call's start, where a dataclass would cost more.)"""

    flags: tuple[str, ...]
    dest: str
    kind: Kind = "str"
    default: Any = None
    help: str | None = None
    multiple: bool = False
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    show_default: bool = False
    metavar: str | None = None


class Arg(msgspec.Struct, frozen=True):
    """The command's positional argument: one value, or (``rest``) all that follow,
    unprocessed, as a command line to run."""

    dest: str
    rest: bool = False
    metavar: str | None = None


def click_command(
    name: str,
    callback: Callable[..., Any],
    opts: Sequence[Opt],
    arg: Arg | None = None,
    *,
    arg_type: Any = None,
    **settings: Any,
) -> click.Command:
    """The click command of ``opts`` (in their order) calling ``callback``, whose
    docstring is its help; ``arg_type``: the click type of a one-value ``arg``."""
    import inspect

    import click

    params: list[click.Parameter] = [_click_option(o) for o in opts]
    if arg is not None:
        if arg.rest:
            params.append(click.Argument([arg.dest], nargs=-1, type=click.UNPROCESSED))
        else:
            params.append(click.Argument([arg.dest], type=arg_type, metavar=arg.metavar))
    return click.Command(
        name,
        callback=callback,
        params=params,
        help=inspect.getdoc(callback),
        context_settings=settings or None,
    )


def _click_option(o: Opt) -> click.Option:
    import click

    types: dict[str, Any] = {
        "int": click.IntRange(_int(o.low), _int(o.high)),
        "float": click.FloatRange(o.low, o.high),
        "choice": click.Choice(o.choices),
        "flag": None,
        "str": None,
        "dir": click.Path(file_okay=False),
        "file": click.File("rb"),
    }
    return click.Option(
        [*o.flags, o.dest],
        type=types[o.kind],
        is_flag=o.kind == "flag",
        multiple=o.multiple,
        default=bool(o.default) if o.kind == "flag" else o.default,
        help=o.help,
        show_default=o.show_default,
        metavar=o.metavar,
    )


def _int(bound: float | None) -> int | None:
    return None if bound is None else int(bound)


def fast_parse(opts: Sequence[Opt], arg: Arg | None, argv: Sequence[str]) -> dict[str, Any]:
    """``argv`` (after the command's name) read as the click command would read it, or
    :class:`Declined` when that cannot be sure."""
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> Any:  # argparse would print usage and exit
            raise Declined(message)

    parser = _Parser(
        add_help=False, allow_abbrev=False, exit_on_error=False, formatter_class=_fixed_width_help
    )
    for o in opts:
        if o.kind == "flag":
            parser.add_argument(*o.flags, dest=o.dest, action="store_true")
        else:
            parser.add_argument(*o.flags, dest=o.dest, action="append")
    if arg is not None:
        parser.add_argument(arg.dest, nargs=argparse.REMAINDER if arg.rest else None)
    try:
        ns = parser.parse_args(list(argv))
    except argparse.ArgumentError as exc:
        raise Declined(str(exc)) from None
    params: dict[str, Any] = {}
    for o in opts:
        given = getattr(ns, o.dest)
        if o.kind == "flag":
            params[o.dest] = bool(given or o.default)
        elif given is None:
            params[o.dest] = () if o.multiple else o.default
        else:
            values = tuple(_value(o, v) for v in given)
            params[o.dest] = values if o.multiple else values[-1]
    if arg is not None:
        value = getattr(ns, arg.dest)
        if not arg.rest and value.startswith("-"):
            raise Declined(value)  # argparse takes "-1" as a value; click, as an option
        params[arg.dest] = _rest(value) if arg.rest else value
    return params


def _fixed_width_help(prog: str) -> Any:
    """argparse's help formatter at a fixed width: it never shows help here (click does),
    and asking the terminal's width would import shutil."""
    import argparse

    return argparse.HelpFormatter(prog, width=_HELP_WIDTH)


#: The width argparse formats its (never shown) help at.
_HELP_WIDTH = 80


def _value(o: Opt, text: str) -> Any:
    """One value as click's type for ``o`` converts it; Declined where click would refuse
    it (click then says why)."""
    if o.kind == "str":
        return text
    if o.kind == "choice":
        if text not in o.choices:
            raise Declined(o.dest)
        return text
    if o.kind not in ("int", "float"):
        raise Declined(o.dest)
    try:
        value: float = int(text) if o.kind == "int" else float(text)
    except ValueError:
        raise Declined(o.dest) from None
    if (o.low is not None and value < o.low) or (o.high is not None and value > o.high):
        raise Declined(o.dest)
    return value


def _rest(rest: list[str]) -> tuple[str, ...]:
    """The command line after the options, as click's parser leaves it: its ``--`` taken
    away. A first word that looks like an option is click's to judge."""
    words = list(rest)
    if words and words[0] == "--":
        words = words[1:]
        if words and words[0] == "--":
            raise Declined("--")  # which `--` argparse kept differs between versions
    elif words and words[0].startswith("-"):
        raise Declined(words[0])
    return tuple(words)
