"""Forms in modal screens: job submit (validated as you type) and small admin forms."""

from __future__ import annotations

import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select

from mlsm.errors import MlsmError
from mlsm.termsafe import visible
from mlsm.wire import api
from mlsm.wire.explain import explain
from tui.widgets.plain import PlainLabel, PlainStatic

FORM_CSS = """
{name} {{ align: center middle; }}
{name} > Vertical {{
    width: 80; max-width: 100%; height: auto; max-height: 100%;
    border: thick $primary; background: $surface; padding: 0 1;
}}
{name} .title {{ text-style: bold; width: 100%; }}
{name} .note {{ width: 100%; color: $text-muted; }}
{name} VerticalScroll {{ height: auto; max-height: 1fr; }}
{name} .row {{ height: 1; }}
{name} .row Label {{ width: 16; padding: 0 1 0 0; text-align: right; }}
{name} .row Input, {name} .row Select {{ width: 1fr; }}
{name} .row Input {{ border: none; height: 1; padding: 0 1; background: $boost; }}
{name} .row SelectCurrent {{ border: none; height: 1; padding: 0 1; }}
{name} .row Select {{ height: 1; }}
{name} .error {{ color: $error; height: auto; min-height: 1; }}
{name} .ok {{ color: $success; height: auto; min-height: 1; }}
{name} .buttons {{ height: auto; align-horizontal: right; }}
{name} .buttons Button {{ margin-left: 2; }}
"""


def _num(text: str, kind: type[int] | type[float]) -> Any:
    text = text.strip()
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        return text  # msgspec names the field and the type


def parse_duration(text: str) -> Any:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d`` -> seconds; anything else is left for msgspec."""
    text = text.strip().lower()
    if not text:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    mult = units.get(text[-1])
    body = text[:-1] if mult else text
    try:
        return float(body) * (mult or 1)
    except ValueError:
        return text


def build_submit(values: dict[str, str]) -> dict[str, Any]:
    """Turn form text into the JSON body of a submit (before validation)."""
    body: dict[str, Any] = {}
    try:
        body["argv"] = shlex.split(values.get("command", ""))
    except ValueError as exc:
        raise ValueError(f"command: {exc}") from None
    for key in ("name", "image", "venv", "conda", "workdir", "project"):
        if values.get(key, "").strip():
            body[key] = values[key].strip()
    body["env_kind"] = values.get("env_kind") or "process"
    for key, kind in (("gpus", int), ("priority", int), ("retries", int), ("gpu_mem_gib", float)):
        value = _num(values.get(key, ""), kind)
        if value is not None:
            body[key] = value
    timeout = parse_duration(values.get("timeout", ""))
    if timeout is not None:
        body["timeout_s"] = timeout
    where = values.get("where", "").strip()
    if where:
        if "=" in where:
            labels = {}
            for part in where.replace(",", " ").split():
                k, _, v = part.partition("=")
                labels[k] = v
            body["labels"] = labels
        else:
            body["node"] = where
    dataset = values.get("dataset", "").strip()
    if dataset:
        body["datasets"] = [d for d in dataset.replace(",", " ").split() if d]
    return body


def validate_submit(values: dict[str, str]) -> api.JobSubmit:
    """The struct the master will get, or ``ValueError`` with a readable message."""
    body = build_submit(values)
    kind = body["env_kind"]
    if kind == "venv" and not body.get("venv"):
        raise ValueError("venv: give the path of the virtual environment")
    if kind == "conda" and not body.get("conda"):
        raise ValueError("conda: give the name of the conda environment")
    if kind == "docker" and not body.get("image"):
        raise ValueError("image: give the container image")
    try:
        return msgspec.convert(body, api.JobSubmit)
    except msgspec.ValidationError as exc:
        field, message = explain(str(exc))
        if field == "argv" and message.endswith("must not be empty"):
            message = "command: type the command to run"
        raise ValueError(message) from None


SUBMIT_FIELDS: list[tuple[str, str, str]] = [
    ("command", "Command", "python train.py --epochs 10"),
    ("name", "Name", "optional"),
    ("gpus", "GPUs", "0"),
    ("gpu_mem_gib", "GPU mem GiB", "0 = any"),
    ("where", "Node / labels", "node name, or k=v,k2=v2"),
    ("dataset", "Dataset", "name(s)"),
    ("venv", "venv path", "/home/me/venvs/torch"),
    ("conda", "conda env", "torch"),
    ("image", "Image", "pytorch/pytorch:2.3"),
    ("project", "Project", "runs in your project (mlsm project push)"),
    ("workdir", "Workdir", "a path on the node; default: its output dir"),
    ("priority", "Priority", "0"),
    ("retries", "Retries", "0"),
    ("timeout", "Timeout", "e.g. 90m, 2h"),
]


#: Where a job submitted here runs: the dashboard ships no directory (it may run anywhere,
#: over SSH); ``mlsm submit`` from a directory does (docs/code-and-results.md).
SHIPS_NOTHING = (
    "Ships no code: the job runs in a project, a node path or its output dir. "
    "To ship a directory, run mlsm submit in it."
)


class SubmitForm(ModalScreen[api.SubmitReply | None]):
    """The job submit form; it validates on every keystroke and shows the master's refusal."""

    DEFAULT_CSS = FORM_CSS.format(name="SubmitForm")
    BINDINGS = [
        Binding("escape", "dismiss_form", "Close"),
        Binding("ctrl+s", "submit", "Submit"),
    ]

    def __init__(self, submit: Callable[[api.JobSubmit], Awaitable[api.SubmitReply]]) -> None:
        super().__init__()
        self._submit = submit

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Submit a job  (ctrl+s submits, esc closes)", classes="title")
            yield PlainLabel(SHIPS_NOTHING, classes="note")
            yield PlainStatic("", id="problem", classes="error")
            with VerticalScroll():
                for key, label, hint in SUBMIT_FIELDS[:2]:
                    with Horizontal(classes="row"):
                        yield Label(label)
                        yield Input(placeholder=hint, id=f"f-{key}")
                with Horizontal(classes="row"):
                    yield Label("Environment")
                    yield Select(
                        [
                            ("process", "process"),
                            ("venv", "venv"),
                            ("conda", "conda"),
                            ("docker image", "docker"),
                        ],
                        value="process",
                        allow_blank=False,
                        id="f-env_kind",
                    )
                for key, label, hint in SUBMIT_FIELDS[2:]:
                    with Horizontal(classes="row", id=f"row-{key}"):
                        yield Label(label)
                        yield Input(placeholder=hint, id=f"f-{key}")
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Submit", id="submit", variant="primary", disabled=True)

    def on_mount(self) -> None:
        self._show_env_rows("process")
        self.query_one("#f-command", Input).focus()

    def values(self) -> dict[str, str]:
        out = {key: self.query_one(f"#f-{key}", Input).value for key, _, _ in SUBMIT_FIELDS}
        out["env_kind"] = str(self.query_one("#f-env_kind", Select).value)
        return out

    def _show_env_rows(self, kind: str) -> None:
        for key in ("venv", "conda", "image"):
            self.query_one(f"#row-{key}").display = (
                kind == "docker" and key == "image"
            ) or kind == key

    def validate(self) -> api.JobSubmit | None:
        problem = self.query_one("#problem", PlainStatic)
        try:
            spec = validate_submit(self.values())
        except ValueError as exc:
            problem.update(str(exc))
            problem.set_classes("error")
            self.query_one("#submit", Button).disabled = True
            return None
        problem.update("ready to submit")
        problem.set_classes("ok")
        self.query_one("#submit", Button).disabled = False
        return spec

    @on(Input.Changed)
    def _changed(self) -> None:
        self.validate()

    @on(Select.Changed, "#f-env_kind")
    def _env_changed(self, event: Select.Changed) -> None:
        self._show_env_rows(str(event.value))
        self.validate()

    @on(Input.Submitted)
    def _enter(self) -> None:
        self.action_submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "submit":
            self.action_submit()
        else:
            self.dismiss(None)

    def action_dismiss_form(self) -> None:
        self.dismiss(None)

    def action_submit(self) -> None:
        spec = self.validate()
        if spec is not None:
            self._send(spec)

    @work(exclusive=True, group="submit")
    async def _send(self, spec: api.JobSubmit) -> None:
        problem = self.query_one("#problem", PlainStatic)
        try:
            reply = await self._submit(spec)
        except MlsmError as exc:
            problem.update(f"master refused: {exc.message}")
            problem.set_classes("error")
            return
        self.dismiss(reply)


@dataclass
class Field:
    key: str
    label: str
    placeholder: str = ""
    value: str = ""
    options: list[str] | None = None  # a Select instead of an Input
    password: bool = False


class FormModal(ModalScreen[Any]):
    """A small form: fields in, ``action(values)`` out; shows the master's error in place."""

    DEFAULT_CSS = FORM_CSS.format(name="FormModal")
    BINDINGS = [Binding("escape", "close", "Close"), Binding("ctrl+s", "ok", "OK")]

    def __init__(
        self,
        title: str,
        fields: list[Field],
        action: Callable[[dict[str, str]], Awaitable[Any]],
        *,
        ok: str = "OK",
    ) -> None:
        super().__init__()
        self.form_title = title
        self.fields = fields
        self.action = action
        self.ok_label = ok

    def compose(self) -> ComposeResult:
        with Vertical():
            yield PlainLabel(self.form_title, classes="title")
            for field in self.fields:
                with Horizontal(classes="row"):
                    yield Label(field.label)
                    if field.options:
                        yield Select(
                            [(o, o) for o in field.options],
                            value=field.value or field.options[0],
                            allow_blank=False,
                            id=f"f-{field.key}",
                        )
                    else:
                        yield Input(
                            # a value from the master is offered only if it can be shown as
                            # it is (an Input shows its value raw); else the person types it
                            field.value if visible(field.value) == field.value else "",
                            placeholder=field.placeholder,
                            password=field.password,
                            id=f"f-{field.key}",
                        )
            yield PlainStatic("", id="problem", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button(self.ok_label, id="ok", variant="primary")

    def values(self) -> dict[str, str]:
        out = {}
        for field in self.fields:
            selector = f"#f-{field.key}"
            if field.options:
                value: object = self.query_one(selector, Select).value
            else:
                value = self.query_one(selector, Input).value
            out[field.key] = str(value)
        return out

    @on(Input.Submitted)
    def _enter(self) -> None:
        self.action_ok()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ok":
            self.action_ok()
        else:
            self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)

    @work(exclusive=True, group="form")
    async def action_ok(self) -> None:
        problem = self.query_one("#problem", PlainStatic)
        try:
            result = await self.action(self.values())
        except msgspec.ValidationError as exc:  # a form's own check, before the master's
            problem.update(explain(str(exc))[1])
            return
        except (MlsmError, ValueError) as exc:
            problem.update(getattr(exc, "message", None) or str(exc))
            return
        self.dismiss(result if result is not None else True)


class MessageModal(ModalScreen[None]):
    """Shows a text once (a new token) until a key is pressed."""

    DEFAULT_CSS = """
    MessageModal { align: center middle; }
    MessageModal > Vertical { width: 80; max-width: 100%; height: auto; border: thick $success; background: $surface; padding: 1 2; }
    MessageModal #secret { text-style: bold; color: $success; margin: 1 0; }
    """
    BINDINGS = [Binding("escape,enter,q", "close", "Close")]

    def __init__(self, title: str, secret: str, note: str = "") -> None:
        super().__init__()
        self.title_text, self.secret, self.note = title, secret, note

    def compose(self) -> ComposeResult:
        with Vertical():
            yield PlainLabel(self.title_text)
            yield PlainStatic(self.secret, id="secret")
            if self.note:
                yield PlainLabel(self.note)
            yield Label("(press enter to close)")

    def action_close(self) -> None:
        self.dismiss(None)
