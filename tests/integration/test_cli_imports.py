"""``mlsm submit`` and ``mlsm jobs`` load only what they use, so they answer in tens of
milliseconds (docs/benchmarks.md), and their fast path (no click) answers exactly as their
click commands do.

Each command runs as the real CLI (``mlsm.cli.main``, as the ``mlsm`` executable runs it)
in a process of its own against a real master, and writes, as it exits, every module it
had loaded (``sys.modules``: the import profiler would miss those loaded through
``importlib``, as the lazy registry loads commands). None may import httpx (the
standard library's wire carries a CLI call), the master (Litestar, SQLAlchemy), the
dashboard (Textual), the agent, Docker, asyncio or the agent protocol, nor click (an
ordinary call takes the fast path, :mod:`mlsm.cli.fast`); a command that ships
no code imports nothing of ``mlsm.bulk``, and one that ships an empty directory only the
manifest builder (not the store, the receivers or pathspec).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.lab import CLI_TIMEOUT_S, Lab
from tests.support.procs import free_port

#: Runs the CLI, then writes the names of the modules loaded (sys.modules; None entries
#: are blocked names, not modules) to the file named in argv[1].
RUN_AND_LIST = (
    "import atexit, sys\n"
    "out = sys.argv.pop(1)\n"
    "loaded = lambda: sorted(k for k, m in sys.modules.items() if m is not None)\n"
    "atexit.register(lambda: open(out, 'w').write('\\n'.join(loaded())))\n"
    "from mlsm.cli import main\n"
    "main()\n"
)
#: The same, with the fast path switched off: every call goes through click.
RUN_CLICK_AND_LIST = RUN_AND_LIST.replace(
    "from mlsm.cli import main\n",
    "import mlsm.cli.fast\nmlsm.cli.fast.fast_call = lambda args: None\n"
    "from mlsm.cli import main\n",
)
#: Never imported by the hot commands.
HEAVY = (
    "click",
    "httpx",
    "httpcore",
    "anyio",
    "h11",
    "litestar",
    "sqlalchemy",
    "textual",
    "rich",
    "docker",
    "psutil",
    "asyncio",
    "mlsm.master",
    "mlsm.wire.agent",
    "mlsm.wire.outputs",
    "agent",
    "tui",
)
#: What shipping a directory does not need either.
BULK_UNUSED = (
    "pathspec",
    "mlsm.bulk.cas",
    "mlsm.bulk._receiver",
    "mlsm.bulk.sink",
    "mlsm.bulk.inplace",
    "mlsm.bulk.storesink",
    "mlsm.bulk.journal",
)


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("cli-imports")) as lab:
        lab.start_master()
        yield lab


def _profiled(
    lab: Lab, *args: str, url: str | None = None, fast: bool = True
) -> tuple[int, str, set[str]]:
    """Run ``mlsm ARGS`` in an empty directory: (status, stderr, the modules it had loaded
    when it exited); ``fast=False`` runs it through click."""
    rc, _, said, modules = _run(lab, *args, url=url, fast=fast)
    return rc, said, modules


def _run(
    lab: Lab, *args: str, url: str | None = None, fast: bool = True
) -> tuple[int, str, str, set[str]]:
    """(status, stdout, stderr, modules loaded) of ``mlsm ARGS`` in an empty directory."""
    cwd = lab.root / "empty"
    cwd.mkdir(exist_ok=True)
    listing = lab.root / "modules.txt"
    listing.unlink(missing_ok=True)
    env = lab.env(MLSM_URL=url or lab.url, MLSM_TOKEN=lab.token)
    proc = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST if fast else RUN_CLICK_AND_LIST, str(listing), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr.strip(), set(listing.read_text().split())


@pytest.mark.parametrize(
    ("args", "loaded", "forbidden"),
    [
        (("jobs", "--json"), "mlsm.cli.joblist", (*HEAVY, "mlsm.bulk")),
        (("jobs", "--all"), "mlsm.cli.joblist", (*HEAVY, "mlsm.bulk")),
        (("submit", "--no-code", "--json", "--", "true"), "mlsm.cli.submit", (*HEAVY, "mlsm.bulk")),
        (("submit", "--json", "--", "true"), "mlsm.bulk.build", (*HEAVY, *BULK_UNUSED)),
    ],
    ids=["jobs-json", "jobs-table", "submit-no-code", "submit-shipping"],
)
def test_a_hot_command_imports_only_what_it_uses(
    lab: Lab, args: tuple[str, ...], loaded: str, forbidden: tuple[str, ...]
) -> None:
    rc, said, modules = _profiled(lab, *args)
    assert rc == 0, said
    assert {"mlsm.cli", loaded, "http.client"} <= modules  # the listing covers the call
    assert sorted(m for m in modules if _within(m, forbidden)) == []


def test_an_unreachable_master_is_one_line_without_httpx(lab: Lab, tmp_path: Path) -> None:
    rc, said, modules = _profiled(lab, "jobs", url=f"http://127.0.0.1:{free_port()}")
    assert rc == 1
    assert said.startswith("mlsm: error: cannot reach the master at http://127.0.0.1:")
    assert len(said.splitlines()) == 1, said
    assert sorted(m for m in modules if _within(m, HEAVY)) == []


#: Calls that both paths must answer alike, byte for byte: listings and filters, and
#: refusals worded by click, by the command's body, and by the master.
SAME_ANSWER = [
    ("jobs", "--json"),
    ("jobs", "--all", "--json", "--state", "queued,held"),
    ("jobs", "--user", "nobody-here"),
    ("jobs", "--state", "runing"),
    ("jobs", "--limit", "0"),
    ("jobs", "--help"),
    ("submit", "--gpus", "65", "--", "true"),
    ("submit", "--label", "novalue", "--", "true"),
    ("submit", "--timeout", "soon", "--", "true"),
    ("submit", "--workdir", "/tmp", "--project", "p", "--", "true"),
    ("submit", "--name", "x"),
    ("submit", "--no-code", "--array", "9-2", "--", "true"),
    ("submit", "--no-code", "--after", "999999", "--", "true"),
    ("submit", "--no-code", "-x y"),
    ("job", "show", "999999"),
    ("job", "show", "12_x", "--json"),
    ("job", "show"),
]


@pytest.mark.parametrize("args", SAME_ANSWER, ids=" ".join)
def test_the_fast_path_answers_as_the_click_command(lab: Lab, args: tuple[str, ...]) -> None:
    fast = _run(lab, *args)[:3]
    assert fast == _run(lab, *args, fast=False)[:3]


def _masked(value: object) -> object:
    """A JSON answer with what differs between two submits (ids, times) masked."""
    if isinstance(value, dict):
        return {
            k: "*" if k in ("id", "ids", "history") or k.endswith("_at") else _masked(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


@pytest.mark.parametrize("shipping", [False, True], ids=["no-code", "shipping"])
def test_a_submit_is_the_same_on_both_paths(lab: Lab, shipping: bool) -> None:
    import json

    args = ("submit", "--name", "same", "-e", "A=1", "--json", "--", "/bin/echo", "a  b")
    if not shipping:
        args = (*args[:1], "--no-code", *args[1:])
    answers = []
    for fast in (True, False):
        rc, out, said, modules = _run(lab, *args, fast=fast)
        assert rc == 0, said
        assert ("click" in modules) is not fast  # each path ran as meant
        answers.append((_masked(json.loads(out)), said))
    assert answers[0] == answers[1]
    ids = [int(_run(lab, "submit", "-q", "--no-code", "--", "true", fast=f)[1]) for f in (1, 0)]
    assert ids[1] == ids[0] + 1
    for show in (("job", "show", str(ids[0])), ("job", "show", "--json", str(ids[1]))):
        rc, out, said, modules = _run(lab, *show)
        assert (rc, said) == (0, "")
        assert sorted(m for m in modules if _within(m, HEAVY)) == []
        assert (rc, out, said) == _run(lab, *show, fast=False)[:3]
