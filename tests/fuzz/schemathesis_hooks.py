"""schemathesis hooks for the fuzz run (loaded through ``SCHEMATHESIS_HOOKS``).

- Authentication: a superadmin session from ``POST /api/v1/auth/login``; schemathesis logs
  in again whenever a request answers 401 (the fuzzer itself logs out and revokes tokens).
  The hooks log in from their own loopback address (:data:`HOOKS_ADDRESS`), as an admin at
  their own machine would: the fuzzer's generated logins (from 127.0.0.1) can name the
  superadmin (the stateful phase takes usernames from responses), and their wrong passwords
  back off logins for that user *from 127.0.0.1* for up to 15 minutes, which once ended the
  run's ability to log in ("Token fetch failed"). A right password from another address is
  never refused (the login limits' per-user delay slows it by at most 2 s).
- The fuzzing account is never the one fuzzed: a request that would edit it
  (``PATCH /api/v1/users/{username}``) edits a stand-in account instead, or a generated
  password change would end the run's ability to log in.
- ``POST /api/v1/auth/password`` runs as a third account's session: its wrong "current
  passwords" count as failed logins for the account that sends them (the login limits'
  per-user-and-address backoff), which would otherwise soon refuse the superadmin's own
  logins from this address and end the run's ability to log in again.
- ``GET /api/v1/jobs/{id}/log/follow`` streams until the job ends, and nothing runs the
  fuzzer's jobs (no agent), so the job is cancelled first and the stream answers at once.
- ``GET /api/v1/events/follow`` stays open while nothing happens: it is asked to end once
  idle (``wait=0``).

Settings come from the environment the test sets: ``MLSM_FUZZ_URL``, ``MLSM_FUZZ_USER``,
``MLSM_FUZZ_PASSWORD``, ``MLSM_FUZZ_STAND_IN``, ``MLSM_FUZZ_PASSWORD_CHANGER_TOKEN``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import httpx
import schemathesis

URL = os.environ.get("MLSM_FUZZ_URL", "")
USER = os.environ.get("MLSM_FUZZ_USER", "")
PASSWORD = os.environ.get("MLSM_FUZZ_PASSWORD", "")
STAND_IN = os.environ.get("MLSM_FUZZ_STAND_IN", "")
PASSWORD_CHANGER_TOKEN = os.environ.get("MLSM_FUZZ_PASSWORD_CHANGER_TOKEN", "")
PASSWORD_CHANGE_PATH = "/api/v1/auth/password"
HTTP_TIMEOUT_S = 30.0
INT64_MAX = 2**63 - 1
#: How long a login is reused before logging in again (401s refresh it sooner).
TOKEN_REFRESH_S = 600
#: The source address of the hooks' own requests (any 127/8 address is this host's).
HOOKS_ADDRESS = "127.0.0.2"


_session: dict[str, str] = {}  # the hooks' own login, apart from the fuzzed requests'


def _client() -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=HOOKS_ADDRESS)
    return httpx.Client(transport=transport, timeout=HTTP_TIMEOUT_S)


def _login() -> str:
    with _client() as client:
        resp = client.post(
            f"{URL}/api/v1/auth/login",
            json={"username": USER, "password": PASSWORD},
        )
    if resp.status_code != 200:
        # schemathesis reports only "Token fetch failed": say why on stderr, which the test shows.
        print(
            f"fuzz hooks: login as {USER} answered {resp.status_code}: {resp.text}", file=sys.stderr
        )
        resp.raise_for_status()
    return str(resp.json()["token"])


def _as_superadmin(method: str, path: str, body: Any) -> None:
    """A request of the hooks themselves, logging in again once if the token was revoked."""
    for _ in range(2):
        token = _session.get("token") or _login()
        _session["token"] = token
        with _client() as client:
            resp = client.request(
                method, f"{URL}{path}", json=body, headers={"Authorization": f"Bearer {token}"}
            )
        if resp.status_code != 401:
            return
        _session.pop("token", None)


@schemathesis.auth(refresh_interval=TOKEN_REFRESH_S)
class SuperadminSession:
    def get(self, case: Any, ctx: Any) -> str:
        return _login()

    def set(self, case: Any, data: str, ctx: Any) -> None:
        if case.operation.path == PASSWORD_CHANGE_PATH and PASSWORD_CHANGER_TOKEN:
            data = PASSWORD_CHANGER_TOKEN
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    path = case.operation.path
    params = case.path_parameters or {}
    if path == "/api/v1/users/{username}" and params.get("username") == USER:
        case.path_parameters = {**params, "username": STAND_IN}
    elif path == "/api/v1/events/follow":
        # The event stream stays open while the lab is quiet: ask it to end once idle.
        case.query = {**(case.query or {}), "wait": 0}
    elif path.endswith("/log/follow"):
        job_id = params.get("job_id")
        if isinstance(job_id, str) and job_id.isdigit():  # ids taken from responses by links
            job_id = int(job_id)
        if isinstance(job_id, int) and 0 < job_id <= INT64_MAX:
            _as_superadmin("POST", "/api/v1/jobs/cancel", {"ids": [job_id]})
