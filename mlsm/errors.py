"""The one exception tree of mlsm.

Every error a client can cause maps to one HTTP status and one stable ``code``; the master
renders them as ``{"error": {"code", "message", "details"}}`` and the client turns that JSON
back into the same class, so the CLI and the dashboard print one readable line::

    MlsmError                      500 internal          (never raised for client input)
    ├── ConfigError                    config_invalid    (bad setting: names the key; CLI only)
    ├── ClientError                400 bad_request
    │   ├── ValidationError        400 validation_error  (details.path names the field)
    │   │   └── UnsafeTree         400 unsafe_tree       (a tree entry that may not move: escaping
    │   │                                                name or link, device, socket, FIFO)
    │   ├── AuthenticationError    401 unauthenticated
    │   ├── PermissionDenied       403 forbidden
    │   │   └── LimitExceeded      403 limit_exceeded    (over a lab limit: details.limit names it)
    │   ├── NotFound               404 not_found
    │   ├── Conflict               409 conflict
    │   │   ├── NodeNameTaken      409 node_name_taken   (a registered node has that name)
    │   │   ├── DestinationExists  409 destination_exists (a tree's destination is taken)
    │   │   └── SourceChanged      409 source_changed    (files changed at the source mid-transfer)
    │   ├── PayloadTooLarge        413 payload_too_large
    │   ├── RateLimited            429 rate_limited
    │   └── ProtocolMismatch       426 protocol_mismatch (agent speaks an unsupported version)
    ├── UnavailableError           503 unavailable       (the master cannot serve now: database busy)
    │   ├── AuditUnavailable       503 audit_unavailable (a change's audit row was not written)
    │   ├── NodeOffline            503 node_offline      (what was asked lives on a node that is
    │   │                                                 offline: names it and since when)
    │   ├── Unreachable                unreachable       (no answer at all: refused, timed out, TLS)
    │   │   └── PinMismatch            pin_mismatch      (the master's certificate is not the pinned one)
    │   └── StoreFull              507 store_full        (a content store is full of pinned blobs)
    ├── TransferFailed             502 transfer_failed   (bytes did not arrive intact, or the source
    │                                                     failed: names the file)
    └── DatabaseTooNew             500 database_too_new  (schema newer than this mlsm)

Codes are part of the API: add new ones, never rename. Classes without a status are raised
on the client side only (a setting, or a master that never answered); the master never
sends them. A client maps every failure of its transport into this tree at its boundary
(``mlsm.client``, the agent's ``agent.link``), so nothing above it catches httpx's errors.
"""

from __future__ import annotations

from typing import Any, ClassVar


class MlsmError(Exception):
    """Base of every mlsm error."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class ConfigError(MlsmError):
    code = "config_invalid"


class ClientError(MlsmError):
    status = 400
    code = "bad_request"


class ValidationError(ClientError):
    status = 400
    code = "validation_error"

    def __init__(
        self, message: str, *, path: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        d = dict(details or {})
        if path is not None:
            d.setdefault("path", path)
        super().__init__(message, details=d)


class UnsafeTree(ValidationError):
    """A tree (or a manifest of one) holds what may not be moved or written: a name that
    escapes (``..``, absolute, NUL), a link that leaves the tree, a device, socket or FIFO.
    The message names the first few offenders; ``details.entries`` lists them."""

    code = "unsafe_tree"


class AuthenticationError(ClientError):
    status = 401
    code = "unauthenticated"


class PermissionDenied(ClientError):
    status = 403
    code = "forbidden"


class LimitExceeded(PermissionDenied):
    """A request over one of the lab's limits (GPUs per job, time limit, priority,
    reservations): the message names the limit and its value; ``details.limit`` is the
    setting's name, ``details.allowed`` its value, ``details.asked`` what was asked."""

    code = "limit_exceeded"


class NotFound(ClientError):
    status = 404
    code = "not_found"


class Conflict(ClientError):
    status = 409
    code = "conflict"


class NodeNameTaken(Conflict):
    """A join asked for the name of a registered node (online or not): names are never
    handed over; an admin removes the node first, or the agent picks another name."""

    code = "node_name_taken"


class DestinationExists(Conflict):
    """A finished tree was not moved into place: something already has its name."""

    code = "destination_exists"


class SourceChanged(Conflict):
    """Files changed or vanished at the source after its manifest was made; the transfer
    cannot finish with that manifest (``details.paths`` names them)."""

    code = "source_changed"


class PayloadTooLarge(ClientError):
    status = 413
    code = "payload_too_large"


class RateLimited(ClientError):
    status = 429
    code = "rate_limited"


class ProtocolMismatch(ClientError):
    status = 426
    code = "protocol_mismatch"


class UnavailableError(MlsmError):
    status = 503
    code = "unavailable"


class Unreachable(UnavailableError):
    """No answer from the master at all (connection refused or reset, timeout, failed TLS
    handshake): a caller retries, as for a busy master, but knows nothing was processed."""

    code = "unreachable"


class PinMismatch(Unreachable):
    """The master presented a certificate other than the pinned one; nothing was sent.

    Unreachable for every caller (the right certificate may come back), while the message
    names both fingerprints."""

    code = "pin_mismatch"


class StoreFull(UnavailableError):
    """A content-addressed store cannot take a blob: what it holds is pinned by live users
    and its byte limit is reached."""

    status = 507
    code = "store_full"


class TransferFailed(MlsmError):
    """Bytes of a transfer did not arrive intact (a file failed verification again and
    again, a malformed frame stream) or the source reported an error; the message names
    the file. What was verified so far is kept, so a retry resumes."""

    status = 502
    code = "transfer_failed"


class AuditUnavailable(UnavailableError):
    """A mutation's audit row could not be committed, so the master does not acknowledge
    the mutation (which may nevertheless have been applied)."""

    code = "audit_unavailable"


class NodeOffline(UnavailableError):
    """What was asked (a job's outputs) lives on a node that does not answer now; the
    message names the node and since when it is offline (``details``: node, since)."""

    code = "node_offline"


class DatabaseTooNew(MlsmError):
    code = "database_too_new"


_BY_CODE: dict[str, type[MlsmError]] = {
    cls.code: cls
    for cls in (
        MlsmError,
        ConfigError,
        ClientError,
        ValidationError,
        UnsafeTree,
        AuthenticationError,
        PermissionDenied,
        LimitExceeded,
        NotFound,
        Conflict,
        NodeNameTaken,
        DestinationExists,
        SourceChanged,
        PayloadTooLarge,
        RateLimited,
        ProtocolMismatch,
        UnavailableError,
        Unreachable,
        PinMismatch,
        StoreFull,
        TransferFailed,
        AuditUnavailable,
        NodeOffline,
        DatabaseTooNew,
    )
}
# An answer whose code this mlsm does not know (a newer master's) keeps the class of its
# status, so a caller's decisions (re-join on 401/403, retry on 503) still hold; the first
# class listed with a status is its most general one.
_BY_STATUS: dict[int, type[MlsmError]] = {}
for _cls in _BY_CODE.values():
    _BY_STATUS.setdefault(_cls.status, _cls)


def from_response(status: int, body: Any, reason: str = "") -> MlsmError:
    """Rebuild the error a master sent (used by :mod:`mlsm.client` and ``agent.link``); an
    unknown code is classed by its status. An answer without mlsm's error JSON (a proxy's,
    say) is named by its status and ``reason`` phrase. Either text is the remote host's:
    whoever shows it makes its controls visible (``mlsm.termsafe``)."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and isinstance(err.get("code"), str):
        cls = _BY_CODE.get(err["code"]) or _BY_STATUS.get(
            status, ClientError if 400 <= status < 500 else MlsmError
        )
        exc = cls.__new__(cls)
        details = err.get("details")
        MlsmError.__init__(
            exc,
            str(err.get("message", "")),
            details=details if isinstance(details, dict) else {},
        )
        return exc
    if status == 401:
        return AuthenticationError("not logged in")
    if status == 403:
        return PermissionDenied("not allowed")
    if status == 404:
        return NotFound("not found")
    what = f"HTTP {status} {reason}".rstrip()
    if 400 <= status < 500:
        return ClientError(f"request refused ({what})")
    return MlsmError(f"master error ({what})")
