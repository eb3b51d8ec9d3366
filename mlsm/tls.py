"""TLS helpers: certificate fingerprints and pinned connections.

A join token (and ``mlsm login --fingerprint``) can carry the SHA-256 fingerprint of the
master's certificate. A pinned connection fetches the certificate the server presents,
compares its fingerprint, and then trusts exactly that certificate for the real handshake
(partial-chain verification), so a swapped certificate fails the handshake itself.
"""

from __future__ import annotations

import hashlib
import ssl
from urllib.parse import urlsplit

from mlsm.errors import ConfigError, UnavailableError

FETCH_TIMEOUT_S = 10.0


def normalise_fingerprint(fp: str) -> str:
    clean = fp.lower().removeprefix("sha256:").replace(":", "").strip()
    if len(clean) != 64 or any(c not in "0123456789abcdef" for c in clean):
        raise ConfigError(f"setting 'fingerprint': {fp!r} is not a SHA-256 fingerprint")
    return clean


def fingerprint_of_pem(pem: str) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def fingerprint_of_file(path: str) -> str:
    with open(path) as fh:
        return fingerprint_of_pem(fh.read())


def pinned_context(fingerprint: str, url: str) -> ssl.SSLContext:
    """An SSL context that accepts only the certificate with this fingerprint at ``url``."""
    want = normalise_fingerprint(fingerprint)
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"a certificate fingerprint needs an https URL, not {url!r}")
    try:
        pem = ssl.get_server_certificate(
            (parts.hostname, parts.port or 443), timeout=FETCH_TIMEOUT_S
        )
    except OSError as exc:
        raise UnavailableError(
            f"cannot reach {parts.hostname}:{parts.port or 443}: {exc}"
        ) from None
    got = fingerprint_of_pem(pem)
    if got != want:
        raise ConfigError(
            f"the master at {parts.hostname} presents a certificate with fingerprint sha256:{got}, "
            f"not the pinned sha256:{want}; refusing to talk to it (a different server, or its "
            "certificate was replaced)"
        )
    ctx = ssl.create_default_context(cadata=pem)
    ctx.check_hostname = False
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx
