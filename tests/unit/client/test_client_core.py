"""What both faces of the client share: the URL rule, error mapping, and path words
quoted into exactly one path segment (checked against the real master app's routing)."""

from __future__ import annotations

import httpx
import pytest

from mlsm import errors
from mlsm.client import (
    CONNECT_TIMEOUT_S,
    DEFAULT_TIMEOUT,
    READ_TIMEOUT_S,
    STREAM_TIMEOUT,
    AsyncClient,
    Client,
)
from mlsm.wire import api
from tests.unit.client.conftest import URL, PortalTransport

HOSTILE_WORDS = [
    "a\nb",  # a newline would end the request line
    "x?node=gpu1",  # a query
    "x#frag",  # a fragment
    "100%",  # a percent sign
    "two words",
    ".",  # dot segments that URL normalisation would drop...
    "..",  # ...or climb out of the resource with
    "drain",  # a word that is also a route's last segment
]


class Recording(httpx.BaseTransport):
    """Passes requests on and keeps their raw paths."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.paths: list[bytes] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.raw_path)
        return self.inner.handle_request(request)


# ------------------------------------------------------------------ URLs
@pytest.mark.parametrize("face", [Client, AsyncClient])
def test_plain_http_to_another_machine_is_refused(face: type[Client] | type[AsyncClient]) -> None:
    with pytest.raises(errors.ConfigError, match="plain HTTP"):
        face("http://master.lab:8765", "token")
    with pytest.raises(errors.ConfigError, match="not an http"):
        face("ftp://master.lab", "token")
    assert face("http://master.lab:8765/", allow_plain_http=True).url == "http://master.lab:8765"
    assert face("https://master.lab").url == "https://master.lab"
    assert face("http://localhost:8765").url == "http://localhost:8765"


def test_timeouts_are_the_named_constants() -> None:
    assert DEFAULT_TIMEOUT.connect == STREAM_TIMEOUT.connect == CONNECT_TIMEOUT_S
    assert DEFAULT_TIMEOUT.read == READ_TIMEOUT_S
    assert STREAM_TIMEOUT.read is None
    with Client(URL) as c:  # the standard library's wire
        assert c._wire.timeouts == (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
    with Client(URL, transport=httpx.MockTransport(_refusing)) as c:  # httpx's
        assert c._wire.timeouts == (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)


# ------------------------------------------------------------------ errors
def _refusing(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def test_an_unreachable_master_is_unavailable() -> None:
    with Client(URL, transport=httpx.MockTransport(_refusing)) as c:
        with pytest.raises(errors.UnavailableError, match="cannot reach the master"):
            c.jobs.list()
        with pytest.raises(errors.UnavailableError):
            list(c.jobs.follow(1))


async def test_an_unreachable_master_is_unavailable_async() -> None:
    async with AsyncClient(URL, transport=httpx.MockTransport(_refusing)) as c:
        with pytest.raises(errors.UnavailableError):
            await c.nodes.summary()
        with pytest.raises(errors.UnavailableError):
            [e async for e in c.jobs.follow(1)]


def test_an_answer_without_mlsm_error_json_names_its_status() -> None:
    def proxy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>bad gateway</html>")

    with Client(URL, transport=httpx.MockTransport(proxy)) as c:
        with pytest.raises(errors.MlsmError, match="HTTP 502 Bad Gateway"):
            c.users.list()
        with pytest.raises(errors.MlsmError, match="HTTP 502"):
            b"".join(c.jobs.log(1))


# ------------------------------------------------------------------ path words
@pytest.mark.parametrize("word", HOSTILE_WORDS)
def test_a_path_word_reaches_its_own_route_whole(client: Client, word: str) -> None:
    """The master receives the word itself, as the name of the resource asked for."""
    with pytest.raises(errors.NotFound) as caught:
        client.users.get(word)
    assert caught.value.message == f"no user named {word!r}"
    with pytest.raises(errors.NotFound) as caught:
        client.nodes.drain(word)
    assert caught.value.message == f"no node named {word!r}"
    with pytest.raises(errors.NotFound) as caught:
        client.datasets.update(word, api.DatasetUpdate(description="x"))
    assert caught.value.message == f"no dataset named {word!r}"


@pytest.mark.parametrize("word", ["", "a/b", "x/history", "/"])
def test_a_word_that_cannot_stay_one_segment_is_refused_unsent(
    transport: PortalTransport, word: str
) -> None:
    recording = Recording(transport)
    with Client(URL, "token", transport=recording) as c:
        for call in (
            lambda: c.nodes.get(word),
            lambda: c.nodes.remove(word, force=True),
            lambda: c.users.update(word, api.UserUpdate(disabled=True)),
            lambda: c.datasets.delete(word, node="gpu1"),
        ):
            with pytest.raises(errors.ValidationError, match="not a valid name"):
                call()
    assert recording.paths == []
