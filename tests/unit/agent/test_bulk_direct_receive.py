"""The target's end of a direct connection (agent.bulk.direct.receive) over a real TLS
connection on loopback: the sink works in a thread beside the receive, and a connection
cut while buffers wait for the sink loses none of them (the resume asks for exactly the
rest, and the tree is byte-exact)."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from pathlib import Path

import pytest

from agent.bulk import direct
from mlsm import errors
from mlsm.bulk import Sink, build_manifest
from mlsm.bulk.frames import NO_INDEX, Flag, encode_frame
from mlsm.wire import bulk as wb

WAIT_S = 30.0
PIECE = 16 << 10  # bytes of the file in each frame the test's source sends
CUT_AFTER = 16  # frames sent before the connection is cut (256 KiB: fits the kernel's buffers)


def _contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    src = direct.Identity.load(tmp_path / "src-agent", "src")
    dst = direct.Identity.load(tmp_path / "dst-agent", "dst")
    server = direct._pinned(dst.cert_pem, ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(src.cert_path, src.key_path)
    client = direct._pinned(src.cert_pem, ssl.Purpose.SERVER_AUTH)
    client.load_cert_chain(dst.cert_path, dst.key_path)
    return server, client


def _serve(
    sock: socket.socket,
    ctx: ssl.SSLContext,
    data: bytes,
    cut_after: int | None,
    piece: int = PIECE,
) -> threading.Thread:
    """A source on ``sock``: the hello, then the want's frames of file 0 in pieces of
    ``piece`` bytes as pipe records (from the want's offset), END; or, with ``cut_after``,
    that many frames and then the connection dropped mid-answer."""

    def run() -> None:
        tls = ctx.wrap_socket(sock, server_side=True)
        try:
            hello = direct._read_hello(tls)
            index, offset, _length = hello.want.items[0]
            for n, pos in enumerate(range(offset, len(data), piece)):
                if cut_after is not None and n == cut_after:
                    return  # cut: no END, the socket just closes
                frame = encode_frame(index, pos, data[pos : pos + piece])
                tls.sendall(wb.pipe_record(wb.PipeKind.DATA, frame))
            end = encode_frame(NO_INDEX, 0, flags=Flag.END)
            tls.sendall(wb.pipe_record(wb.PipeKind.DATA, end))
            tls.sendall(wb.pipe_record(wb.PipeKind.END))
        finally:
            tls.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _hello(want: object) -> wb.DirectHello:
    ticket = wb.WireTicket(
        transfer_id=1, target_node=2, source="dataset ds", serial=1, expires_at=0.0, mac=""
    )
    return wb.DirectHello(ticket=ticket, want=want)  # type: ignore[arg-type]


def _connect(  # type: ignore[no-untyped-def]
    ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
    data: bytes,
    cut: int | None,
    piece: int = PIECE,
):
    a, b = socket.socketpair()
    served = _serve(a, server_ctx, data, cut, piece)
    return ctx.wrap_socket(b, server_hostname=None), served


def _one_file(tmp_path: Path, size: int) -> tuple[bytes, Sink, ssl.SSLContext, ssl.SSLContext]:
    """A tree of one random file of ``size`` bytes: its bytes, a fresh sink for it, and the
    source's and target's pinned contexts."""
    data = os.urandom(size)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.bin").write_bytes(data)
    sink = Sink(build_manifest(src), tmp_path / "work", durable=False)
    server_ctx, client_ctx = _contexts(tmp_path)
    return data, sink, server_ctx, client_ctx


def test_a_cut_while_buffers_wait_for_the_sink_loses_none_and_resumes_exactly(
    tmp_path: Path,
) -> None:
    data, sink, server_ctx, client_ctx = _one_file(tmp_path, 1 << 20)
    gate = threading.Event()
    fed: list[int] = []

    def slow_feed(piece: memoryview) -> bool:
        # the sink is held until the source has sent its part and cut the connection:
        # the receive fills its buffers meanwhile, and the cut comes while they wait
        gate.wait(WAIT_S)
        fed.append(len(piece))
        return sink.feed(piece)

    want = sink.next_want()
    assert want is not None
    tls, served = _connect(client_ctx, server_ctx, data, CUT_AFTER)
    receiver = threading.Thread(target=lambda: _receive_expecting_cut(tls, want, slow_feed))
    receiver.start()
    served.join(WAIT_S)
    assert not served.is_alive()
    gate.set()
    receiver.join(WAIT_S)
    assert not receiver.is_alive()
    assert outcome == ["cut"]
    # every byte that came before the cut reached the sink, nothing after
    sent = CUT_AFTER * PIECE
    assert sink.progress().bytes_done == sent
    rest = sink.next_want()
    assert rest is not None and rest.items[0][:2] == (0, sent)

    tls, served = _connect(client_ctx, server_ctx, data, None)
    direct.receive(tls, _hello(rest), sink.feed, threading.Event())
    served.join(WAIT_S)
    assert sink.complete
    p = sink.progress()
    assert p.bytes_redundant == 0 and p.bytes_received == len(data)
    sink.finish(tmp_path / "dest")
    assert (tmp_path / "dest" / "f.bin").read_bytes() == data


outcome: list[str] = []


def _receive_expecting_cut(tls: ssl.SSLSocket, want: object, feed) -> None:  # type: ignore[no-untyped-def]
    try:
        direct.receive(tls, _hello(want), feed, threading.Event())
    except errors.Unreachable:
        outcome.append("cut")
    else:
        outcome.append("ended")


def test_the_receive_uses_at_most_its_buffers_while_the_sink_is_slow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The memory of a receive is RECV_BUFFERS buffers, however far the sink falls behind."""
    made: list[int] = []
    real = bytearray

    class Counting(real):  # type: ignore[misc,valid-type]
        def __init__(self, *args: object) -> None:
            super().__init__(*args)  # type: ignore[arg-type]
            made.append(len(self))

    import mlsm.bulk.handoff as handoff

    monkeypatch.setattr(handoff, "bytearray", Counting, raising=False)
    data, sink, server_ctx, client_ctx = _one_file(tmp_path, 4 << 20)
    want = sink.next_want()
    tls, served = _connect(client_ctx, server_ctx, data, None)
    direct.receive(tls, _hello(want), sink.feed, threading.Event())
    served.join(WAIT_S)
    assert sink.complete
    assert made == [direct.RECV_BYTES] * direct.RECV_BUFFERS
    sink.finish(tmp_path / "dest")
    assert (tmp_path / "dest" / "f.bin").read_bytes() == data


def test_a_record_that_came_in_many_tls_records_reaches_the_sink_as_one_piece(
    tmp_path: Path,
) -> None:
    """TLS delivers at most 16 KiB a read; a DATA record of 512 KiB is still handed to the
    sink in pieces only as small as the record and buffer boundaries make them (a piece a
    TLS record was what kept a sink hashing inline, one small piece after another)."""
    record = 512 << 10
    data, sink, server_ctx, client_ctx = _one_file(tmp_path, 3 << 20)
    gate = threading.Event()
    fed: list[int] = []

    def held_feed(piece: memoryview) -> bool:
        gate.wait(WAIT_S)  # the first hand-over waits: the receive fills whole buffers
        fed.append(len(piece))
        return sink.feed(piece)

    want = sink.next_want()
    assert want is not None
    tls, served = _connect(client_ctx, server_ctx, data, None, record)
    receiver = threading.Thread(
        target=lambda: direct.receive(tls, _hello(want), held_feed, threading.Event())
    )
    receiver.start()
    # the source sends all (it fits the receive's buffers) while the sink is held
    served.join(WAIT_S)
    assert not served.is_alive()
    gate.set()
    receiver.join(WAIT_S)
    assert not receiver.is_alive() and sink.complete
    assert sum(fed) > len(data)  # the frames' headers and the END frame came too
    # 6 records over buffers of 1 MiB: a record is cut by the buffers it spans, and the
    # first hand-over may be a partial buffer; a piece per TLS record would be 192+
    records = len(data) // record
    buffers = -(-sum(fed) // direct.RECV_BYTES) + 1
    assert len(fed) <= records + buffers + 2, fed
    assert max(fed) >= record
    sink.finish(tmp_path / "dest")
    assert (tmp_path / "dest" / "f.bin").read_bytes() == data
