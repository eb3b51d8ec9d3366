"""HTTP plumbing shared by every route: request ids, the per-request JSON log line, the audit
hook for mutations (which holds each response until its row is committed), the client
address, and the mapping of every exception to the structured error body."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from typing import Any, Protocol

import msgspec
from litestar import Request, Response
from litestar.enums import ScopeType
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from mlsm.errors import AuditUnavailable, MlsmError
from mlsm.logs import JsonLogFormatter as JsonLogFormatter  # re-exported
from mlsm.logs import setup_logging as setup_logging  # re-exported
from mlsm.master.clientaddr import ClientAddresses
from mlsm.wire.agent import MSGPACK, AgentError
from mlsm.wire.explain import explain

log = logging.getLogger("mlsm.master")
request_log = logging.getLogger("mlsm.master.request")
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Agent routes that fire many times a second are logged at debug level only.
QUIET_PATHS = ("/agent/v1/heartbeat", "/agent/v1/commands", "/agent/v1/logs", "/agent/v1/events")


_ANY_PEER = ClientAddresses()  # no trusted proxies: the peer address


def client_addr(scope: Scope) -> str:
    """The request's client address, by the one rule of :mod:`mlsm.master.clientaddr`
    (trusted proxies from the settings, handed on by :class:`RequestMiddleware`); worked
    out once per request."""
    state = scope.setdefault("state", {})
    addr = state.get("client_addr")
    if addr is None:
        resolver = state.get("client_addresses")
        if not isinstance(resolver, ClientAddresses):
            resolver = _ANY_PEER
        addr = state["client_addr"] = resolver.resolve(scope)
    return str(addr)


class AuditSink(Protocol):
    """Where audit rows go (:class:`~mlsm.master.services.audit.AuditLog`)."""

    async def append(
        self,
        *,
        actor: str,
        role: str,
        action: str,
        target: str,
        outcome: str,
        client: str,
        request_id: str,
        details: dict[str, Any] | None = None,
    ) -> None: ...


class RequestMiddleware(ASGIMiddleware):
    """Request id, timing, one JSON log line, and an audit row for every mutation.

    An audited request's response is held at its start until its audit row is committed
    (the audit log's group commit batches them), so nothing is acknowledged without its
    row. If the row cannot be written, a success turns into 503 ``audit_unavailable``: the
    caller learns the change may have happened without a record instead of a plain "ok".
    """

    scopes = (ScopeType.HTTP,)

    def __init__(self, audit: AuditSink, addresses: ClientAddresses) -> None:
        self.audit = audit
        self.addresses = addresses

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        start = time.perf_counter()
        rid = ""
        for k, v in scope.get("headers", ()):
            if k == b"x-request-id":
                cand = v.decode("latin-1")
                rid = cand if _REQUEST_ID_OK.match(cand) else ""
                break
        rid = rid or secrets.token_hex(8)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        state["client_addresses"] = self.addresses
        status = 500
        method = str(scope.get("method", ""))
        audited = False  # the row was written (or tried) while the response was held
        replaced = False  # the response was swapped for the audit failure

        async def _send(message: Message) -> None:
            nonlocal status, audited, replaced
            if replaced:
                return  # the held response's body: the caller got the 503 instead
            if message["type"] == "http.response.start":
                status = message["status"]
                action = _audit_action(scope, method)
                if action is not None:
                    audited = True
                    if not await _audit(self.audit, scope, action, status, rid) and status < 400:
                        replaced = True
                        status = AuditUnavailable.status
                        await _send_audit_failure(scope, send, rid)
                        return
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await next_app(scope, receive, _send)
        finally:
            if not audited:  # no response was started (the app failed outright)
                action = _audit_action(scope, method)
                if action is not None:
                    await _audit(self.audit, scope, action, status, rid)
            elapsed_ms = (time.perf_counter() - start) * 1000
            path = scope.get("path", "")
            level = logging.DEBUG if path.startswith(QUIET_PATHS) else logging.INFO
            if request_log.isEnabledFor(level):
                user = scope.get("user")
                fields = {
                    "request_id": rid,
                    "method": method,
                    "path": path,
                    "status": status,
                    "ms": round(elapsed_ms, 2),
                    "client": client_addr(scope),
                    "user": getattr(user, "name", None),
                }
                request_log.log(level, "request", extra={"fields": fields})


def _audit_action(scope: Scope, method: str) -> str | None:
    if method not in MUTATING:
        return None
    handler = scope.get("route_handler")
    action = handler.opt.get("audit") if handler is not None else None
    return str(action) if action else None


async def _audit(audit: AuditSink, scope: Scope, action: str, status: int, rid: str) -> bool:
    """Write the request's audit row and wait for its commit; False if it failed."""
    state = scope.get("state", {})
    user = scope.get("user")
    actor = getattr(user, "name", None) or state.get("audit_actor") or "anonymous"
    role = getattr(user, "role", None) or "anonymous"
    if status < 400:
        outcome = "ok"
    elif status in (401, 403):
        outcome = "denied"
    elif status < 500:
        outcome = "failed"
    else:
        outcome = "error"
    details = dict(state.get("audit_details") or {})
    if status >= 400:
        details["status"] = status
        if state.get("error_code"):
            details["error"] = state["error_code"]
    target = state.get("audit_target") or scope.get("path", "")
    try:
        await audit.append(
            actor=str(actor),
            role=str(role),
            action=action,
            target=str(target),
            outcome=outcome,
            client=client_addr(scope),
            request_id=rid,
            details=details,
        )
    except Exception:
        log.exception("could not write the audit row for %s (request %s)", action, rid)
        return False
    return True


async def _send_audit_failure(scope: Scope, send: Send, rid: str) -> None:
    exc = AuditUnavailable(
        "the change may have been applied, but its audit row could not be written, so the "
        f"master does not acknowledge it; check before retrying (request {rid})",
        details={"request_id": rid},
    )
    if scope.get("path", "").startswith("/agent/"):
        body = msgspec.msgpack.encode(AgentError(code=exc.code, message=exc.message))
        media = MSGPACK.encode()
    else:
        body = msgspec.json.encode(exc.to_dict())
        media = b"application/json"
    await send(
        {
            "type": "http.response.start",
            "status": exc.status,
            "headers": [
                (b"content-type", media),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", rid.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def audit_target(request: Request[Any, Any, Any], target: str, **details: Any) -> None:
    """Handlers name what a mutation touched (the audit row's target and details)."""
    request.scope["state"]["audit_target"] = target
    if details:
        request.scope["state"].setdefault("audit_details", {}).update(details)


async def audit_each(
    request: Request[Any, Any, Any],
    audit: AuditSink,
    action: str,
    targets: list[str],
    **details: Any,
) -> None:
    """One audit row per thing a request changed (a selection's jobs), beside the request's
    own row; all committed before the response goes. The rows are appended together, so
    the audit log's group commit writes them in a few transactions, not one each."""
    scope = request.scope
    user = scope.get("user")
    rid = str(scope.get("state", {}).get("request_id", ""))
    await asyncio.gather(
        *(
            audit.append(
                actor=str(getattr(user, "name", None) or "anonymous"),
                role=str(getattr(user, "role", None) or "anonymous"),
                action=action,
                target=target,
                outcome="ok",
                client=client_addr(scope),
                request_id=rid,
                details=details,
            )
            for target in targets
        )
    )


# ---------------------------------------------------------------- errors -> responses
def _body(
    request: Request[Any, Any, Any], status: int, code: str, message: str, details: dict[str, Any]
) -> Response[Any]:
    request.scope.setdefault("state", {})["error_code"] = code
    if request.scope.get("path", "").startswith("/agent/"):
        return Response(
            content=msgspec.msgpack.encode(AgentError(code=code, message=message)),
            status_code=status,
            media_type=MSGPACK,
        )
    return Response(
        content={"error": {"code": code, "message": message, "details": details}},
        status_code=status,
    )


def _validation_details(exc: ValidationException) -> tuple[str, dict[str, Any]]:
    """The first problem as a sentence naming its field (``password: must be at least 8
    characters``), with the field and the part of the request it was in as details."""
    extra = exc.extra
    items = extra if isinstance(extra, list) else [extra] if isinstance(extra, dict) else []
    for item in items:
        if isinstance(item, dict):
            msg = str(item.get("message", "")) or exc.detail
            field, sentence = explain(msg, str(item.get("key") or ""))
            return sentence, {"path": field, "source": item.get("source", "body")}
    return exc.detail or "invalid request", {}


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, MlsmError):
        if exc.status >= 500:
            log.error("%s: %s", exc.code, exc.message)
        return _body(request, exc.status, exc.code, exc.message, exc.details)
    if isinstance(exc, ValidationException):
        message, details = _validation_details(exc)
        return _body(request, 400, "validation_error", message, details)
    if isinstance(exc, NotAuthorizedException):
        return _body(request, 401, "unauthenticated", exc.detail or "authentication required", {})
    if isinstance(exc, PermissionDeniedException):
        return _body(request, 403, "forbidden", exc.detail or "not allowed", {})
    if isinstance(exc, NotFoundException):
        return _body(request, 404, "not_found", exc.detail or "not found", {})
    if isinstance(exc, MethodNotAllowedException):
        return _body(request, 405, "method_not_allowed", exc.detail or "method not allowed", {})
    if isinstance(exc, HTTPException):
        code = {413: "payload_too_large", 429: "rate_limited", 415: "unsupported_media_type"}.get(
            exc.status_code, "bad_request" if exc.status_code < 500 else "internal"
        )
        if exc.status_code >= 500:
            log.error("HTTP %s: %s", exc.status_code, exc.detail)
        return _body(request, exc.status_code, code, exc.detail or "request refused", {})
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _body(
        request,
        500,
        "internal",
        "internal error; the master's log has details",
        {"request_id": request.scope.get("state", {}).get("request_id", "")},
    )
