"""The hot commands' fast reading of their options (``mlsm.cli.opts.fast_parse``) against
their click commands, built from the same option rows: where the fast reading accepts a
command line it gives the command body exactly the parameters click gives it, and what
click refuses (or answers with help) the fast reading declines, so click says it."""

from __future__ import annotations

from typing import Any

import click
import pytest

from mlsm.cli import joblist, jobshow, submit
from mlsm.cli.jobrefs import parse_ref
from mlsm.cli.opts import Arg, Declined, Opt, fast_parse

HOT: dict[str, tuple[click.Command, tuple[Opt, ...], Arg | None]] = {
    "submit": (submit.submit, submit.OPTIONS, submit.COMMAND),
    "jobs": (joblist.jobs, joblist.OPTIONS, None),
    "show": (jobshow.show, jobshow.OPTIONS, jobshow.REF),
}

ACCEPTED = [
    ("submit", ["--", "/bin/true"]),
    ("submit", ["/bin/echo", "hi", "--name", "x"]),  # options end at the command
    ("submit", ["--name", "n", "--json", "--", "/bin/sh", "-c", "date > f"]),
    ("submit", ["--name=n", "--cpus", "2", "--gpus=3", "--mem", "1.5", "--", "x"]),
    ("submit", ["-e", "A=1", "--setenv", "B=2", "-eC=3", "--label", "k=v", "--", "x"]),
    ("submit", ["--priority", "-5", "--retries", "100", "--env", "docker", "--", "x"]),
    ("submit", ["-q", "--no-code", "--hold", "--preemptible", "--timeout", "2h", "--", "x"]),
    ("submit", ["--after", "3", "--after", "4:ok", "--array", "0-3%2", "--", "x", "--", "y"]),
    ("submit", ["--name", "a", "--name", "b", "--", "-x"]),  # the last value wins
    ("submit", ["--dataset", "d", "--mount", "/a:/b:ro", "--node", "n1", "--", "x"]),
    ("submit", []),
    ("jobs", []),
    ("jobs", ["--json"]),
    ("jobs", ["--all", "--state", "queued,running", "--user", "u", "--node", "n"]),
    ("jobs", ["-x", "--limit", "5", "--limit=7"]),
    ("show", ["12"]),
    ("show", ["--json", "12_3"]),
    ("show", ["12", "--json"]),
    ("show", ["--", "7"]),
]

REFUSED_BY_CLICK = [
    ("submit", ["--gpus", "65", "--", "x"]),
    ("submit", ["--gpus", "two", "--", "x"]),
    ("submit", ["--cpus", "-1", "--", "x"]),
    ("submit", ["--env", "vm", "--", "x"]),
    ("submit", ["--bogus", "--", "x"]),
    ("submit", ["--name"]),
    ("submit", ["--json=yes", "--", "x"]),
    ("submit", ["--help"]),
    ("submit", ["-h"]),
    ("submit", ["--nam", "x", "--", "y"]),  # click takes no abbreviation
    ("submit", ["-x y"]),
    ("jobs", ["--limit", "0"]),
    ("jobs", ["--limit", "1e3"]),
    ("jobs", ["extra"]),
    ("jobs", ["--help"]),
    ("show", []),
    ("show", ["1", "2"]),
    ("show", ["-1"]),
    ("show", ["--json=1", "1"]),
]

#: Options only the click command reads (a file, a directory): the fast path leaves them.
CLICK_ONLY = [
    ("submit", ["--from", "jobs.txt"]),
    ("submit", ["--code", "src", "--", "x"]),
    ("submit", ["--fetch", "out", "--", "x"]),
]


def _click_params(name: str, argv: list[str]) -> dict[str, Any]:
    command = HOT[name][0]
    with command.make_context(name, list(argv)) as ctx:
        return dict(ctx.params)


@pytest.mark.parametrize(("name", "argv"), ACCEPTED)
def test_the_fast_reading_gives_the_body_what_click_gives_it(name: str, argv: list[str]) -> None:
    _, opts, arg = HOT[name]
    fast = fast_parse(opts, arg, argv)
    if name == "show":  # click's JOB type parses the text the fast path hands parse_ref
        fast["ref"] = parse_ref(fast["ref"])
    assert fast == _click_params(name, argv)


@pytest.mark.parametrize(("name", "argv"), REFUSED_BY_CLICK)
def test_what_click_refuses_the_fast_reading_declines(name: str, argv: list[str]) -> None:
    _, opts, arg = HOT[name]
    with pytest.raises((click.ClickException, click.exceptions.Exit)):
        _click_params(name, argv)
    with pytest.raises(Declined):
        fast_parse(opts, arg, argv)


@pytest.mark.parametrize(("name", "argv"), CLICK_ONLY)
def test_file_and_directory_options_are_left_to_click(name: str, argv: list[str]) -> None:
    _, opts, arg = HOT[name]
    with pytest.raises(Declined):
        fast_parse(opts, arg, argv)


def test_the_click_command_has_every_option_row_and_no_other() -> None:
    for command, opts, arg in HOT.values():
        names = [p.name for p in command.params]
        assert names == [o.dest for o in opts] + ([arg.dest] if arg else [])
