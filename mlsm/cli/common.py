"""What every CLI command shares: settings, the client, passwords, durations and sizes.

What the CLI prints goes through :mod:`mlsm.cli.output`. Click is imported where it is
used, not here: the hot calls (:mod:`mlsm.cli.fast`) make their client here without it."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from mlsm.cli.opts import Opt
from mlsm.cli.output import prompt_secret
from mlsm.client import Client, check_url, verify_from
from mlsm.config import Settings, load_settings
from mlsm.errors import AuthenticationError, ConfigError, PermissionDenied
from mlsm.wire.api import ROLE_RANK, Role

if TYPE_CHECKING:
    import click


class RootOptions(msgspec.Struct, frozen=True):
    """The root command's ``--url`` and ``--token`` (each also read from ``MLSM_URL`` /
    ``MLSM_TOKEN``, as click reads them: an empty variable is unset). A Struct: it is made
    at the start of every hot call, where a dataclass would cost more."""

    url: str | None = None
    token: str | None = None

    @classmethod
    def from_env(cls) -> RootOptions:
        """What the root command has when none of its options is on the command line."""
        return cls(os.environ.get("MLSM_URL") or None, os.environ.get("MLSM_TOKEN") or None)


def root_options(ctx: click.Context | RootOptions) -> RootOptions:
    if isinstance(ctx, RootOptions):
        return ctx
    root = ctx.find_root().obj or {}
    return RootOptions(root.get("url"), root.get("token"))


def settings_from(ctx: click.Context | RootOptions, **flags: Any) -> Settings:
    root = root_options(ctx)
    overrides = {"url": root.url, "token": root.token}
    overrides.update(flags)
    return load_settings(overrides)


def client_from(ctx: click.Context | RootOptions, *, need_token: bool = True) -> Client:
    """A client of the master the settings name (else the embedded service), with the
    stored token and TLS trust; plain HTTP to another machine is refused."""
    from mlsm.local import local_url, not_running_hint, recorded_url

    s = settings_from(ctx)
    url = s.url
    if not url:
        url = local_url(s)
        if not url:
            raise ConfigError(
                "the local mlsm service is not running: start it with `mlsm up`"
                if recorded_url(s)
                else "no master configured: run `mlsm login URL`, `mlsm up`, or set MLSM_URL"
            )
    elif hint := not_running_hint(s, url):
        from mlsm.errors import UnavailableError

        raise UnavailableError(hint)
    url = check_url(url, allow_plain_http=s.allow_plain_http)
    if need_token and not s.token:
        raise AuthenticationError(f"not logged in to {url}: run `mlsm login {url}`")
    return Client(url, s.token, verify=verify_from(s), allow_plain_http=s.allow_plain_http)


def require_role(c: Client, role: Role, what: str) -> None:
    """Refuse before a prompt: a command that asks for a password or a confirmation first
    checks that the caller may do ``what`` at all, so nobody types a secret for nothing.
    The master still decides (its guards); this only spares the question."""
    me = c.auth.me()
    if ROLE_RANK.get(me.role, 0) < ROLE_RANK[role]:
        raise PermissionDenied(f"{what} needs the {role} role; you are {me.username} ({me.role})")


def read_password(prompt: str = "Password", *, confirm: bool = False) -> str:
    """MLSM_PASSWORD answers instead of the prompt, so scripts never need a terminal."""
    env = os.environ.get("MLSM_PASSWORD")
    if env:
        return env
    if not sys.stdin.isatty():
        raise ConfigError("no password given: set MLSM_PASSWORD or run from a terminal")
    return prompt_secret(prompt, confirm=confirm)


def ago(ts: float | None) -> str:
    if not ts:
        return "-"
    d = max(0.0, time.time() - ts)
    if d < 60:
        return f"{int(d)}s ago"
    if d < 3600:
        return f"{int(d // 60)}m ago"
    if d < 86400:
        return f"{int(d // 3600)}h ago"
    return f"{int(d // 86400)}d ago"


def when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def human_bytes(n: float | int | None) -> str:
    if n is None:
        return "-"
    v = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(v) < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} PiB"


def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '2h', '1d', '1h30m' -> seconds."""
    import click

    t = text.strip().lower()
    if not t:
        raise click.BadParameter("empty duration")
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    refusal = click.BadParameter(f"{text!r} is not a duration like 90s, 15m, 2h, 1d")
    total, num = 0.0, ""
    for ch in t + ("" if t[-1] in units else "s"):  # a bare number is seconds
        if ch.isdecimal() or ch == ".":
            num += ch
        elif ch in units and num:
            try:
                total += float(num) * units[ch]
            except ValueError:  # '1.2.3', '.'
                raise refusal from None
            num = ""
        else:
            raise refusal
    if total <= 0:
        raise click.BadParameter(f"{text!r}: a duration must be positive")
    return total


#: ``--json``, which every listing, show and submit command takes.
JSON = Opt(("--json",), "as_json", "flag", help="Print JSON instead of a table.")


def __getattr__(name: str) -> Any:
    """``json_option``: :data:`JSON` as a click decorator, made when a command module that
    uses click asks for it."""
    if name == "json_option":
        import click

        option = click.option(*JSON.flags, JSON.dest, is_flag=True, help=JSON.help)
        globals()[name] = option
        return option
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    json_option: Callable[[Callable[..., Any]], Callable[..., Any]]
