"""The direct path of a dataset copy, with real processes.

A real master and real agents. Two agents on this machine reach each other: a copy goes
directly from the source to the target over TLS ("direct"). A source agent run inside a
network namespace behind a firewall (it reaches the master through a veth pair, nothing
reaches it) forces the relay ("via master relay: source not reachable"). Tickets are
misused against a real source listener: a replayed one, one for another node (and a
connection from another node's certificate), an expired one, a forged one and garbage
are each refused with a message and nothing is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from mlsm.bulk import Want
from mlsm.wire import api
from mlsm.wire import bulk as wb
from tests.integration.lab import Lab
from tests.support.ci import require
from tests.support.wait import wait_until

TRANSFER_DEADLINE_S = 120.0
TICKET_TTL_S = 3.0  # the master's bulk_ticket_ttl here: the expiry test waits it out
FILES = {"a.bin": os.urandom(3 << 20), "sub/b.txt": b"bee\n", "c": b""}
BIG = 64 << 20  # the dataset held mid-copy while tickets are misused
ACCEPT_POLL_S = 0.2


def make_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


class Forwarder:
    """A TCP forwarder on ``listen`` to the master on loopback, so an agent in another
    network namespace reaches the master through the veth pair."""

    def __init__(self, listen: tuple[str, int], to: tuple[str, int]) -> None:
        self.to = to
        self.sock = socket.create_server(listen)
        self.sock.settimeout(ACCEPT_POLL_S)  # a closed socket does not wake a blocked accept
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            up = socket.create_connection(self.to)
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(1 << 16):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.stop = True
        self.sock.close()


@contextlib.contextmanager
def firewalled_namespace() -> Iterator[tuple[str, str, str]]:
    """A network namespace joined to this one by a veth pair; inside it a firewall drops
    every connection that does not answer one made from inside. Yields (namespace, the
    host side's address, the namespace's address); skips where namespaces cannot be made."""
    tag = secrets.token_hex(3)
    ns, host_if, ns_if = f"mlsmt-{tag}", f"vh{tag}", f"vn{tag}"
    octet = int(tag[:2], 16) % 250 + 1
    host_ip, ns_ip = f"10.213.{octet}.1", f"10.213.{octet}.2"
    try:
        sh("ip", "netns", "add", ns)
    except (OSError, subprocess.CalledProcessError) as exc:
        require(False, f"cannot create a network namespace here ({exc})")
        raise  # not reached: require skips or fails
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        sh("ip", "link", "set", ns_if, "netns", ns)
        sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        inside = ("ip", "netns", "exec", ns)
        sh(*inside, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        sh(*inside, "ip", "link", "set", ns_if, "up")
        sh(*inside, "ip", "link", "set", "lo", "up")
        fw = (*inside, "iptables", "-A", "INPUT")
        sh(*fw, "-i", "lo", "-j", "ACCEPT")
        sh(*fw, "-m", "state", "--state", "ESTABLISHED,RELATED", "-j", "ACCEPT")
        sh(*fw, "-j", "DROP")
        yield ns, host_ip, ns_ip
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            sh("ip", "link", "del", host_if)
        with contextlib.suppress(subprocess.CalledProcessError):
            sh("ip", "netns", "del", ns)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("direct")) as lab:
        lab.start_master(MLSM_BULK_TICKET_TTL=str(TICKET_TTL_S))
        roots = lab.root / "roots"
        make_tree(roots / "dxa" / "reachable", FILES)
        make_tree(roots / "dxa" / "held", {"big.bin": os.urandom(BIG)})
        for name in ("dxa", "dxb", "dxc"):
            lab.start_agent(name, gpus="", dataset_roots=[roots / name])
        yield lab


def catalogued(lab: Lab, name: str, node: str) -> None:
    def there() -> bool:
        for d in lab.admin.call("GET", "/api/v1/datasets", type=list[api.Dataset]):
            if d.name == name and node in {c.node for c in d.copies}:
                return True
        return False

    wait_until(there, TRANSFER_DEADLINE_S, f"{name} on {node}")


def test_a_copy_between_reachable_agents_goes_direct(lab: Lab) -> None:
    catalogued(lab, "reachable", "dxa")
    res = lab.cli("dataset", "copy", "reachable", "--from", "dxa", "--to", "dxb", "--wait")
    assert res.returncode == 0, res.stderr
    assert "direct" in res.stdout and "relay" not in res.stdout, res.stdout
    assert tree(lab.root / "roots" / "dxb" / "reachable") == FILES


def test_an_unreachable_source_falls_back_to_the_relay(lab: Lab) -> None:
    root = lab.root / "roots" / "dxns"
    make_tree(root / "walled", FILES)
    with firewalled_namespace() as (ns, host_ip, _ns_ip):
        fwd = Forwarder((host_ip, lab.port), ("127.0.0.1", lab.port))
        try:
            lab.start_agent(
                "dxns",
                gpus="",
                dataset_roots=[root],
                master=f"http://{host_ip}:{lab.port}",
                wrap=("ip", "netns", "exec", ns),
                env={"MLSM_ALLOW_PLAIN_HTTP": "1"},
            )
            catalogued(lab, "walled", "dxns")
            res = lab.cli("dataset", "copy", "walled", "--from", "dxns", "--to", "dxb", "--wait")
        finally:
            lab.stop_agent("dxns")
            fwd.close()
    assert res.returncode == 0, res.stderr
    assert "via master relay: source not reachable" in res.stdout, res.stdout
    assert tree(lab.root / "roots" / "dxb" / "walled") == FILES


def test_an_agent_with_direct_transfers_off_opens_no_port(lab: Lab) -> None:
    root = lab.root / "roots" / "dxoff"
    make_tree(root / "closed", FILES)
    lab.start_agent("dxoff", gpus="", dataset_roots=[root], env={"MLSM_BULK_DIRECT": "0"})
    assert not (lab.agents["dxoff"].data_dir / "bulk-tls").exists()
    catalogued(lab, "closed", "dxoff")
    res = lab.cli("dataset", "copy", "closed", "--from", "dxoff", "--to", "dxb", "--wait")
    assert res.returncode == 0, res.stderr
    assert "via master relay: no direct path" in res.stdout, res.stdout
    assert tree(lab.root / "roots" / "dxb" / "closed") == FILES


# ---------------------------------------------------------------- ticket misuse
def offer_for(lab: Lab, node: str, tid: int) -> wb.DirectOffer:
    """What the master gives ``node`` when it asks to connect directly for ``tid``."""
    resp = lab.agent_call(
        "bulk/pull", wb.BulkPull(transfer_id=tid, what="direct"), lab.agents[node].secret
    )
    assert resp.status_code == 200, resp.content
    reader = wb.PipeReader()
    data = b"".join(bytes(d) for k, d in reader.feed(resp.content) if k is wb.PipeKind.DATA)
    assert reader.ended
    return wb.decode_offer(data)


def ask(lab: Lab, node: str, offer: wb.DirectOffer, hello: bytes) -> tuple[str, bytes]:
    """Connect to the source as ``node`` (its certificate), send ``hello``; ("END" or
    the error's message, the data bytes)."""

    async def go() -> tuple[str, bytes]:
        tls = lab.agents[node].data_dir / "bulk-tls"
        ctx = ssl.create_default_context(cadata=offer.cert)
        ctx.check_hostname = False
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        ctx.load_cert_chain(tls / "tls-cert.pem", tls / "tls-key.pem")
        reader, writer = await asyncio.open_connection("127.0.0.1", offer.port, ssl=ctx)
        writer.write(hello)
        await writer.drain()
        pipe = wb.PipeReader()
        data = b""
        outcome = "cut"
        while chunk := await reader.read(1 << 20):
            for kind, piece in pipe.feed(chunk):
                if kind is wb.PipeKind.DATA:
                    data += bytes(piece)
                elif kind is wb.PipeKind.END:
                    outcome = "END"
                else:
                    outcome = wb.decode_error(piece).message
        writer.close()
        return outcome, data

    return asyncio.run(go())


def hello_of(ticket: wb.WireTicket, size: int) -> bytes:
    body = msgspec.msgpack.encode(wb.DirectHello(ticket=ticket, want=Want([(0, 0, size)])))
    return struct.pack("<I", len(body)) + body


def test_tickets_are_single_use_for_one_target_and_expire(lab: Lab) -> None:
    catalogued(lab, "held", "dxa")
    target = lab.agents["dxb"].proc
    body = api.DatasetTransfer(name="held", src="dxa", dst="dxb")
    os.kill(target.pid, 19)  # SIGSTOP: the copy stays in progress, nothing pulls
    try:
        t = lab.admin.call("POST", "/api/v1/datasets/transfer", json=body, type=api.Transfer)
        first = offer_for(lab, "dxb", t.id)
        outcome, data = ask(lab, "dxb", first, hello_of(first.ticket, 4096))
        assert outcome == "END" and len(data) > 4096  # frames of the first 4 KiB

        replay = ask(lab, "dxb", first, hello_of(first.ticket, 4096))
        assert replay == ("ticket refused: already used", b"")

        # Another node may not ask for an offer, nor connect with its own certificate.
        refused = lab.agent_call(
            "bulk/pull", wb.BulkPull(transfer_id=t.id, what="direct"), lab.agents["dxc"].secret
        )
        assert refused.status_code == 403, refused.content
        fresh = offer_for(lab, "dxb", t.id)
        try:
            outcome, data = ask(lab, "dxc", fresh, hello_of(fresh.ticket, 4096))
        except (ssl.SSLError, ConnectionError) as exc:  # the handshake is refused
            outcome, data = type(exc).__name__, b""
        assert outcome != "END" and data == b"", outcome

        other = offer_for(lab, "dxb", t.id)
        forged = msgspec.structs.replace(other.ticket, target_node=other.ticket.target_node + 1)
        assert ask(lab, "dxb", other, hello_of(forged, 10)) == (
            "ticket refused: not issued by the master",
            b"",
        )
        assert ask(lab, "dxb", other, b"\x05\x00\x00\x00garbage")[0] == (
            "not a direct-transfer hello"
        )

        late = offer_for(lab, "dxb", t.id)
        wait_until(lambda: time.time() > late.ticket.expires_at + 0.5, 3 * TICKET_TTL_S, "expiry")
        assert ask(lab, "dxb", late, hello_of(late.ticket, 10)) == ("ticket refused: expired", b"")
    finally:
        os.kill(target.pid, 18)  # SIGCONT
    end = wait_until(
        lambda: (
            (x := lab.admin.call("GET", f"/api/v1/transfers/{t.id}", type=api.Transfer)).state
            not in ("pending", "running")
            and x
        ),
        TRANSFER_DEADLINE_S,
        "the held copy to end",
    )
    assert end.state == "succeeded", end.message
    assert tree(lab.root / "roots" / "dxb" / "held") == tree(lab.root / "roots" / "dxa" / "held")


def test_a_copy_whose_tickets_expire_before_use_goes_through_the_relay(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A master whose tickets expire at once: the source refuses each one, the target
    says why and finishes through the relay."""
    with Lab(tmp_path_factory.mktemp("expiring")) as lab:
        lab.start_master(MLSM_BULK_TICKET_TTL="0.001")
        roots = lab.root / "roots"
        make_tree(roots / "exa" / "stale", FILES)
        for name in ("exa", "exb"):
            lab.start_agent(name, gpus="", dataset_roots=[roots / name])
        catalogued(lab, "stale", "exa")
        res = lab.cli("dataset", "copy", "stale", "--from", "exa", "--to", "exb", "--wait")
        assert res.returncode == 0, res.stderr
        assert "via master relay: the source refused the direct connection" in res.stdout
        assert "ticket refused: expired" in res.stdout, res.stdout
        assert tree(roots / "exb" / "stale") == FILES
