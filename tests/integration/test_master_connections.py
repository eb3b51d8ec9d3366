"""The master's connection limits, on real master processes started with a low descriptor
limit: silent or half-sent requests are dropped after their timeout, hundreds of idle
connections cannot lock out ``/healthz``, a busy connection is never the one dropped, and
the soft descriptor limit is raised to the hard one at start."""

from __future__ import annotations

import resource
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from mlsm.master.connections import FD_RESERVED, FDS_PER_CONNECTION
from tests.integration.helpers import (
    HTTP_TIMEOUT_S,
    Master,
)
from tests.support.wait import wait_until

#: The descriptor limits the masters here run with: soft 256, and a hard one above it
#: (raised to at start) or equal (nothing to raise, so the cap must do the work).
LOW_SOFT = 256
RAISED_HARD = 1024
HALF_SENT = 120
IDLE = 320
SHORT_TIMEOUT_S = 2.0  # header/body timeout of the master that drops half-sent requests
LONG_TIMEOUT_S = 600.0  # header timeout of the master where only the cap can make room
DROP_DEADLINE_S = 30.0
HALF_HEAD = b"GET /healthz HTTP/1.1\r\nHost: mlsm\r\nX-Unfinished: "


def _limit(soft: int, hard: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


def _master(workdir: Path, soft: int, hard: int, header_timeout: float) -> Iterator[Master]:
    m = Master(
        workdir,
        env={
            "MLSM_HEADER_TIMEOUT": str(header_timeout),
            "MLSM_BODY_TIMEOUT": str(header_timeout),
        },
        popen={"preexec_fn": _limit(soft, hard)},
    )
    m.start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def quick_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Master]:
    """Soft limit 256 under a hard 1024; requests must arrive within 2 s."""
    yield from _master(tmp_path_factory.mktemp("quick"), LOW_SOFT, RAISED_HARD, SHORT_TIMEOUT_S)


@pytest.fixture(scope="module")
def capped_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Master]:
    """256 descriptors, no more to raise to, and a 10-minute header timeout."""
    yield from _master(tmp_path_factory.mktemp("capped"), LOW_SOFT, LOW_SOFT, LONG_TIMEOUT_S)


def _connect(master: Master) -> socket.socket:
    return socket.create_connection(("127.0.0.1", master.port), timeout=HTTP_TIMEOUT_S)


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the master has closed its end (EOF or reset), without blocking."""
    sock.setblocking(False)
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def _open_sockets(socks: list[socket.socket]) -> int:
    return sum(1 for s in socks if not _closed_by_server(s))


def _close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def test_soft_descriptor_limit_is_raised_to_the_hard_one(quick_master: Master) -> None:
    assert quick_master.proc is not None
    limits = Path(f"/proc/{quick_master.proc.pid}/limits").read_text().splitlines()
    (line,) = [ln for ln in limits if ln.startswith("Max open files")]
    soft, hard = (int(v) for v in line.split()[3:5])
    assert (soft, hard) == (RAISED_HARD, RAISED_HARD), line
    expected_cap = (RAISED_HARD - FD_RESERVED) // FDS_PER_CONNECTION
    said = [r for r in quick_master.log_records() if "descriptor limit" in r.get("msg", "")]
    assert said and f"up to {expected_cap} connections" in said[0]["msg"], said


def test_half_sent_request_heads_are_dropped(quick_master: Master) -> None:
    socks = [_connect(quick_master) for _ in range(HALF_SENT)]
    try:
        for s in socks:
            s.sendall(HALF_HEAD)
        silent = [_connect(quick_master) for _ in range(10)]  # not even a byte
        socks += silent
        wait_until(
            lambda: _open_sockets(socks) == 0,
            DROP_DEADLINE_S,
            f"the master closing {len(socks)} connections with no complete request head",
        )
    finally:
        _close_all(socks)
    assert httpx.get(f"{quick_master.url}/healthz", timeout=HTTP_TIMEOUT_S).status_code == 200


def test_a_stalled_request_body_is_dropped(quick_master: Master) -> None:
    s = _connect(quick_master)
    try:
        s.sendall(
            b"POST /api/v1/auth/login HTTP/1.1\r\nHost: mlsm\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"user'
        )
        wait_until(
            lambda: _closed_by_server(s), DROP_DEADLINE_S, "the master dropping a stalled body"
        )
    finally:
        s.close()


def test_healthz_answers_with_hundreds_of_idle_connections(capped_master: Master) -> None:
    """320 connections that never send a byte on a master with 256 descriptors and a
    10-minute header timeout: only the cap (which replaces the longest-waiting idle
    connection) lets /healthz in."""
    idle = [_connect(capped_master) for _ in range(IDLE)]
    try:
        resp = httpx.get(f"{capped_master.url}/healthz", timeout=HTTP_TIMEOUT_S)
        assert resp.status_code == 200, resp.text
        with httpx.Client(base_url=capped_master.url, timeout=HTTP_TIMEOUT_S) as client:
            for _ in range(3):  # and again, over one kept-alive connection
                assert client.get("/healthz").status_code == 200
    finally:
        _close_all(idle)


def _metric(master: Master, name: str) -> float:
    text = httpx.get(f"{master.url}/metrics", timeout=HTTP_TIMEOUT_S).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def _follow(master: Master, token: str, job_id: int) -> str:
    with httpx.stream(
        "GET",
        f"{master.url}/api/v1/jobs/{job_id}/log/follow",
        headers={"Authorization": f"Bearer {token}"},
        timeout=HTTP_TIMEOUT_S * 4,
    ) as resp:
        return "".join(resp.iter_text())


def test_a_busy_connection_is_not_the_one_dropped(capped_master: Master) -> None:
    """A log follow in flight survives a flood of idle connections past the cap, and the
    flood shows in /metrics as evictions."""
    token = capped_master.admin_token
    submitted = capped_master.request(
        "POST", "/api/v1/jobs", token=token, json={"argv": ["true"], "labels": {"x": "none"}}
    )
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["job"]["id"]
    evicted_before = _metric(capped_master, 'mlsm_http_connections_dropped_total{reason="evicted"}')
    with ThreadPoolExecutor(max_workers=1) as pool:
        follow = pool.submit(_follow, capped_master, token, job_id)
        # Busy: the follow, and the /metrics request asking.
        wait_until(
            lambda: _metric(capped_master, 'mlsm_http_connections{state="busy"}') >= 2,
            DROP_DEADLINE_S,
            "the log follow in flight",
        )
        idle = [_connect(capped_master) for _ in range(IDLE)]
        try:
            cancelled = capped_master.request(
                "POST", "/api/v1/jobs/cancel", token=token, json={"ids": [job_id]}
            )
            assert cancelled.status_code == 200, cancelled.text
            text = follow.result()
        finally:
            _close_all(idle)
    assert "event: end" in text and "cancelled" in text, text
    evicted = _metric(capped_master, 'mlsm_http_connections_dropped_total{reason="evicted"}')
    assert evicted > evicted_before
