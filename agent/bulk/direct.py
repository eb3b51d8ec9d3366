"""The direct path: a source agent serves one transfer's frames to its target over TLS.

**Identity.** Each agent keeps a key and a self-signed certificate in
``<data dir>/bulk-tls/`` (key 0600, :func:`mlsm.tls.ensure_self_signed_apart`: made in a
child process, so the agent never loads the cryptography package) and reports the
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

**Connecting** (the target, :func:`connect` and :func:`receive`): each want gets a fresh
offer (and so a fresh ticket) from the master, a connection tried on each address with a
short connect timeout (:data:`CONNECT_TIMEOUT_S`), the hello, and the answer's records.

**Threads, not the event loop.** The bytes of a connection move in a thread of their own on
each side, with a blocking TLS socket: the source reads its files and writes TLS records;
the target decrypts TLS records into reused buffers of :data:`RECV_BYTES` and hands each
filled one to its sink in a second thread (:class:`~mlsm.bulk.handoff.Handoff`: the sink
writes and hashes one buffer while the next is decrypted, at most :data:`RECV_BUFFERS` of
them in use). Encryption, decryption and copies stay off the agent's event loop, so
heartbeats and commands are not held up by a transfer, and a transfer does not wait for the
loop (through asyncio's TLS streams a direct copy on loopback was slower than the relay).
Memory is one buffer per connection at the source, :data:`RECV_BUFFERS` at the target. The
listener's accept loop and its lifetime stay on the event loop; a thread that serves a
connection ends when it is done, when a send blocks for :data:`STALL_S`, or when the
listener is closed (its connections' sockets are shut down).

About 400 lines, as one piece: both ends of one small wire protocol (the pinned contexts,
the hello and its ticket, the records, the timeouts), so a change to one side is made
beside the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from mlsm import errors
from mlsm.bulk.handoff import Handoff
from mlsm.bulk.tickets import Ticket, TicketGate
from mlsm.tls import ensure_self_signed_apart, fingerprint_of_pem
from mlsm.wire import bulk as wb

from .sources import SourceBook

log = logging.getLogger("mlsm.agent.bulk")

TLS_DIR = "bulk-tls"
CONNECT_TIMEOUT_S = 3.0  # a source not reachable directly is given up on this fast
HELLO_TIMEOUT_S = 10.0  # a connection must say who it is within this long
HANDSHAKE_TIMEOUT_S = 10.0
STALL_S = 60.0  # a direct answer that sends nothing this long is given up (then resumed)
LISTEN_IDLE_S = 120.0  # a listener nobody connects to closes after this long
RECV_BYTES = 1 << 20  # the target's receive buffers (reused): what it hands its sink at once
#: Receive buffers per connection: one decrypted into while the sink writes and hashes
#: another, two queued (memory: RECV_BUFFERS x RECV_BYTES a connection).
RECV_BUFFERS = 4
HANDOFF_POLL_S = 0.005  # how often bytes held for a busy sink check whether it is idle
#: An idle sink is handed what came once it is at least this much, or once nothing more
#: came for HANDOFF_POLL_S. Handing it every TLS record (16 KiB) as it came kept a sink
#: that was a little faster than decryption in a loop of small pieces: each hashed inline
#: and written on its own, one after the other, where larger ones are hashed beside their
#: writing (a 1 GiB copy spent more than a second of the sink's time hashing inline).
HANDOFF_MIN = 256 << 10
STOP_POLL_S = 0.5  # how often a blocked receive checks whether it was asked to stop
SMALL_RECORD = 64 << 10  # a pipe record's header is sent with its data below this size
LISTEN_BACKLOG = 16
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
        cert, key = ensure_self_signed_apart(data_dir / TLS_DIR, [name])
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
        self.listeners: dict[int, _Listener] = {}  # port -> listener
        self.tasks: set[asyncio.Task[None]] = set()

    async def listen(self, cmd: wb.BulkListen) -> int:
        """Open the listener ``cmd`` asks for; its port."""
        try:
            ctx = _pinned(cmd.target_cert, ssl.Purpose.CLIENT_AUTH)
        except ssl.SSLError:
            raise errors.ValidationError("the target's certificate is unreadable") from None
        ctx.load_cert_chain(self.identity.cert_path, self.identity.key_path)
        gate = TicketGate(bytes.fromhex(cmd.key), cmd.transfer_id, str(cmd.source), cmd.target_node)
        sock = socket.create_server(("0.0.0.0", 0), backlog=LISTEN_BACKLOG)
        sock.setblocking(False)
        port = int(sock.getsockname()[1])
        listener = _Listener(self, cmd, ctx, gate, sock)
        self.listeners[port] = listener
        log.info("transfer %s: listening on port %d for %s", cmd.transfer_id, port, cmd.source)
        task = asyncio.create_task(listener.run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(lambda _t: self.listeners.pop(port, None))
        return port

    def close(self) -> None:
        for listener in list(self.listeners.values()):
            listener.close()
        self.listeners.clear()


class _Listener:
    """One transfer's listening socket: accepts on the event loop, serves each connection
    in a thread (:func:`_serve_connection`), closes at the expiry or when idle."""

    def __init__(
        self,
        server: DirectServer,
        cmd: wb.BulkListen,
        ctx: ssl.SSLContext,
        gate: TicketGate,
        sock: socket.socket,
    ) -> None:
        self.server = server
        self.cmd = cmd
        self.ctx = ctx
        self.gate = gate
        self.sock = sock
        self.conns: set[socket.socket] = set()  # connections being served
        self.last_end = time.monotonic()  # when the last connection ended
        self.closed = False

    async def run(self) -> None:
        """Accept until ``expires_at``, or until nobody was connected for LISTEN_IDLE_S."""
        loop = asyncio.get_running_loop()
        idle_since = time.monotonic()
        try:
            while not self.closed:
                now = time.monotonic()
                # idle counts from the end of the last connection
                idle_since = now if self.conns else max(idle_since, self.last_end)
                left = min(self.cmd.expires_at - time.time(), LISTEN_IDLE_S - (now - idle_since))
                if left <= 0:
                    break
                try:
                    conn, peer = await asyncio.wait_for(
                        loop.sock_accept(self.sock), min(left, STOP_POLL_S)
                    )
                except TimeoutError:
                    continue
                except OSError as exc:  # out of descriptors, say: this listener ends
                    log.warning("transfer %s: the listener failed: %s", self.cmd.transfer_id, exc)
                    break
                conn.setblocking(True)
                self.conns.add(conn)
                idle_since = time.monotonic()
                threading.Thread(
                    target=self._serve,
                    args=(conn, peer),
                    name=f"mlsm-direct-{self.cmd.transfer_id}",
                    daemon=True,
                ).start()
        finally:
            self.closed = True
            self.sock.close()  # here, on the loop, once no accept is waiting on it

    def _serve(self, conn: socket.socket, peer: object) -> None:
        try:
            _serve_connection(self.server.sources, self.cmd, self.ctx, self.gate, conn, peer)
        finally:
            self.last_end = time.monotonic()
            self.conns.discard(conn)

    def close(self) -> None:
        """Stop accepting (within :data:`STOP_POLL_S`), and cut the connections still
        served (their threads end)."""
        self.closed = True
        for conn in list(self.conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def _serve_connection(
    sources: SourceBook,
    cmd: wb.BulkListen,
    ctx: ssl.SSLContext,
    gate: TicketGate,
    conn: socket.socket,
    peer: object,
) -> None:
    """One connection, in its own thread: the handshake (the target's certificate is
    pinned by ``ctx``), the hello and its ticket, then the want's frames as pipe records
    and END, or one ERROR record saying why nothing is served."""
    tid = cmd.transfer_id
    try:
        conn.settimeout(HANDSHAKE_TIMEOUT_S)
        tls = ctx.wrap_socket(conn, server_side=True)
    except (OSError, ssl.SSLError) as exc:
        log.warning("transfer %s: direct connection from %s refused: %s", tid, peer, exc)
        conn.close()
        return
    try:
        try:
            tls.settimeout(HELLO_TIMEOUT_S)
            try:
                hello = _read_hello(tls)
            except TimeoutError:
                raise errors.PermissionDenied("no ticket was presented in time") from None
            gate.admit(ticket_of(hello.ticket))
            tls.settimeout(STALL_S)  # a target that stops reading this long is given up
            _answer(sources, cmd, hello, tls.sendall)
        except errors.MlsmError as exc:
            log.warning(
                "transfer %s: direct connection from %s refused: %s", tid, peer, exc.message
            )
            with contextlib.suppress(OSError):
                tls.sendall(wb.encode_error(exc))
    except (OSError, ConnectionError) as exc:
        log.info("transfer %s: direct connection from %s ended (%s)", tid, peer, exc)
    finally:
        with contextlib.suppress(OSError):
            tls.close()


def _answer(
    sources: SourceBook, cmd: wb.BulkListen, hello: wb.DirectHello, send: Callable[[bytes], None]
) -> None:
    """The want's frames as pipe records, through ``send``; END last."""
    tree, manifest = sources.serving(cmd.source, hello.manifest_digest)
    with sources.source(tree, manifest, hello.manifest_digest) as source:
        for chunk in source.chunks(hello.want):
            head = wb.pipe_header(wb.PipeKind.DATA, len(chunk))
            if len(chunk) < SMALL_RECORD:
                send(head + chunk)
            else:  # a whole block: its header on its own, the block never copied
                send(head)
                send(chunk)
    send(wb.pipe_record(wb.PipeKind.END))


def _recv_exactly(tls: ssl.SSLSocket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        piece = tls.recv(n - len(out))
        if not piece:
            raise ConnectionError("the connection closed mid-hello")
        out += piece
    return bytes(out)


def _read_hello(tls: ssl.SSLSocket) -> wb.DirectHello:
    (length,) = _LEN.unpack(_recv_exactly(tls, _LEN.size))
    if length > wb.MAX_HELLO:
        raise errors.PermissionDenied("not a direct-transfer hello (too long)")
    body = _recv_exactly(tls, length)
    try:
        return wb.decode_hello(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise errors.PermissionDenied("not a direct-transfer hello") from None


# ---------------------------------------------------------------- the target's side
class SourceUnreachable(errors.Unreachable):
    """No connection to the source's listener (the target falls back to the relay)."""


def connect(offer: wb.DirectOffer, identity: Identity) -> ssl.SSLSocket:
    """A pinned TLS connection to the source on the first address that answers within
    :data:`CONNECT_TIMEOUT_S` (blocking: run it in a thread);
    :class:`SourceUnreachable` naming why otherwise."""
    ctx = _pinned(offer.cert, ssl.Purpose.SERVER_AUTH)
    ctx.load_cert_chain(identity.cert_path, identity.key_path)
    why = "it offers no address"
    for address in offer.addresses:
        try:
            raw = socket.create_connection((address, offer.port), timeout=CONNECT_TIMEOUT_S)
        except TimeoutError:
            why = f"{address}:{offer.port}: no answer in {CONNECT_TIMEOUT_S:g} s"
            continue
        except OSError as exc:
            why = f"{address}:{offer.port}: {exc.strerror or exc}"
            continue
        try:
            raw.settimeout(HANDSHAKE_TIMEOUT_S)
            return ctx.wrap_socket(raw, server_hostname=None)
        except ssl.SSLError as exc:
            why = f"{address}:{offer.port}: TLS refused ({exc.reason or exc})"
        except OSError as exc:
            why = f"{address}:{offer.port}: {exc.strerror or exc}"
        raw.close()
    raise SourceUnreachable(f"source not reachable ({why})")


def receive(
    tls: ssl.SSLSocket,
    hello: wb.DirectHello,
    feed: Callable[[memoryview], bool],
    stop: threading.Event,
) -> None:
    """Send ``hello`` on a connection from :func:`connect` and hand the answer's data to
    ``feed`` (a sink's: it must be done with the view when it returns) in pieces of up to
    :data:`RECV_BYTES`, in a thread of their own beside the receiving one, until the answer's END (blocking: run it in a thread). The
    source's ERROR record raises its error; a connection that breaks, stalls for
    :data:`STALL_S` or ends early raises :class:`~mlsm.errors.Unreachable` (the next want
    asks again for what is missing); ``stop`` set ends it with
    :class:`~mlsm.errors.TransferFailed`."""
    body = _encode(hello)
    reader = wb.PipeReader()
    fed_end = False

    def work(pieces: list[memoryview]) -> None:  # the handoff's worker: the sink's thread
        nonlocal fed_end
        for piece in pieces:
            if not fed_end and feed(piece):
                fed_end = True

    handoff: Handoff[list[memoryview]] = Handoff(
        work, buffers=RECV_BUFFERS, size=RECV_BYTES, name=f"mlsm-sink-{hello.ticket.transfer_id}"
    )
    buf = handoff.buffer()
    view = memoryview(buf)
    filled = 0

    pieces: list[memoryview] = []  # DATA of ``buf`` parsed as it came, not yet handed over
    open_at = -1  # where in ``buf`` the last piece starts while its record goes on

    def parse(n: int) -> None:
        """Records in the ``n`` bytes just received (END is seen as soon as it comes). A
        record's data that came in several TLS records (16 KiB each) is one piece: the
        sink hashes and writes a piece at a time, and small ones cost it far more."""
        nonlocal open_at
        continues = open_at >= 0  # the first piece is more of the last one's record
        for kind, piece in reader.feed(view[filled : filled + n]):
            if kind is wb.PipeKind.DATA:
                if continues:
                    pieces[-1] = view[open_at : filled + len(piece)]
                else:
                    pieces.append(piece)
                    open_at = -1
                continues = False
            elif kind is wb.PipeKind.ERROR:
                raise wb.decode_error(piece)
        if not reader.open_data:
            open_at = -1
        elif open_at < 0:  # the last piece's record goes on past these bytes
            open_at = filled + n - len(pieces[-1])

    def hand_over() -> None:
        """``buf`` and its DATA pieces (views of it) to the worker; a fresh buffer."""
        nonlocal buf, view, filled, pieces, open_at
        handoff.hand(buf, pieces)
        pieces = []
        open_at = -1
        buf = handoff.buffer()
        view = memoryview(buf)
        filled = 0

    try:
        try:
            tls.settimeout(STALL_S)
            tls.sendall(_LEN.pack(len(body)) + body)
            tls.setblocking(False)
            quiet_since = time.monotonic()
            paused = False  # nothing came for HANDOFF_POLL_S, with bytes held
            while not reader.ended:
                if stop.is_set():
                    raise errors.TransferFailed("stopped")
                try:
                    n = tls.recv_into(view[filled:])
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    # nothing more is ready: what came goes to an idle sink once it is
                    # worth a hand-over, or once the source has paused (see HANDOFF_MIN)
                    if filled and not handoff.in_flight and (filled >= HANDOFF_MIN or paused):
                        hand_over()
                        paused = False
                        continue
                    handoff.check()
                    if time.monotonic() - quiet_since >= STALL_S:
                        raise TimeoutError from None
                    # with bytes held, look again soon (the sink may be idle, or the
                    # source may have paused)
                    ready, _, _ = select.select(
                        [tls], [], [], HANDOFF_POLL_S if filled else STOP_POLL_S
                    )
                    paused = bool(filled) and not ready
                    continue
                if n == 0:
                    break
                paused = False
                quiet_since = time.monotonic()
                parse(n)
                filled += n
                if filled == len(buf):
                    hand_over()
        finally:
            # what came, also before a cut, is still written (the resume counts it); the
            # sink is not touched by the worker once this returns
            if pieces and not handoff.failed:
                handoff.hand(buf, pieces)
            handoff.close()
        handoff.finish()
    except TimeoutError:
        raise errors.Unreachable(f"the direct connection sent nothing for {STALL_S:g} s") from None
    except (OSError, ConnectionError, ssl.SSLError) as exc:
        raise errors.Unreachable(f"the direct connection broke: {exc}") from None
    finally:
        with contextlib.suppress(OSError):
            tls.close()
    if not reader.ended:
        raise errors.Unreachable("the direct answer broke off")
