"""Import a dataset from an http(s) URL onto this node's disk.

Guards, in the order they apply:

1. Only ``http`` and ``https`` URLs, on the first request and on every redirect hop.
2. Server-side request forgery (:mod:`mlsm.netguard`, shared with webhooks): the host is
   resolved by the agent, and only addresses
   that are globally routable unicast are used (loopback, link-local, RFC 1918 private,
   ``fc00::/7``, CGNAT, multicast, unspecified and reserved ranges are refused, IPv4
   mapped into IPv6 included), unless the address lies in an admin-allowed CIDR
   (``allow_cidrs`` of the agent plus those the master forwards in the command).
   **DNS rebinding** is prevented by connecting to the very address that was checked:
   the request goes to ``scheme://<checked IP>:<port>/...`` with the ``Host`` header set to
   the name, and for https the ``sni_hostname`` request extension of httpx/httpcore set to
   the name, which httpcore uses both for SNI and for certificate hostname verification.
   So a second DNS answer can never redirect the connection. Every hop gets a fresh
   client (no connection reuse across names), and ``trust_env=False`` keeps environment
   proxies and ``.netrc`` out of it.
3. Redirects are followed by hand (at most ``max_redirects``), each hop checked as above.
4. Size: ``Content-Length`` over the limit is refused before reading, and the limit is
   enforced again on the bytes actually received (``Accept-Encoding: identity``, so what
   is counted is what is written and hashed).
5. ``cmd.sha256`` (``"<hex>"`` or ``"sha256:<hex>"``) is compared with the sha256 of the
   downloaded bytes; a mismatch names both.
6. Archives (zip, or tar with any compression tarfile reads) are unpacked when
   ``cmd.unpack`` through :mod:`.extract` (safe extraction, same byte limit, bomb ratio).
7. The URL's secrets (userinfo, query string, fragment: a presigned signature, say) are
   in no message: URLs are shown through :func:`redact`, and every message that leaves
   (progress, errors, httpx's own log lines) passes :func:`mlsm.redact.redact_text` with
   the URL's secret parts as literals.

Layout: everything happens in ``<root>/.mlsm-import-<name>-<random>/`` (mode 0700, hidden
from the scanner): the download goes to ``download``, the dataset is built in ``data/``.
A dataset is always a **directory**: an archive's content, or the single downloaded file
under its sanitised basename from the final URL's path (so jobs always get a directory to
mount, and a later import into the same layout never has to guess). ``data/`` is then
renamed to ``<root>/<name>`` with ``renameat2(RENAME_NOREPLACE)``, so the dataset appears
whole or not at all, and an existing name is never replaced. On any error or cancel the
temp dir is removed and nothing new remains under the root.

Over 400 lines, as one piece: the download, the checks on what arrived and the unpack share
one temp dir and one cancel/cleanup path, and the ordering rules above only hold when they
are read together.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO
from urllib.parse import unquote

import httpx

from mlsm.netguard import (
    AddrNet,
    Resolver,
    checked_addresses,
    parse_networks,
    pinned_request,
)
from mlsm.netguard import address_refusal as address_refusal  # the guard's rule, re-exported
from mlsm.redact import redact_http_logs, redact_text, redact_url, url_secrets
from mlsm.wire.agent import DatasetEntry, ImportDataset, TransferProgress

from ._fs import cleanup, open_new, prepare_target, rename_noreplace
from ._tasks import Progress, run_cancellable, run_thread_cancellable
from .archives import archive_kind, extract_tar, extract_zip
from .errors import (
    DatasetCancelled,
    DatasetError,
    DatasetImportError,
    DatasetTooLargeError,
)
from .extract import MAX_RATIO, Limits, SafeWriter
from .paths import validate_dataset_name
from .scan import scan_entry

log = logging.getLogger(__name__)
# httpx logs "HTTP Request: GET <url>" and httpcore traces response headers (a redirect's
# Location): never with a URL's secrets, whatever logging configuration the process has.
redact_http_logs()

ALLOWED_SCHEMES = frozenset({"http", "https"})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
WRITE_BLOCK = 1 << 20  # downloaded bytes buffered before one write+hash in a thread
CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 60.0
USER_AGENT = "mlsm-agent"


# ------------------------------------------------------------------ addresses
def parse_cidrs(cidrs: Sequence[str]) -> list[AddrNet]:
    try:
        return parse_networks(cidrs)
    except ValueError as e:
        raise DatasetImportError(str(e)) from None


async def resolve_checked(
    host: str, port: int, allowed: Sequence[AddrNet], resolve: Resolver | None = None
) -> list[str]:
    """The addresses of ``host`` that may be connected to (:mod:`mlsm.netguard`'s rule);
    refuses when there are none."""
    try:
        usable, reasons = await checked_addresses(host, port, allowed, resolve)
    except OSError as e:
        raise DatasetImportError(f"cannot resolve host {host!r}: {e}") from None
    if not usable:
        detail = "; ".join(reasons) or "no address"
        raise DatasetImportError(
            f"refusing to fetch from {host!r}: {detail} "
            "(an admin can allow a network with allow_cidrs)"
        )
    return usable


# ------------------------------------------------------------------ URLs and requests
def redact(url: httpx.URL) -> str:
    """The URL for messages: no userinfo, query or fragment (they may hold credentials,
    such as a presigned signature; see :mod:`mlsm.redact`)."""
    return redact_url(str(url))


def _check_scheme(url: httpx.URL) -> None:
    if url.scheme not in ALLOWED_SCHEMES:
        raise DatasetImportError(
            f"URL scheme {url.scheme!r} is not allowed (only http and https): {redact(url)}"
        )
    if not url.host:
        raise DatasetImportError(f"URL has no host: {redact(url)}")
    if url.port is not None and not 0 < url.port < 65536:
        raise DatasetImportError(f"URL has an invalid port: {redact(url)}")


def build_request(url: httpx.URL, ip: str) -> httpx.Request:
    """A GET of ``url`` that connects to ``ip`` while naming the host (Host + SNI)."""
    return pinned_request("GET", url, ip, {"Accept-Encoding": "identity", "User-Agent": USER_AGENT})


def safe_basename(url: httpx.URL) -> str:
    """The last path segment of ``url`` as a safe file name ("download" if none is left)."""
    raw = url.raw_path.decode("ascii").split("?", 1)[0]
    seg = unquote(raw.rsplit("/", 1)[-1])  # split before decoding: %2F stays in the name
    seg = re.sub(r"[^A-Za-z0-9._+-]", "_", seg).lstrip(".-")[:200]
    return seg or "download"


# ------------------------------------------------------------------ the download
def _write_and_hash(f: IO[bytes], h: hashlib._Hash, data: bytes) -> None:
    f.write(data)
    h.update(data)


async def _download(
    url: httpx.URL,
    dest: Path,
    *,
    limit: int,
    max_redirects: int,
    allowed: Sequence[AddrNet],
    resolve: Resolver | None,
    progress: Progress,
) -> tuple[httpx.URL, str]:
    """Fetch ``url`` into ``dest``; return the final URL and the sha256 hex of the body."""
    timeout = httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)
    for hop in range(max_redirects + 1):
        _check_scheme(url)
        port = url.port or (443 if url.scheme == "https" else 80)
        addrs = await resolve_checked(url.raw_host.decode("ascii"), port, allowed, resolve)
        last_error: Exception | None = None
        for ip in addrs:
            async with httpx.AsyncClient(
                timeout=timeout, trust_env=False, follow_redirects=False
            ) as client:
                try:
                    resp = await client.send(build_request(url, ip), stream=True)
                except httpx.ConnectError as e:
                    last_error = e
                    continue
                try:
                    if resp.status_code in REDIRECT_STATUSES and "location" in resp.headers:
                        if hop >= max_redirects:
                            raise DatasetImportError(
                                f"too many redirects (more than {max_redirects}) "
                                f"fetching {redact(url)}"
                            )
                        url = url.join(resp.headers["location"])
                        break
                    if resp.status_code != 200:
                        raise DatasetImportError(
                            f"{redact(url)} answered HTTP {resp.status_code} "
                            f"{resp.reason_phrase}".rstrip()
                        )
                    sha = await _stream_body(resp, url, dest, limit, progress)
                    return url, sha
                finally:
                    await resp.aclose()
        else:
            raise DatasetImportError(f"cannot connect to {redact(url)}: {last_error}")
    raise DatasetImportError(f"too many redirects (more than {max_redirects})")  # unreachable


async def _stream_body(
    resp: httpx.Response, url: httpx.URL, dest: Path, limit: int, progress: Progress
) -> str:
    length = resp.headers.get("content-length")
    if length is not None:
        try:
            total = int(length)
        except ValueError:
            raise DatasetImportError(
                f"{redact(url)} sent a bad Content-Length {length!r}"
            ) from None
        if total > limit:
            raise DatasetTooLargeError(
                f"{redact(url)} announces {total} bytes, over the limit of {limit} bytes"
            )
        progress.total = total
    h = hashlib.sha256()
    done = 0
    buf = bytearray()
    pending: asyncio.Future[None] | None = None
    f = await asyncio.to_thread(open_new, dest)
    try:
        try:
            async for chunk in resp.aiter_bytes():
                done += len(chunk)
                if done > limit:
                    raise DatasetTooLargeError(
                        f"{redact(url)} sent more than the limit of {limit} bytes"
                    )
                buf += chunk
                if len(buf) >= WRITE_BLOCK:
                    data, buf = bytes(buf), bytearray()
                    pending = asyncio.ensure_future(asyncio.to_thread(_write_and_hash, f, h, data))
                    await asyncio.shield(pending)
                progress.update(done, "downloading")
            if buf:
                pending = asyncio.ensure_future(
                    asyncio.to_thread(_write_and_hash, f, h, bytes(buf))
                )
                await asyncio.shield(pending)
        finally:
            # A write already handed to a thread finishes before the file is closed.
            while pending is not None and not pending.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(pending)
    finally:
        await asyncio.to_thread(f.close)
    if progress.total is not None and done != progress.total:
        raise DatasetImportError(
            f"{redact(url)} ended after {done} of {progress.total} announced bytes"
        )
    progress.update(done, "downloaded", force=True)
    return h.hexdigest()


def _normalise_sha(value: str) -> str:
    v = value.strip().lower()
    if v.startswith("sha256:"):
        v = v[len("sha256:") :]
    if not re.fullmatch(r"[0-9a-f]{64}", v):
        raise DatasetImportError(f"expected sha256 {value!r} is not 64 hex digits")
    return v


# ------------------------------------------------------------------ the whole import
def _build_dataset(
    download: Path,
    data: Path,
    basename: str,
    *,
    unpack: bool,
    limit: int,
    stop: threading.Event,
) -> None:
    kind = archive_kind(download) if unpack else None
    if kind is None:
        os.mkdir(data, 0o755)
        os.rename(download, data / basename)
        return
    os.mkdir(data, 0o755)
    limits = Limits(max_bytes=limit, max_ratio=MAX_RATIO, archive_size=download.stat().st_size)
    writer = SafeWriter(data, limits, should_stop=stop.is_set)
    if kind == "zip":
        extract_zip(download, writer)
    else:
        with open(download, "rb") as f:
            extract_tar(f, writer)


async def import_dataset(
    cmd: ImportDataset,
    root: Path,
    *,
    progress: Callable[[TransferProgress], None],
    cancel: asyncio.Event,
    max_bytes: int,
    max_redirects: int = 5,
    allow_cidrs: Sequence[str] = (),
    resolve: Resolver | None = None,
) -> DatasetEntry:
    """Download ``cmd.url`` into ``<root>/<cmd.name>``; see the module docstring.

    ``max_bytes`` is the agent's own limit (> 0); ``cmd.max_bytes``, when set, can only
    lower it. ``allow_cidrs`` (the agent's) and ``cmd.allow_cidrs`` (forwarded by the
    master from the admin setting) together name the networks exempt from the address
    check. ``resolve`` replaces the system resolver (tests). ``progress`` gets running
    reports at most ~4 times a second and one final report (succeeded / failed /
    cancelled). Raises a :class:`DatasetError` subclass on failure.
    """
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")
    secrets = url_secrets(cmd.url)
    report = Progress(cmd.id, progress)
    tmp: Path | None = None
    try:
        name = validate_dataset_name(cmd.name)
        limit = min(max_bytes, cmd.max_bytes) if cmd.max_bytes > 0 else max_bytes
        allowed = parse_cidrs([*allow_cidrs, *cmd.allow_cidrs])
        expected = _normalise_sha(cmd.sha256) if cmd.sha256 else ""
        try:
            url = httpx.URL(cmd.url)
        except (httpx.InvalidURL, TypeError, ValueError) as e:
            raise DatasetImportError(f"invalid URL: {e}") from None  # redacted below
        _check_scheme(url)
        target, work_dir = await asyncio.to_thread(prepare_target, root, name, "import")
        tmp = work_dir
        download = work_dir / "download"
        final_url, sha = await run_cancellable(
            _download(
                url,
                download,
                limit=limit,
                max_redirects=max_redirects,
                allowed=allowed,
                resolve=resolve,
                progress=report,
            ),
            cancel,
        )
        if expected and sha != expected:
            raise DatasetImportError(
                f"checksum mismatch for {redact(url)}: expected sha256 {expected}, got {sha}"
            )
        report.update(report.done, "unpacking" if cmd.unpack else "finishing", force=True)
        data = work_dir / "data"
        basename = safe_basename(final_url)
        await run_thread_cancellable(
            lambda stop: _build_dataset(
                download, data, basename, unpack=cmd.unpack, limit=limit, stop=stop
            ),
            cancel,
        )
        if cancel.is_set():
            raise DatasetCancelled("cancelled")
        rename_noreplace(data, target)
        entry = await asyncio.to_thread(scan_entry, target.parent, name)
    except DatasetCancelled:
        report.final("cancelled", "cancelled")
        raise
    except DatasetError as e:
        msg = redact_text(e.message, secrets)
        report.final("failed", msg)
        if msg == e.message:
            raise
        raise type(e)(msg) from None
    except asyncio.CancelledError:
        report.final("cancelled", "cancelled")
        raise
    except (OSError, httpx.HTTPError, httpx.InvalidURL) as e:
        msg = redact_text(f"import of {cmd.name!r} failed: {e}", secrets)
        report.final("failed", msg)
        raise DatasetImportError(msg) from None
    finally:
        if tmp is not None:
            await asyncio.to_thread(cleanup, tmp)
    report.final("succeeded", f"imported {entry.files} files, {entry.size} bytes")
    return entry
