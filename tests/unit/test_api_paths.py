"""Every path of the master's JSON API is spelled in one place, :mod:`mlsm.client`: the CLI,
the dashboard and every other part of mlsm that talks to a master call its methods."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Where paths may be spelled: the client sends them, the master serves them.
OWNERS = ("mlsm/client/", "mlsm/master/")
#: A string literal that starts with a JSON API path (plain, f-, r- or b-string).
PATH_LITERAL = re.compile(r"""(?<!\w)[rRbBfF]{0,2}["'](?:/api/v1\b|/healthz\b)""")


def _sources() -> list[Path]:
    files = [*ROOT.joinpath("mlsm").rglob("*.py"), *ROOT.joinpath("tui").rglob("*.py")]
    return [p for p in files if not p.relative_to(ROOT).as_posix().startswith(OWNERS)]


def test_the_pattern_finds_a_hand_spelled_path() -> None:
    for line in ('c.call("GET", f"/api/v1/jobs/{job_id}")', "get('/healthz')", 'x = "/api/v1"'):
        assert PATH_LITERAL.search(line), line
    assert not PATH_LITERAL.search('"""the master answers ``/healthz``"""')


def test_no_api_path_is_spelled_outside_the_client() -> None:
    sources = _sources()
    assert any(p.match("mlsm/cli/jobs.py") for p in sources)
    assert any(p.match("tui/source.py") for p in sources)
    found = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in sources
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if PATH_LITERAL.search(line)
    ]
    assert not found, "call a mlsm.client method instead:\n" + "\n".join(found)
