"""The CLI's one output boundary (``mlsm.cli.output``): what it writes, and that nothing else
in ``mlsm.cli`` writes around it."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import click
import pytest

from mlsm import errors
from mlsm.cli import _one_line
from mlsm.cli.output import echo, emit_json, show_click_error, table

CLI_DIR = Path(__file__).resolve().parents[2] / "mlsm" / "cli"
#: Calls that write to the terminal; only ``mlsm/cli/output.py`` may make them.
WRITERS = {
    "click.echo",
    "click.secho",
    "click.prompt",
    "click.confirm",
    "click.echo_via_pager",
    "print",
    "sys.stdout.write",
    "sys.stderr.write",
    "sys.stdout.buffer.write",
    "sys.stderr.buffer.write",
}
HOSTILE = "evil\x1b]2;PWNED\x07\u202eosc\x9b"
SHOWN = "evil\\x1b]2;PWNED\\x07\\u202eosc\\x9b"


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def test_only_the_output_module_writes_to_the_terminal() -> None:
    offenders = []
    for path in sorted(CLI_DIR.glob("*.py")):
        if path.name == "output.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                name = _dotted(node.func)
                if name in WRITERS or name.endswith(".show"):
                    offenders.append(f"{path.name}:{node.lineno} {name}")
    assert not offenders, "write through mlsm.cli.output instead: " + ", ".join(offenders)


def test_echo_shows_controls_and_keeps_a_message_on_one_line(capsys) -> None:
    echo(f"job 1 ({HOSTILE}\nmlsm: fake second line) cancelled")
    out = capsys.readouterr().out
    assert out == f"job 1 ({SHOWN}\\nmlsm: fake second line) cancelled\n"


def test_echo_lines_keeps_the_newlines_the_cli_wrote(capsys) -> None:
    echo(f"[Unit]\nDescription={HOSTILE}", lines=True)
    assert capsys.readouterr().out == f"[Unit]\nDescription={SHOWN}\n"


def test_table_cells_are_one_line_each_with_controls_visible(capsys) -> None:
    table([(1, "a\tb\nc" + HOSTILE, None)], ["ID", "NAME", "NODE"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[1].split()[1] == "a\\tb\\nc" + SHOWN
    assert not any(ch in "\x1b\x07\u202e\x9b\t" for ch in "".join(lines))


def test_json_is_exact_and_safe_to_print(capsys) -> None:
    data = {"name": HOSTILE + "\x7f\U000e0041", "argv": ["echo", "\x1b[2J"]}
    emit_json(data)
    out = capsys.readouterr().out
    assert json.loads(out) == data
    assert not any(ch in out for ch in "\x1b\x07\u202e\x9b\x7f\U000e0041")
    assert "\\u202e" in out and "\\udb40\\udc41" in out


def test_click_errors_quoting_a_value_show_it_escaped(capsys) -> None:
    show_click_error(click.ClickException(f"transfer 3 failed: {HOSTILE}"))
    err = capsys.readouterr().err
    assert err == f"Error: transfer 3 failed: {SHOWN}\n"


def test_one_line_survives_a_master_that_sends_odd_details() -> None:
    exc = errors.from_response(
        400, {"error": {"code": "validation_error", "message": "bad\nname", "details": [1]}}
    )
    assert exc.details == {}
    assert _one_line(exc) == "bad name"


@pytest.mark.parametrize(
    ("status", "text"),
    [(502, "master error (HTTP 502 Bad Gateway)"), (418, "request refused (HTTP 418 Bad Gateway)")],
)
def test_an_answer_without_error_json_is_named_by_status_and_reason(status: int, text: str) -> None:
    assert errors.from_response(status, None, "Bad Gateway").message == text
