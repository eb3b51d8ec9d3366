"""``mlsm web`` end to end: a real master and agent, the real ``mlsm web`` process, and
Debian's chromium (headless, driven over the DevTools protocol) loading the dashboard.

The login in front: no session -> the login page (and 401 for the app's WebSocket); a
wrong password -> the master's refusal; a right one -> an HttpOnly, SameSite=Strict cookie
and no token in any URL; a cross-site WebSocket is refused even with the cookie. Then the
browser: the page loads, the app streams, the lab's node and the logged-in member are on
it (the app runs as that user), and a screenshot of it is kept as a test artefact:
``<pytest basetemp>/web-artefacts/dashboard.png``, copied to ``$MLSM_TEST_ARTEFACTS``
(default ``tests/artefacts/``, not tracked by git) when that directory can be made."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.integration.lab import MLSM, PASSWORD, Lab
from tests.support.ci import require
from tests.support.procs import free_port
from tests.support.wait import wait_until

NODE = "webnode"
MEMBER = "wendy"
DEADLINE_S = 30.0
ARTEFACTS = Path(os.environ.get("MLSM_TEST_ARTEFACTS", Path(__file__).parents[1] / "artefacts"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("web")) as lab:
        lab.start_master()
        lab.start_agent(NODE)
        lab.add_user(MEMBER)
        yield lab


@pytest.fixture(scope="module")
def web(lab: Lab) -> str:
    port = free_port()
    lab._spawn(
        [MLSM, "web", "--port", str(port)], "web.log", lab.env(MLSM_URL=lab.url, MLSM_TOKEN="")
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/login").status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, DEADLINE_S, "mlsm web to answer")
    return base


def login(web: str, user: str, password: str) -> httpx.Response:
    return httpx.post(f"{web}/login", data={"username": user, "password": password})


def test_without_a_session_there_is_only_the_login(web: str) -> None:
    resp = httpx.get(f"{web}/")
    assert resp.status_code == 302 and resp.headers["location"] == "/login"
    with pytest.raises(InvalidStatus) as refused:
        connect(web.replace("http", "ws") + "/ws").close()
    assert refused.value.response.status_code == 401


def test_a_wrong_password_is_the_masters_refusal(web: str) -> None:
    resp = login(web, MEMBER, "not-the-password")
    assert resp.status_code == 401
    assert "mlsm_web" not in resp.cookies
    assert "wrong username or password" in resp.text


def test_a_login_gives_a_private_cookie_and_no_token_in_a_url(web: str) -> None:
    resp = login(web, MEMBER, PASSWORD)
    assert resp.status_code == 302 and resp.headers["location"] == "/"
    cookie = resp.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "mlsm_" not in resp.headers["location"]  # no master token travels in a URL
    page = httpx.get(f"{web}/", cookies=resp.cookies)
    assert page.status_code == 200 and "mlsm_s_" not in page.text


def test_a_cross_site_websocket_is_refused_even_with_the_cookie(web: str) -> None:
    cookies = login(web, MEMBER, PASSWORD).cookies
    header = {"Cookie": f"mlsm_web={cookies['mlsm_web']}", "Origin": "http://evil.example"}
    with pytest.raises(InvalidStatus) as refused:
        connect(web.replace("http", "ws") + "/ws", additional_headers=header).close()
    assert refused.value.response.status_code == 403


# ---------------------------------------------------------------- the real browser
class DevTools:
    """A page of a headless chromium, driven over the DevTools protocol."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=DEADLINE_S))
            if msg.get("id") == call_id:
                assert "error" not in msg, msg
                return dict(msg.get("result", {}))
            self.events.append(msg)

    def evaluate(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)[
            "result"
        ].get("value")

    def frames_received(self) -> bytes:
        """Every WebSocket message the page received so far, decoded."""
        out = b""
        for ev in self.events:
            if ev.get("method") == "Network.webSocketFrameReceived":
                resp = ev["params"]["response"]
                data = resp["payloadData"]
                out += base64.b64decode(data) if resp["opcode"] == 2 else data.encode()
        return out


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    require(exe is not None, "no chromium: apt-get install -y chromium")
    assert exe is not None
    port = free_port()
    profile = tempfile.mkdtemp(prefix="mlsm-chromium-")
    proc = subprocess.Popen(
        [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--remote-debugging-port={port}", f"--user-data-dir={profile}",
         "--window-size=1400,900", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def page_url() -> str | None:
            try:
                pages = httpx.get(f"http://127.0.0.1:{port}/json/list").json()
            except httpx.HTTPError:
                return None
            return next((p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page"), None)

        url = wait_until(page_url, DEADLINE_S, "chromium's DevTools endpoint")
        with connect(url, max_size=None) as ws:
            yield DevTools(ws)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def test_the_dashboard_loads_in_a_real_browser_as_the_logged_in_user(
    web: str, browser: DevTools, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cookie = login(web, MEMBER, PASSWORD).cookies["mlsm_web"]
    browser.call("Network.enable")
    browser.call("Page.enable")
    browser.call(
        "Network.setCookie", name="mlsm_web", value=cookie, url=web, httpOnly=True,
        sameSite="Strict",
    )  # fmt: skip
    browser.call("Page.navigate", url=f"{web}/")

    def shown() -> bool:
        browser.evaluate("1")  # reads the events that arrived meanwhile
        frames = browser.frames_received()
        return NODE.encode() in frames and f"{MEMBER} (member)".encode() in frames

    wait_until(shown, DEADLINE_S, "the lab's node and the member's name in the page's stream")
    assert browser.evaluate("document.querySelector('.textual-terminal') !== null")
    assert browser.evaluate("document.body.classList.contains('-first-byte')")
    shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    assert shot.startswith(b"\x89PNG") and len(shot) > 10_000
    kept = tmp_path_factory.getbasetemp() / "web-artefacts" / "dashboard.png"
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_bytes(shot)
    try:
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        (ARTEFACTS / "web-dashboard.png").write_bytes(shot)
    except OSError:
        pass  # the basetemp copy is the artefact then
