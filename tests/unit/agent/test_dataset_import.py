"""Dataset import from a real HTTP server on 127.0.0.1: guards, limits, archives, cancel.

In every failure case the dataset root must hold nothing new afterwards.
"""

from __future__ import annotations

import asyncio
import bz2
import hashlib
import io
import ipaddress
import logging
import os
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote

import httpx
import pytest

from agent.datasets import (
    DatasetCancelled,
    DatasetError,
    DatasetExistsError,
    DatasetImportError,
    DatasetPathError,
    DatasetTooLargeError,
    UnsafeArchiveError,
    import_dataset,
)
from agent.datasets import extract as extract_mod
from agent.datasets.importer import address_refusal, build_request, safe_basename
from agent.fsutil import walk
from mlsm.wire.agent import ImportDataset, TransferProgress
from tests.support.deep_trees import DEEP, LAB_DEEP, deep_tar, deepest_rel
from tests.support.wait import wait_until_async

LOOPBACK = ["127.0.0.0/8"]
MAX = 64 << 20
SIGNATURE = "Sig-0f9e8d7c6b5a"  # the secret part of a presigned URL
PASSWORD = "pw-5e3r3t-xyz"  # the secret part of a URL's userinfo


# ------------------------------------------------------------------ the test server
@dataclass
class Site:
    base: str
    files: dict[str, bytes] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)  # Host headers seen
    release: threading.Event = field(default_factory=threading.Event)


def _make_handler(site: Site) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, code: int, body: bytes = b"", headers: dict | None = None) -> None:
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            site.hosts.append(self.headers.get("Host", ""))
            parts = self.path.split("/", 3)[1:]
            kind = parts[0]
            if kind == "f":  # /f/<name>: with Content-Length (a query is ignored)
                body = site.files.get(unquote(parts[1].partition("?")[0]))
                self._send(200, body) if body is not None else self._send(404)
            elif kind == "nolen":  # /nolen/<name>: no length, ends with the connection
                body = site.files[parts[1]]
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                for i in range(0, len(body), 65536):
                    self.wfile.write(body[i : i + 65536])
            elif kind == "redirect":  # /redirect/<k>/<name>: k hops, then /f/<name>
                k = int(parts[1])
                loc = f"/redirect/{k - 1}/{parts[2]}" if k > 1 else f"/f/{parts[2]}"
                self._send(302, headers={"Location": loc})
            elif kind == "goto":  # /goto/<quoted absolute URL>
                self._send(302, headers={"Location": unquote(parts[1])})
            elif kind == "signed":  # /signed/<name>?sig=<SIGNATURE>: a presigned URL
                name, _, query = parts[1].partition("?")
                body = site.files.get(unquote(name))
                if query != f"sig={SIGNATURE}" or body is None:
                    self._send(403, b"SignatureDoesNotMatch")
                else:
                    self._send(200, body)
            elif kind == "to-signed":  # /to-signed/<name>: to a presigned URL that fails
                loc = f"/signed/{parts[1]}?sig=wrong-{SIGNATURE}"
                self._send(302, headers={"Location": loc})
            elif kind == "loop":
                self._send(302, headers={"Location": "/loop"})
            elif kind == "stall":  # some bytes, then nothing until released
                self.send_response(200)
                self.send_header("Content-Length", str(10 << 20))
                self.end_headers()
                self.wfile.write(b"x" * 65536)
                self.wfile.flush()
                site.release.wait(30)
            else:
                self._send(404)

    return Handler


@pytest.fixture
def site() -> Iterator[Site]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), None)  # type: ignore[arg-type]
    server.daemon_threads = True
    server.handle_error = lambda *a: None  # type: ignore[method-assign]  # client hang-ups
    s = Site(base=f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = _make_handler(s)
    t = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    t.start()
    yield s
    s.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "datasets"
    r.mkdir()
    (r / "existing").mkdir()
    (r / "existing" / "keep.txt").write_text("keep")
    return r


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


async def _run(
    root: Path,
    url: str,
    *,
    name: str = "ds",
    allow: list[str] | None = None,
    max_bytes: int = MAX,
    events: list[TransferProgress] | None = None,
    cancel: asyncio.Event | None = None,
    **kw,
):
    cmd_fields = {k: kw.pop(k) for k in ("sha256", "unpack") if k in kw}
    cmd_max = kw.pop("cmd_max_bytes", 0)
    cmd = ImportDataset(id=7, url=url, name=name, max_bytes=cmd_max, **cmd_fields)
    return await import_dataset(
        cmd,
        root,
        progress=(events.append if events is not None else lambda _p: None),
        cancel=cancel or asyncio.Event(),
        max_bytes=max_bytes,
        allow_cidrs=LOOPBACK if allow is None else allow,
        **kw,
    )


async def _fails(root: Path, exc: type[BaseException], url: str, **kw) -> str:
    before = _listing(root)
    events: list[TransferProgress] = []
    with pytest.raises(exc) as info:
        await _run(root, url, events=events, **kw)
    assert _listing(root) == before, "the failed import left something under the root"
    assert events and events[-1].state in ("failed", "cancelled")
    return str(info.value)


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def _ti(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = link
    ti.mode = 0o644
    return ti


# ------------------------------------------------------------------ success
async def test_single_file_becomes_a_directory_holding_it(site: Site, root: Path) -> None:
    data = os.urandom(300_000)
    site.files["train.csv"] = data
    events: list[TransferProgress] = []
    entry = await _run(root, f"{site.base}/f/train.csv", events=events)
    assert (root / "ds" / "train.csv").read_bytes() == data
    assert (entry.name, entry.files, entry.size) == ("ds", 1, len(data))
    assert _listing(root) == ["ds", "ds/train.csv", "existing", "existing/keep.txt"]
    assert events[-1].state == "succeeded" and events[-1].done_bytes == len(data)
    assert events[-1].total_bytes == len(data) and events[-1].command_id == 7


async def test_tar_gz_is_unpacked(site: Site, root: Path) -> None:
    site.files["d.tar.gz"] = _tar(
        [(_ti("top/a.txt"), b"a"), (_ti("top/sub", tarfile.DIRTYPE), None), (_ti("b.txt"), b"bb")]
    )
    entry = await _run(root, f"{site.base}/f/d.tar.gz")
    assert (root / "ds" / "top" / "a.txt").read_bytes() == b"a"
    assert (root / "ds" / "top" / "sub").is_dir()
    assert entry.files == 2 and entry.top == ["b.txt", "top"]


async def test_inner_symlink_and_hardlink_are_kept(site: Site, root: Path) -> None:
    site.files["d.tar"] = _tar(
        [
            (_ti("data/x.bin"), b"xyz"),
            (_ti("alias", tarfile.SYMTYPE, "data/x.bin"), None),
            (_ti("data/hard.bin", tarfile.LNKTYPE, "data/x.bin"), None),
        ],
        mode="w",
    )
    await _run(root, f"{site.base}/f/d.tar")
    assert os.readlink(root / "ds" / "alias") == "data/x.bin"
    assert (root / "ds" / "data" / "hard.bin").read_bytes() == b"xyz"


async def test_zip_is_unpacked(site: Site, root: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("images/1.png", b"png1")
        zf.writestr("labels.txt", b"cat\n")
    site.files["d.zip"] = buf.getvalue()
    await _run(root, f"{site.base}/f/d.zip")
    assert (root / "ds" / "images" / "1.png").read_bytes() == b"png1"
    assert (root / "ds" / "labels.txt").read_bytes() == b"cat\n"


async def test_unpack_false_keeps_the_archive(site: Site, root: Path) -> None:
    site.files["d.tar.gz"] = _tar([(_ti("a.txt"), b"a")])
    await _run(root, f"{site.base}/f/d.tar.gz", unpack=False)
    assert (root / "ds" / "d.tar.gz").read_bytes() == site.files["d.tar.gz"]


async def test_matching_checksum_passes(site: Site, root: Path) -> None:
    site.files["x"] = b"hello"
    sha = hashlib.sha256(b"hello").hexdigest()
    await _run(root, f"{site.base}/f/x", sha256=f"sha256:{sha.upper()}")
    assert (root / "ds" / "x").read_bytes() == b"hello"


async def test_redirects_within_the_limit_are_followed(site: Site, root: Path) -> None:
    site.files["r.bin"] = b"redirected"
    await _run(root, f"{site.base}/redirect/3/r.bin", max_redirects=3)
    assert (root / "ds" / "r.bin").read_bytes() == b"redirected"


async def test_unknown_length_download_within_limit(site: Site, root: Path) -> None:
    site.files["s.bin"] = os.urandom(200_000)
    await _run(root, f"{site.base}/nolen/s.bin")
    assert (root / "ds" / "s.bin").read_bytes() == site.files["s.bin"]


async def test_connects_to_the_checked_address_with_the_name_as_host(
    site: Site, root: Path
) -> None:
    site.files["n.bin"] = b"n"
    port = site.base.rsplit(":", 1)[1]
    calls: list[str] = []

    async def resolve(host: str, _port: int) -> list[str]:
        calls.append(host)
        return ["10.1.2.3", "127.0.0.1"]  # private one is dropped, loopback allowed

    await _run(root, f"http://data.example:{port}/f/n.bin", resolve=resolve)
    assert calls == ["data.example"]
    assert site.hosts[-1] == f"data.example:{port}"


async def test_progress_is_throttled(site: Site, root: Path) -> None:
    site.files["big"] = os.urandom(8 << 20)
    events: list[TransferProgress] = []
    t0 = time.monotonic()
    await _run(root, f"{site.base}/nolen/big", events=events)
    elapsed = time.monotonic() - t0
    running = [e for e in events if e.state == "running"]
    assert len(running) <= elapsed / 0.25 + 5  # + the forced phase changes
    assert all(e.rate_bps >= 0 for e in events)


# ------------------------------------------------------------------ refusals
async def test_loopback_is_refused_without_allow_cidrs(site: Site, root: Path) -> None:
    site.files["x"] = b"x"
    msg = await _fails(root, DatasetImportError, f"{site.base}/f/x", allow=[])
    assert "loopback" in msg
    assert site.hosts == []  # never connected


async def test_localhost_name_is_refused_without_allow_cidrs(site: Site, root: Path) -> None:
    port = site.base.rsplit(":", 1)[1]
    await _fails(root, DatasetImportError, f"http://localhost:{port}/f/x", allow=[])
    assert site.hosts == []


async def test_private_resolution_is_refused(site: Site, root: Path) -> None:
    async def resolve(host: str, _port: int) -> list[str]:
        return ["192.168.1.10", "169.254.169.254"]

    msg = await _fails(root, DatasetImportError, "http://internal.example/x", resolve=resolve)
    assert "192.168.1.10" in msg and "169.254.169.254" in msg


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/x", "file:///etc/passwd", "gopher://127.0.0.1/", "data:,hi"]
)
async def test_other_schemes_are_refused(root: Path, url: str) -> None:
    msg = await _fails(root, DatasetImportError, url)
    assert "scheme" in msg or "URL" in msg


async def test_redirect_to_another_scheme_is_refused(site: Site, root: Path) -> None:
    target = quote("file:///etc/passwd", safe="")
    msg = await _fails(root, DatasetImportError, f"{site.base}/goto/{target}")
    assert "scheme" in msg


async def test_redirect_to_a_private_address_is_refused(site: Site, root: Path) -> None:
    target = quote("http://10.0.0.1/secret", safe="")
    msg = await _fails(root, DatasetImportError, f"{site.base}/goto/{target}")
    assert "10.0.0.1" in msg and "private" in msg


async def test_redirect_limit(site: Site, root: Path) -> None:
    site.files["r.bin"] = b"r"
    msg = await _fails(root, DatasetImportError, f"{site.base}/redirect/4/r.bin", max_redirects=3)
    assert "too many redirects" in msg
    await _fails(root, DatasetImportError, f"{site.base}/loop")


async def test_content_length_over_the_limit_is_refused_before_reading(
    site: Site, root: Path
) -> None:
    site.files["big"] = b"x" * 5000
    msg = await _fails(root, DatasetTooLargeError, f"{site.base}/f/big", max_bytes=4096)
    assert "5000" in msg and "4096" in msg


async def test_command_max_bytes_lowers_the_limit(site: Site, root: Path) -> None:
    site.files["big"] = b"x" * 5000
    await _fails(root, DatasetTooLargeError, f"{site.base}/f/big", cmd_max_bytes=1000)


async def test_stream_over_the_limit_is_cut_off(site: Site, root: Path) -> None:
    site.files["big"] = os.urandom(1 << 20)
    await _fails(root, DatasetTooLargeError, f"{site.base}/nolen/big", max_bytes=100_000)


async def test_checksum_mismatch_names_both_digests(site: Site, root: Path) -> None:
    site.files["x"] = b"hello"
    wrong = "0" * 64
    msg = await _fails(root, DatasetImportError, f"{site.base}/f/x", sha256=wrong)
    assert wrong in msg and hashlib.sha256(b"hello").hexdigest() in msg


async def test_http_error_status(site: Site, root: Path) -> None:
    msg = await _fails(root, DatasetImportError, f"{site.base}/f/missing")
    assert "404" in msg


async def test_existing_name_is_refused_and_kept(site: Site, root: Path) -> None:
    site.files["x"] = b"x"
    await _fails(root, DatasetExistsError, f"{site.base}/f/x", name="existing")
    assert (root / "existing" / "keep.txt").read_text() == "keep"


@pytest.mark.parametrize("name", ["../escape", "/etc", "a\u2215b", "x\ny", ".hidden"])
async def test_hostile_names_are_refused(site: Site, root: Path, name: str) -> None:
    site.files["x"] = b"x"
    await _fails(root, DatasetPathError, f"{site.base}/f/x", name=name)
    assert site.hosts == []


HOSTILE_TARS = {
    "dotdot": [(_ti("../evil.txt"), b"evil")],
    "nested-dotdot": [(_ti("ok/../../evil.txt"), b"evil")],
    "absolute": [(_ti("/tmp/evil.txt"), b"evil")],
    "symlink-absolute": [(_ti("l", tarfile.SYMTYPE, "/etc"), None)],
    "symlink-escape": [(_ti("l", tarfile.SYMTYPE, "../../outside"), None)],
    "symlink-chain-escape": [
        (_ti("s", tarfile.SYMTYPE, "."), None),
        (_ti("x", tarfile.SYMTYPE, "s/.."), None),
    ],
    "write-through-symlink": [
        (_ti("d", tarfile.DIRTYPE), None),
        (_ti("l", tarfile.SYMTYPE, "d"), None),
        (_ti("l/evil.txt"), b"evil"),
    ],
    "hardlink-absolute": [(_ti("h", tarfile.LNKTYPE, "/etc/passwd"), None)],
    "hardlink-escape": [(_ti("h", tarfile.LNKTYPE, "../outside.txt"), None)],
    "hardlink-to-nothing": [(_ti("h", tarfile.LNKTYPE, "never-extracted"), None)],
    "char-device": [(_ti("dev", tarfile.CHRTYPE), None)],
    "block-device": [(_ti("blk", tarfile.BLKTYPE), None)],
    "fifo": [(_ti("fifo", tarfile.FIFOTYPE), None)],
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TARS))
async def test_hostile_tar_is_refused_naming_the_entry(
    site: Site, root: Path, tmp_path: Path, case: str
) -> None:
    (tmp_path / "outside.txt").write_text("outside")
    site.files["h.tar.gz"] = _tar(HOSTILE_TARS[case])
    msg = await _fails(root, UnsafeArchiveError, f"{site.base}/f/h.tar.gz")
    bad = HOSTILE_TARS[case][-1][0].name
    assert repr(bad) in msg or bad in msg
    assert sorted(os.listdir(tmp_path)) == ["datasets", "outside.txt"]
    assert (tmp_path / "outside.txt").read_text() == "outside"


def _zip(entries: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()


@pytest.mark.parametrize(
    "entries",
    [
        [("ok.txt", b"ok", 0o100644), ("../../evil.txt", b"evil", 0o100644)],
        [("/abs/evil.txt", b"evil", 0o100644)],
        [("link", b"../../outside", 0o120777)],
        [("link", b"/etc/passwd", 0o120777)],
        [("fifo", b"", 0o010644)],
    ],
    ids=["zip-slip", "absolute", "symlink-escape", "symlink-absolute", "fifo"],
)
async def test_hostile_zip_is_refused(site: Site, root: Path, entries) -> None:
    site.files["h.zip"] = _zip(entries)
    msg = await _fails(root, UnsafeArchiveError, f"{site.base}/f/h.zip")
    assert entries[-1][0] in msg


async def test_zip_expanding_past_the_limit_is_refused(site: Site, root: Path) -> None:
    site.files["bomb.zip"] = _zip([("zeros.bin", b"\0" * (2 << 20), 0o100644)])
    msg = await _fails(root, DatasetTooLargeError, f"{site.base}/f/bomb.zip", max_bytes=1 << 20)
    assert "zeros.bin" in msg


async def test_compression_bomb_ratio_is_refused(
    site: Site, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(extract_mod, "RATIO_FLOOR", 1 << 20)
    raw = _tar([(_ti("zeros.bin"), b"\0" * (8 << 20))], mode="w")
    site.files["bomb.tar.bz2"] = bz2.compress(raw)
    assert len(site.files["bomb.tar.bz2"]) < 1000
    msg = await _fails(root, DatasetTooLargeError, f"{site.base}/f/bomb.tar.bz2")
    assert "bomb" in msg and "zeros.bin" in msg


async def test_cancel_mid_download_leaves_nothing(site: Site, root: Path) -> None:
    before = _listing(root)
    events: list[TransferProgress] = []
    cancel = asyncio.Event()
    task = asyncio.create_task(_run(root, f"{site.base}/stall/x", events=events, cancel=cancel))

    def progressed() -> bool:
        if any(e.done_bytes > 0 for e in events):
            return True
        assert not task.done(), task  # ended without progress: fail now, not at the deadline
        return False

    await wait_until_async(progressed, 10, "download progress", poll_s=0.01, retry_on=())
    assert any(p.name.startswith(".mlsm-import-ds-") for p in root.iterdir())
    cancel.set()
    with pytest.raises(DatasetCancelled):
        await asyncio.wait_for(task, 10)
    assert _listing(root) == before
    assert events[-1].state == "cancelled"


async def test_cancel_before_start(site: Site, root: Path) -> None:
    site.files["x"] = b"x"
    cancel = asyncio.Event()
    cancel.set()
    await _fails(root, DatasetCancelled, f"{site.base}/f/x", cancel=cancel)


# ------------------------------------------------------------------ helpers, no network
@pytest.mark.parametrize(
    "addr",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
    ],
)
def test_non_public_addresses_are_refused(addr: str) -> None:
    assert address_refusal(ipaddress.ip_address(addr)) is not None


@pytest.mark.parametrize("addr", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888"])
def test_public_addresses_are_allowed(addr: str) -> None:
    assert address_refusal(ipaddress.ip_address(addr)) is None


def test_allow_cidrs_override() -> None:
    nets = [ipaddress.ip_network("10.0.0.0/8")]
    assert address_refusal(ipaddress.ip_address("10.2.3.4"), nets) is None
    assert address_refusal(ipaddress.ip_address("::ffff:10.2.3.4"), nets) is None
    assert address_refusal(ipaddress.ip_address("192.168.0.1"), nets) == "private"


def test_https_request_goes_to_the_ip_with_host_and_sni() -> None:
    req = build_request(httpx.URL("https://data.example.org:8443/a.tar"), "93.184.216.34")
    assert req.url.host == "93.184.216.34" and req.url.port == 8443
    assert req.headers["Host"] == "data.example.org:8443"
    assert req.extensions["sni_hostname"] == "data.example.org"
    req6 = build_request(httpx.URL("http://data.example.org/a"), "2001:db8::1")
    assert req6.url.host == "2001:db8::1" and req6.headers["Host"] == "data.example.org"


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("http://h/a/train.csv", "train.csv"),
        ("http://h/a/..%2F..%2Fetc%2Fpasswd", "etc_passwd"),
        ("http://h/", "download"),
        ("http://h/.bashrc", "bashrc"),
        ("http://h/a%0Ab", "a_b"),
    ],
)
def test_safe_basename(url: str, name: str) -> None:
    got = safe_basename(httpx.URL(url))
    assert got == name or (got.endswith(name) and "/" not in got and not got.startswith("."))


def test_errors_share_one_base() -> None:
    for cls in (DatasetImportError, UnsafeArchiveError, DatasetTooLargeError, DatasetCancelled):
        assert issubclass(cls, DatasetError)


# ------------------------------------------------------------------ secrets in URLs
def _secret_free(*texts: str) -> None:
    for t in texts:
        assert SIGNATURE not in t and PASSWORD not in t, t


@pytest.mark.parametrize(
    ("path", "exc", "expect"),
    [
        ("/signed/x.tar?sig=wrong-{sig}", DatasetImportError, "403"),
        ("/f/missing?sig={sig}#frag-{sig}", DatasetImportError, "404"),
        ("/to-signed/y", DatasetImportError, "403"),
        ("/f/x?sig={sig}", DatasetImportError, "checksum mismatch"),
    ],
    ids=["bad-signature", "query-and-fragment", "redirect-to-signed", "checksum"],
)
async def test_a_failed_import_names_its_url_without_secrets(
    site: Site, root: Path, caplog: pytest.LogCaptureFixture, path: str, exc: type, expect: str
) -> None:
    caplog.set_level(logging.DEBUG)
    site.files["x"] = b"x"
    port = site.base.rsplit(":", 1)[1]
    url = f"http://user:{PASSWORD}@127.0.0.1:{port}" + path.format(sig=SIGNATURE)
    events: list[TransferProgress] = []
    kw = {"sha256": "0" * 64} if expect.startswith("checksum") else {}
    with pytest.raises(exc) as info:
        await _run(root, url, events=events, **kw)
    msg = str(info.value)
    assert expect in msg and "?***" in msg, msg  # the URL is named, its secrets are not
    assert f"127.0.0.1:{port}/" in msg
    _secret_free(msg, *(e.message for e in events), caplog.text)
    assert events[-1].state == "failed"


async def test_unreachable_and_invalid_urls_keep_their_secrets(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    from tests.support.procs import free_port

    closed = f"http://127.0.0.1:{free_port()}/x?sig={SIGNATURE}"
    msg = await _fails(root, DatasetImportError, closed)
    assert "cannot connect" in msg and "?***" in msg, msg
    bad = f"http://user:{PASSWORD}@127.0.0.1:99999999/x?sig={SIGNATURE}"
    msg2 = await _fails(root, DatasetImportError, bad)
    _secret_free(msg, msg2, caplog.text)


async def test_a_signed_import_that_succeeds_logs_no_secret(
    site: Site, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    site.files["w.bin"] = b"weights"
    events: list[TransferProgress] = []
    await _run(root, f"{site.base}/signed/w.bin?sig={SIGNATURE}", events=events)
    assert (root / "ds" / "w.bin").read_bytes() == b"weights"
    assert "HTTP Request" in caplog.text  # httpx's own line is there, redacted
    _secret_free(caplog.text, *(e.message for e in events))


# ------------------------------------------------------------------ deep trees
def _read_deepest(top: Path, depth: int) -> bytes:
    for w in walk(top):
        if w.rel == deepest_rel(depth):
            fd = os.open(w.name, os.O_RDONLY, dir_fd=w.dir_fd)
            with open(fd, "rb") as f:
                return f.read()
    raise AssertionError(f"{deepest_rel(depth)[-40:]} is not under {top}")


async def test_an_archive_5000_deep_is_unpacked(site: Site, root: Path, deep_cleanup: None) -> None:
    site.files["deep.tar"] = deep_tar(DEEP)
    entry = await _run(root, f"{site.base}/f/deep.tar")
    assert (entry.files, entry.size, entry.top) == (1, 6, ["d"])
    assert _read_deepest(root / "ds", DEEP) == b"bottom"
    assert sorted(os.listdir(root)) == ["ds", "existing"]


async def test_a_deep_archive_that_fails_at_its_end_leaves_nothing(
    site: Site, root: Path, deep_cleanup: None
) -> None:
    """The whole deep tree is unpacked before the last entry is refused: all of it goes."""
    evil = tarfile.TarInfo("evil")
    evil.type = tarfile.SYMTYPE
    evil.linkname = "/etc"
    site.files["deep-bad.tar"] = deep_tar(LAB_DEEP, last=evil)
    msg = await _fails(root, UnsafeArchiveError, f"{site.base}/f/deep-bad.tar")
    assert "'evil'" in msg and "/etc" in msg
    assert sorted(os.listdir(root)) == ["existing"]


def _chain(n: int, end: str) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """Links l0 -> l1 -> ... -> l<n-1> -> ``end``, and a directory a/b with a/b/up -> ../.."""
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_ti("a/b", tarfile.DIRTYPE), None),
        (_ti("a/b/up", tarfile.SYMTYPE, "../.."), None),
        (_ti("a/b/f.txt"), b"f"),
    ]
    members += [(_ti(f"l{i}", tarfile.SYMTYPE, f"l{i + 1}"), None) for i in range(n - 1)]
    members.append((_ti(f"l{n - 1}", tarfile.SYMTYPE, end), None))
    return members


async def test_a_chain_of_1500_links_is_checked_without_recursion(site: Site, root: Path) -> None:
    site.files["chain.tar"] = _tar(_chain(LAB_DEEP, "a/b/f.txt"), mode="w")
    entry = await _run(root, f"{site.base}/f/chain.tar")
    assert entry.files == 1 and os.readlink(root / "ds" / "l0") == "l1"


async def test_a_chain_of_1500_links_that_ends_outside_is_refused(site: Site, root: Path) -> None:
    # a/b/up is the dataset's top, so a/b/up/.. is outside it (lexically it is a/b)
    site.files["chain-out.tar"] = _tar(_chain(LAB_DEEP, "a/b/up/.."), mode="w")
    msg = await _fails(root, UnsafeArchiveError, f"{site.base}/f/chain-out.tar")
    assert "resolves outside the dataset" in msg
