"""Bulk bytes between agents and the master: the relay pipe's record stream and commands.

A **relay pipe** carries one answer of a source agent to a puller through the master
(:mod:`mlsm.master.services.bulk`): the master sends the agent a command that carries a
``pipe_id`` (:class:`BulkServe`, :class:`BulkManifest`, or any later command with a
``pipe_id`` field), and the agent POSTs its answer to ``/agent/v1/bulk/push/{pipe_id}``
as a streaming body of **pipe records**::

    u32 length | u8 kind | length bytes

- ``DATA``: opaque bytes of the answer (a frame stream, a MessagePack manifest ...);
- ``END``: the answer is complete (no bytes);
- ``ERROR``: the answer failed; the bytes are an :class:`~mlsm.wire.agent.AgentError`
  (code, message) in MessagePack, rebuilt on the puller's side as the same
  :mod:`mlsm.errors` class (a missing dataset is ``NotFound`` there too).

A body that stops without ``END`` or ``ERROR`` is a cut answer (the puller gets
:class:`~mlsm.errors.TransferFailed`). The master hands a puller the same records
(``/agent/v1/bulk/pull``), so both ends decode with :class:`PipeReader`.

Source specs name trees, never raw paths: ``dataset NAME`` now; ``job-output JOB``,
``code SNAPSHOT``, ``project USER/NAME`` are further kinds, each resolved by the source
agent against its own state (an unknown kind is refused there with ``NotFound``).
"""

from __future__ import annotations

import enum
import struct
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from mlsm import errors
from mlsm.bulk.want import Want
from mlsm.wire.ints import Int64

__all__ = [
    "MAX_PIPE_RECORD",
    "PIPE_HEADER",
    "BulkListen",
    "BulkManifest",
    "BulkPull",
    "BulkReceive",
    "BulkServe",
    "DirectHello",
    "DirectOffer",
    "ListenReply",
    "PipeKind",
    "PipeReader",
    "SourceSpec",
    "encode_error",
    "pipe_record",
]

PIPE_HEADER = struct.Struct("<IB")
MAX_PIPE_RECORD = 16 << 20  # bytes in one record (a data chunk is ~1 MiB)
MAX_ERROR_RECORD = 64 << 10
PIPE_ID_PATTERN = r"^[A-Za-z0-9_-]{16,64}$"
PipeId = Annotated[str, Meta(pattern=PIPE_ID_PATTERN)]
SourceKind = Annotated[str, Meta(pattern=r"^[a-z][a-z-]{0,31}$")]
SourceName = Annotated[str, Meta(min_length=1, max_length=512)]
Fingerprint = Annotated[str, Meta(max_length=128)]


class PipeKind(enum.IntEnum):
    DATA = 0
    END = 1
    ERROR = 2


class SourceSpec(Struct, kw_only=True, frozen=True):
    """A tree a source agent serves: ``kind`` (``dataset``, ...) and its name there."""

    kind: SourceKind
    name: SourceName

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


class BulkManifest(Struct, tag="bulk_manifest", kw_only=True):
    """Source side: push the manifest (MessagePack :class:`~mlsm.bulk.Manifest`) of
    ``source`` into relay pipe ``pipe_id``. ``hashes_later``: files the source's hash cache
    does not know are left with their hash to come (sent after each file's bytes; a
    dataset copy's target asks for that, an older source ignores it and hashes all).
    ``resume``: the digest of the manifest the target's journal is for (it asks again
    after a cut); the source answers with that manifest while the tree still matches it,
    else with a fresh one."""

    id: Int64
    pipe_id: PipeId
    source: SourceSpec
    hashes_later: bool = False
    resume: Annotated[str, Meta(max_length=64)] = ""


class BulkServe(Struct, tag="bulk_serve", kw_only=True):
    """Source side: push the frames answering ``want`` for ``source`` into pipe
    ``pipe_id``. ``manifest_digest`` names the manifest the want's indices refer to (the
    agent's copy; a tree that changed since is refused with ``source_changed``)."""

    id: Int64
    pipe_id: PipeId
    source: SourceSpec
    want: Want
    manifest_digest: Annotated[str, Meta(max_length=64)] = ""


class BulkReceive(Struct, tag="bulk_receive", kw_only=True):
    """Target side: bring ``source`` (held by node ``src_node``) to this node as dataset
    ``name`` under ``root`` (a private, journaled work dir, then an atomic rename),
    pulling through the master's relay (``/agent/v1/bulk/pull``) for ``transfer_id``."""

    id: Int64
    transfer_id: Int64
    source: SourceSpec
    src_node: Annotated[str, Meta(max_length=128)] = ""
    name: Annotated[str, Meta(min_length=1, max_length=128)]
    root: Annotated[str, Meta(max_length=4096)] = ""
    max_bytes: Annotated[int, Meta(ge=0, le=(1 << 63) - 1)] = 0  # 0 = the agent's own limit


class BulkPull(Struct, kw_only=True):
    """Target -> master (``POST /agent/v1/bulk/pull``): the manifest, or the frames of
    ``want``, of the transfer's source, or (``direct``) a :class:`DirectOffer` for one
    connection to the source itself; answered with pipe records. ``manifest_digest``
    names the manifest a want's indices refer to; with ``manifest``, the one the target's
    journal is for (:attr:`BulkManifest.resume`), when it has one."""

    transfer_id: Int64
    what: Literal["manifest", "want", "direct"] = "want"
    want: Want | None = None
    manifest_digest: Annotated[str, Meta(max_length=64)] = ""
    fresh: bool = False  # direct: the last offer's listener did not answer; open another
    hashes_later: bool = False  # manifest: this target takes hashes to come (BulkManifest)


# ---------------------------------------------------------------- the direct path
CertPem = Annotated[str, Meta(max_length=16384)]
Address = Annotated[str, Meta(max_length=64)]
MAX_HELLO = 1 << 20  # bytes of a DirectHello (a want of many small files)


class BulkListen(Struct, tag="bulk_listen", kw_only=True):
    """Source side: open a TLS listener for transfer ``transfer_id`` (serving ``source``
    only, to the node whose certificate is ``target_cert`` only, for tickets made with
    ``key`` (hex) only, until ``expires_at``) and push :class:`ListenReply` into pipe
    ``pipe_id``."""

    id: Int64
    pipe_id: PipeId
    transfer_id: Int64
    source: SourceSpec
    target_node: Int64
    target_cert: CertPem
    key: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
    expires_at: float


class ListenReply(Struct, kw_only=True):
    port: Annotated[int, Meta(ge=1, le=65535)]


class WireTicket(Struct, kw_only=True, frozen=True):
    """:class:`mlsm.bulk.tickets.Ticket` on the wire."""

    transfer_id: Int64
    target_node: Int64
    source: Annotated[str, Meta(max_length=600)]
    serial: Int64
    expires_at: float
    mac: Annotated[str, Meta(max_length=64)]


class DirectOffer(Struct, kw_only=True):
    """Master -> target: where the source listens for this transfer, the source's
    certificate (the only one the target accepts there) and one connection's ticket."""

    addresses: list[Address]
    port: Annotated[int, Meta(ge=1, le=65535)]
    cert: CertPem
    ticket: WireTicket


class DirectHello(Struct, kw_only=True):
    """Target -> source, first on a direct connection (``u32 length`` then MessagePack):
    the ticket and the one want this connection asks for; answered with pipe records."""

    ticket: WireTicket
    want: Want
    manifest_digest: Annotated[str, Meta(max_length=64)] = ""


# ---------------------------------------------------------------- the record stream
def pipe_record(kind: PipeKind, data: bytes | memoryview = b"") -> bytes:
    """A record's header (and, for small records, its bytes): data chunks are sent as
    header then chunk, never copied."""
    return PIPE_HEADER.pack(len(data), kind) + bytes(data)


def pipe_header(kind: PipeKind, length: int) -> bytes:
    return PIPE_HEADER.pack(length, kind)


class _ErrorBody(Struct):
    code: str
    message: str


_encode = msgspec.msgpack.Encoder().encode
_decode_error = msgspec.msgpack.Decoder(_ErrorBody).decode


def encode_error(exc: errors.MlsmError) -> bytes:
    """An ERROR record for ``exc`` (its code and message; the message cut to fit)."""
    body = _encode(_ErrorBody(exc.code, exc.message[:4096]))
    return pipe_record(PipeKind.ERROR, body)


def decode_error(data: bytes | memoryview) -> errors.MlsmError:
    """The :mod:`mlsm.errors` class an ERROR record names (by its code)."""
    try:
        body = _decode_error(data)
    except msgspec.DecodeError:
        return errors.TransferFailed("the source failed with an unreadable error")
    return errors.from_response(0, {"error": {"code": body.code, "message": body.message}})


class PipeReader:
    """Incremental decoder of pipe records: :meth:`feed` chunks split anywhere, get
    ``(kind, bytes)`` back; data comes out as zero-copy views of the chunks fed, in
    pieces as it arrives (a record is never buffered whole)."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._kind = PipeKind.DATA
        self._left = 0
        self._control = bytearray()
        self.ended = False  # END or ERROR seen
        #: The last :meth:`feed` ended inside a DATA record's payload, some of it in that
        #: chunk: the last piece it gave ends the chunk, and the next feed's first piece
        #: (from the start of its chunk) is more of the same record.
        self.open_data = False

    @property
    def at_boundary(self) -> bool:
        return not self._left and not self._head

    def feed(self, chunk: bytes | memoryview) -> list[tuple[PipeKind, memoryview]]:
        view = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
        out: list[tuple[PipeKind, memoryview]] = []
        pos, end = 0, len(view)
        self.open_data = False
        while pos < end:
            if self.ended:
                raise errors.TransferFailed("the pipe stream goes on after its end")
            if not self._left:
                need = PIPE_HEADER.size - len(self._head)
                self._head += view[pos : pos + need]
                pos += min(need, end - pos)
                if len(self._head) < PIPE_HEADER.size:
                    break
                length, kind = PIPE_HEADER.unpack(self._head)
                self._head.clear()
                self._start(length, kind, out)
                continue
            take = min(self._left, end - pos)
            piece = view[pos : pos + take]
            pos += take
            self._left -= take
            if self._kind is PipeKind.DATA:
                out.append((PipeKind.DATA, piece))
                self.open_data = pos == end and self._left > 0
            else:
                self._control += piece
                if not self._left:
                    self._emit_control(out)
        return out

    def _start(self, length: int, kind: int, out: list[tuple[PipeKind, memoryview]]) -> None:
        try:
            k = PipeKind(kind)
        except ValueError:
            raise errors.TransferFailed(f"malformed pipe stream: record kind {kind}") from None
        limit = MAX_PIPE_RECORD if k is PipeKind.DATA else MAX_ERROR_RECORD
        if length > limit or (k is PipeKind.END and length):
            raise errors.TransferFailed(f"malformed pipe stream: a {k.name} record of {length}")
        self._kind, self._left = k, length
        if k is not PipeKind.DATA and not length:
            self._emit_control(out)

    def _emit_control(self, out: list[tuple[PipeKind, memoryview]]) -> None:
        out.append((self._kind, memoryview(bytes(self._control))))
        self._control.clear()
        self.ended = True
        self._kind = PipeKind.DATA


decode_pull = msgspec.msgpack.Decoder(BulkPull).decode
decode_offer = msgspec.msgpack.Decoder(DirectOffer).decode
decode_hello = msgspec.msgpack.Decoder(DirectHello).decode
decode_listen_reply = msgspec.msgpack.Decoder(ListenReply).decode
