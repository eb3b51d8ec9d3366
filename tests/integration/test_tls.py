"""HTTPS with pinned joins, end to end, with real processes.

``mlsm master --tls-self-signed`` makes a certificate in its data dir; ``mlsm login
--fingerprint`` pins it for people and a join token carries it for agents. A real agent
joins over HTTPS and comes online. Then the master comes back on the same port with a
*different* certificate: the agent's TLS handshake fails, so it sends nothing (least of
all its node secret), and it says why in its log (the two fingerprints); an agent started
afresh against that master refuses to start, in one line.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlsm.errors import ConfigError
from mlsm.tls import (
    SELF_SIGNED_CERT,
    ensure_self_signed,
    ensure_self_signed_apart,
    fingerprint_of_file,
)
from tests.integration.helpers import (
    ADMIN,
    ADMIN_PASSWORD,
    MLSM,
    CliResult,
    Master,
    assert_one_line_error,
    run_cli,
)
from tests.support.env import isolated_env
from tests.support.wait import wait_until

HEARTBEAT_S = 0.5
MASTER_ENV = {"MLSM_HEARTBEAT_INTERVAL": str(HEARTBEAT_S), "MLSM_STALE_AFTER": "2"}
NODE = "tls-node"
JOIN_TIMEOUT_S = 30.0
MISMATCH_TIMEOUT_S = 30.0
AGENT_EXIT_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
#: TEST-NET-1 (RFC 5737): not loopback, never routed; the refusal must come before any dial.
NON_LOOPBACK = "192.0.2.1"


class TlsMaster(Master):
    """A :class:`Master` serving HTTPS; readiness is checked against its own certificate."""

    scheme = "https"

    def __init__(self, workdir: Path, *, port: int | None = None, **kw: Any) -> None:
        super().__init__(workdir, env=MASTER_ENV, port=port, **kw)
        self.cert_path = self.data_dir / "tls-cert.pem"
        for i, arg in enumerate(self.extra_args):
            if arg == "--tls-cert":
                self.cert_path = Path(self.extra_args[i + 1])

    def answering(self) -> bool:
        if not self.cert_path.exists():
            return False
        ctx = ssl.create_default_context(cafile=str(self.cert_path))
        try:
            return httpx.get(f"{self.url}/healthz", verify=ctx, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def fingerprint(self) -> str:
        return fingerprint_of_file(str(self.cert_path))

    def request_paths(self) -> list[str]:
        return [str(r.get("path")) for r in self.log_records() if r.get("msg") == "request"]


@pytest.fixture
def tls_master(tmp_path: Path) -> Iterator[TlsMaster]:
    m = TlsMaster(tmp_path / "master", extra_args=("--tls-self-signed",))
    m.start()
    try:
        yield m
    finally:
        m.stop()


def cli(home: Path, args: list[str], **env: str) -> CliResult:
    return run_cli(args, home=home, password=ADMIN_PASSWORD, env=env)


def login(home: Path, master: TlsMaster, fingerprint: str) -> CliResult:
    return cli(home, ["login", master.url, "--user", ADMIN, "--fingerprint", fingerprint])


def test_login_with_the_wrong_fingerprint_refuses_and_the_right_one_works(
    tls_master: TlsMaster, tmp_path: Path
) -> None:
    home = tmp_path / "cli"
    wrong = "sha256:" + "ab" * 32
    res = login(home, tls_master, wrong)
    assert_one_line_error(res)
    assert "fingerprint" in res.err and tls_master.fingerprint in res.err, res.err
    assert "refusing" in res.err

    res = login(home, tls_master, tls_master.fingerprint)
    assert res.rc == 0, res.err
    nodes = cli(home, ["nodes", "--json"])
    assert nodes.rc == 0, nodes.err
    assert json.loads(nodes.out) == []


def test_login_to_a_self_signed_master_says_how_to_pin_it(
    tls_master: TlsMaster, tmp_path: Path
) -> None:
    home = tmp_path / "cli"
    res = cli(home, ["login", tls_master.url, "--user", ADMIN])
    assert_one_line_error(res)
    assert f"`mlsm login {tls_master.url} --fingerprint sha256:...`" in res.err, res.err
    assert "`mlsm master --print-fingerprint`" in res.err and "--ca-file" in res.err
    printed = run_cli(
        ["master", "--print-fingerprint", "--data-dir", str(tls_master.data_dir)], home=home
    )
    assert printed.rc == 0, printed
    assert printed.out.strip() == f"sha256:{tls_master.fingerprint}"
    assert login(home, tls_master, printed.out.strip()).rc == 0


def test_print_fingerprint_without_a_certificate_is_one_line(tmp_path: Path) -> None:
    res = run_cli(["master", "--print-fingerprint", "--data-dir", str(tmp_path)], home=tmp_path)
    assert_one_line_error(res)
    assert "no certificate at" in res.err, res.err


def test_plain_http_to_an_https_master_says_use_https(
    tls_master: TlsMaster, tmp_path: Path
) -> None:
    plain = tls_master.url.replace("https://", "http://")
    res = cli(tmp_path / "cli", ["login", plain, "--user", ADMIN])
    assert_one_line_error(res)
    assert res.err.strip() == (
        f"mlsm: error: the master at {plain} speaks HTTPS: use {tls_master.url}"
    ), res.err


def test_login_refuses_plain_http_to_a_non_loopback_master(tmp_path: Path) -> None:
    res = cli(tmp_path / "cli", ["login", f"http://{NON_LOOPBACK}:8765", "--user", ADMIN])
    assert_one_line_error(res)
    assert "http" in res.err.lower() and "MLSM_ALLOW_PLAIN_HTTP" in res.err, res.err


def test_an_agent_joins_pinned_and_refuses_a_master_with_another_certificate(
    tls_master: TlsMaster, tmp_path: Path
) -> None:
    home = tmp_path / "cli"
    assert login(home, tls_master, tls_master.fingerprint).rc == 0
    created = cli(home, ["join-token", "create", "--uses", "1", "--json"])
    assert created.rc == 0, created.err
    token = json.loads(created.out)["token"]
    assert token.endswith("@" + tls_master.fingerprint), token

    data = tmp_path / "agent"
    agent_log = tmp_path / "agent.log"
    argv = [MLSM, "agent", "--master", tls_master.url, "--join-token", token]
    argv += ["--name", NODE, "--data-dir", str(data), "--simulate-gpus", "1xA100"]
    env = isolated_env(tmp_path / "agent-home")
    with open(agent_log, "wb") as out:
        agent = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    try:

        def node_state() -> str:
            res = cli(home, ["nodes", "--json"])
            assert res.rc == 0, res.err
            states = {n["name"]: n["state"] for n in json.loads(res.out)}
            return str(states.get(NODE, ""))

        wait_until(lambda: node_state() == "online", JOIN_TIMEOUT_S, f"{NODE} online over HTTPS")
        assert (data / "master-fingerprint").read_text().strip() == tls_master.fingerprint
        secret = (data / "node-secret").read_text().strip()

        # The same master, data and port, but another certificate.
        tls_master.stop()
        other_cert, other_key = ensure_self_signed(tmp_path / "other-cert", ["127.0.0.1"])
        swapped = TlsMaster(
            tls_master.workdir,
            port=tls_master.port,
            extra_args=("--tls-cert", str(other_cert), "--tls-key", str(other_key)),
        )
        assert swapped.fingerprint != tls_master.fingerprint
        log_start = len(swapped.log_records())
        swapped.start()
        try:

            def says_mismatch() -> str:
                text = agent_log.read_text(errors="replace")
                return text if "certificate fingerprint mismatch" in text else ""

            text = wait_until(says_mismatch, MISMATCH_TIMEOUT_S, "the agent reporting the mismatch")
            assert swapped.fingerprint in text and tls_master.fingerprint in text
            assert agent.poll() is None, "the agent keeps retrying, it does not crash"
            assert "Traceback" not in text
            # Nothing reached the swapped master: no agent call, and so never the secret.
            paths = [r.get("path") for r in swapped.log_records()[log_start:] if r.get("path")]
            assert not [p for p in paths if str(p).startswith("/agent/")], paths
            assert secret not in swapped.log_path.read_text(errors="replace")

            # An agent started afresh against the swapped master refuses in one line.
            agent.terminate()
            agent.wait(timeout=STOP_TIMEOUT_S)
            again = subprocess.run(
                [MLSM, "agent", "--master", swapped.url, "--data-dir", str(data)],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=AGENT_EXIT_TIMEOUT_S,
                check=False,
            )
            assert_one_line_error(CliResult(again.returncode, again.stdout, again.stderr))
            assert "refusing to talk" in again.stderr and swapped.fingerprint in again.stderr

            # Pinned, the agent will not fall back to plain HTTP either.
            plain_url = f"http://127.0.0.1:{swapped.port}"
            plain = subprocess.run(
                [MLSM, "agent", "--master", plain_url, "--data-dir", str(data)],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=AGENT_EXIT_TIMEOUT_S,
                check=False,
            )
            assert_one_line_error(CliResult(plain.returncode, plain.stdout, plain.stderr))
            assert "pinned" in plain.stderr and "https://" in plain.stderr
        finally:
            swapped.stop()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(timeout=STOP_TIMEOUT_S)


#: A process that makes its certificate apart and says whether it loaded cryptography.
_APART = """
import sys
from pathlib import Path
from mlsm.tls import ensure_self_signed_apart
cert, key = ensure_self_signed_apart(Path(sys.argv[1]), ["node-a"])
print("cryptography" in sys.modules, oct(key.stat().st_mode & 0o777))
"""


def test_agent_certificate_is_made_apart_and_cryptography_is_never_loaded(
    tmp_path: Path,
) -> None:
    """The agent serves its certificate for life but makes it once: made in a child
    process, the cryptography package (8 MiB resident) is never in the agent."""
    where = tmp_path / "bulk-tls"
    argv = [sys.executable, "-c", _APART, str(where)]
    shown = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
    assert shown == ["False", "0o600"]
    pem = (where / SELF_SIGNED_CERT).read_text()
    assert pem.startswith("-----BEGIN CERTIFICATE-----")
    again = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
    assert again == ["False", "0o600"] and (where / SELF_SIGNED_CERT).read_text() == pem


def test_certificate_made_apart_fails_with_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the directory should be")
    with pytest.raises(ConfigError, match="cannot make a certificate in"):
        ensure_self_signed_apart(blocker / "bulk-tls", ["node-a"])
