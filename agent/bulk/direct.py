"""The direct path: a source agent serves one transfer's frames to its target over TLS.

**Identity.** Each agent keeps a key and a self-signed certificate in
``<data dir>/bulk-tls/`` (key 0600, :func:`mlsm.tls.ensure_self_signed`) and reports the
certificate and its addresses in its node info; the master hands each side the other's
certificate, so both ends pin: the target accepts only the source's certificate, and the
source's listener requires a client certificate and accepts only the target's.

**Listening** (``BulkListen``, answered through a relay pipe with the port): one listener
per command, on an ephemeral port on every IPv4 address (one socket, so one port), for one transfer's source spec, with
that transfer's session key; it closes at ``expires_at`` or after :data:`LISTEN_IDLE_S`
without a connection. Each connection must send, within :data:`HELLO_TIMEOUT_S`, a
``u32 length`` and a MessagePack :class:`~mlsm.wire.bulk.DirectHello` (ticket and one
want); the ticket is checked by a :class:`~mlsm.bulk.tickets.TicketGate` (MAC, transfer,
source spec, target node, expiry, single use) and the connection is answered with pipe
records (:mod:`mlsm.wire.bulk`): the want's frames and END, or one ERROR record saying why
nothing is served (a wrong, replayed or expired ticket; garbage), then closed.

**Connecting** (the target, :func:`fetch_direct`): each want gets a fresh offer (and so a
fresh ticket) from the master, a connection tried on each address with a short connect
timeout (:data:`CONNECT_TIMEOUT_S`), the hello, and the answer's records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from mlsm import errors
from mlsm.bulk import Source
from mlsm.bulk.tickets import Ticket, TicketGate
from mlsm.tls import ensure_self_signed, fingerprint_of_pem
from mlsm.wire import bulk as wb

from .sources import SourceBook

log = logging.getLogger("mlsm.agent.bulk")

TLS_DIR = "bulk-tls"
CONNECT_TIMEOUT_S = 3.0  # a source not reachable directly is given up on this fast
HELLO_TIMEOUT_S = 10.0  # a connection must say who it is within this long
HANDSHAKE_TIMEOUT_S = 10.0
STALL_S = 60.0  # a direct answer that sends nothing this long is given up (then resumed)
LISTEN_IDLE_S = 120.0  # a listener nobody connects to closes after this long
READ_CHUNK = 1 << 20
#: Bytes buffered per direct connection, each way (asyncio's defaults, 64 KiB, pause the
#: transfer every few TLS records).
STREAM_BUFFER = 4 << 20
_LEN = struct.Struct("<I")
_encode = msgspec.msgpack.Encoder().encode


@dataclass(frozen=True)
class Identity:
    """This agent's direct-path certificate and key (see the module docstring)."""

    cert_path: Path
    key_path: Path
    cert_pem: str

    @property
    def fingerprint(self) -> str:
        return fingerprint_of_pem(self.cert_pem)

    @classmethod
    def load(cls, data_dir: Path, name: str) -> Identity:
        cert, key = ensure_self_signed(data_dir / TLS_DIR, [name])
        return cls(cert, key, cert.read_text())


def local_addresses() -> list[str]:
    """Addresses a peer may reach this node at: every IPv4 address, loopback last."""
    import psutil

    out: list[str] = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and a.address not in out:
                out.append(a.address)
    out.sort(key=lambda a: a.startswith("127."))
    return out[:64]


def _pinned(cert_pem: str, purpose: ssl.Purpose) -> ssl.SSLContext:
    """A context that trusts exactly ``cert_pem`` (partial chain: the self-signed leaf)."""
    ctx = ssl.create_default_context(purpose, cadata=cert_pem)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def ticket_of(t: wb.WireTicket) -> Ticket:
    return Ticket(
        transfer_id=t.transfer_id,
        target_node=t.target_node,
        source=t.source,
        serial=t.serial,
        expires_at=t.expires_at,
        mac=t.mac,
    )


# ---------------------------------------------------------------- the source's side
class DirectServer:
    """The listeners this agent opened (see the module docstring)."""

    def __init__(self, identity: Identity, sources: SourceBook) -> None:
        self.identity = identity
        self.sources = sources
        self.servers: set[asyncio.Server] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def listen(self, cmd: wb.BulkListen) -> int:
        """Open the listener ``cmd`` asks for; its port."""
        try:
            ctx = _pinned(cmd.target_cert, ssl.Purpose.CLIENT_AUTH)
        except ssl.SSLError:
            raise errors.ValidationError("the target's certificate is unreadable") from None
        ctx.load_cert_chain(self.identity.cert_path, self.identity.key_path)
        gate = TicketGate(bytes.fromhex(cmd.key), cmd.transfer_id, str(cmd.source), cmd.target_node)
        activity = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            activity.set()
            try:
                await self._serve(cmd, gate, reader, writer)
            finally:
                activity.set()  # idle counts from the end of the last connection

        server = await asyncio.start_server(
            handle,
            host="0.0.0.0",
            port=0,
            ssl=ctx,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S,
            limit=STREAM_BUFFER,
        )
        self.servers.add(server)
        port = int(server.sockets[0].getsockname()[1])
        log.info("transfer %s: listening on port %d for %s", cmd.transfer_id, port, cmd.source)
        task = asyncio.create_task(self._close_when_done(server, cmd.expires_at, activity))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return port

    async def _close_when_done(
        self, server: asyncio.Server, expires_at: float, activity: asyncio.Event
    ) -> None:
        """Close ``server`` at ``expires_at``, or once nobody connected for LISTEN_IDLE_S."""
        try:
            while (left := min(expires_at - time.time(), LISTEN_IDLE_S)) > 0:
                activity.clear()
                try:
                    await asyncio.wait_for(activity.wait(), left)
                except TimeoutError:
                    break
        finally:
            server.close()
            self.servers.discard(server)

    async def _serve(
        self,
        cmd: wb.BulkListen,
        gate: TicketGate,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        peer = writer.get_extra_info("peername")
        writer.transport.set_write_buffer_limits(high=STREAM_BUFFER)
        try:
            try:
                hello = await asyncio.wait_for(_read_hello(reader), HELLO_TIMEOUT_S)
                gate.admit(ticket_of(hello.ticket))
            except TimeoutError:
                raise errors.PermissionDenied("no ticket was presented in time") from None
            await self._answer(cmd, hello, writer)
        except errors.MlsmError as exc:
            log.warning(
                "transfer %s: direct connection from %s refused: %s",
                cmd.transfer_id,
                peer,
                exc.message,
            )
            with contextlib.suppress(OSError, ConnectionError):
                writer.write(wb.encode_error(exc))
                await writer.drain()
        except (OSError, ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info(
                "transfer %s: direct connection from %s ended (%s)", cmd.transfer_id, peer, exc
            )
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(
        self, cmd: wb.BulkListen, hello: wb.DirectHello, writer: asyncio.StreamWriter
    ) -> None:
        """The want's frames as pipe records; reading and hashing run in a thread."""
        tree, manifest = await asyncio.to_thread(
            self.sources.serving, cmd.source, hello.manifest_digest
        )
        source = Source.from_tree(tree.root, manifest)
        try:
            chunks = source.chunks(hello.want)
            end = object()
            while True:
                chunk = await asyncio.to_thread(next, chunks, end)
                if chunk is end:
                    break
                assert isinstance(chunk, bytes | bytearray | memoryview)
                writer.write(wb.pipe_header(wb.PipeKind.DATA, len(chunk)))
                writer.write(chunk)
                await writer.drain()
            writer.write(wb.pipe_record(wb.PipeKind.END))
            await writer.drain()
        finally:
            source.close()

    def close(self) -> None:
        for server in list(self.servers):
            server.close()
        self.servers.clear()


async def _read_hello(reader: asyncio.StreamReader) -> wb.DirectHello:
    head = await reader.readexactly(_LEN.size)
    (length,) = _LEN.unpack(head)
    if length > wb.MAX_HELLO:
        raise errors.PermissionDenied("not a direct-transfer hello (too long)")
    body = await reader.readexactly(length)
    try:
        return wb.decode_hello(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise errors.PermissionDenied("not a direct-transfer hello") from None


# ---------------------------------------------------------------- the target's side
class SourceUnreachable(errors.Unreachable):
    """No connection to the source's listener (the target falls back to the relay)."""


async def connect(
    offer: wb.DirectOffer, identity: Identity
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A pinned TLS connection to the source on the first address that answers within
    :data:`CONNECT_TIMEOUT_S`; :class:`~mlsm.errors.Unreachable` naming why otherwise."""
    ctx = _pinned(offer.cert, ssl.Purpose.SERVER_AUTH)
    ctx.load_cert_chain(identity.cert_path, identity.key_path)
    why = "it offers no address"
    for address in offer.addresses:
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(
                    address, offer.port, ssl=ctx, server_hostname=None, limit=STREAM_BUFFER
                ),
                CONNECT_TIMEOUT_S,
            )
        except TimeoutError:
            why = f"{address}:{offer.port}: no answer in {CONNECT_TIMEOUT_S:g} s"
        except ssl.SSLError as exc:
            why = f"{address}:{offer.port}: TLS refused ({exc.reason or exc})"
        except OSError as exc:
            why = f"{address}:{offer.port}: {exc.strerror or exc}"
    raise SourceUnreachable(f"source not reachable ({why})")


async def request(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    hello: wb.DirectHello,
) -> AsyncIterator[bytes]:
    """Send ``hello`` on a connection from :func:`connect`; the answer's raw bytes."""
    body = _encode(hello)
    try:
        writer.write(_LEN.pack(len(body)) + body)
        await writer.drain()
        while chunk := await asyncio.wait_for(reader.read(READ_CHUNK), STALL_S):
            yield chunk
    except TimeoutError:
        raise errors.Unreachable(f"the direct connection sent nothing for {STALL_S:g} s") from None
    except (OSError, ConnectionError, ssl.SSLError) as exc:
        raise errors.Unreachable(f"the direct connection broke: {exc}") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
