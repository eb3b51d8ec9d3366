"""TLS helpers: certificate fingerprints and pinned connections.

A join token (and ``mlsm login --fingerprint``) can carry the SHA-256 fingerprint of the
master's certificate. A pinned connection fetches the certificate the server presents,
compares its fingerprint, and then trusts exactly that certificate for the real handshake
(partial-chain verification), so a swapped certificate fails the handshake itself.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from mlsm.errors import ConfigError, UnavailableError

FETCH_TIMEOUT_S = 10.0
#: The files ``mlsm master --tls-self-signed`` keeps in its data dir.
SELF_SIGNED_CERT = "tls-cert.pem"
SELF_SIGNED_KEY = "tls-key.pem"


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


SELF_SIGNED_DAYS = 3650
#: Longest a child process may take to make a certificate (:func:`ensure_self_signed_apart`).
MAKE_CERT_TIMEOUT_S = 60.0


def ensure_self_signed(directory: Path, hostnames: list[str]) -> tuple[Path, Path]:
    """A self-signed certificate for the master in ``directory`` (made once, then reused).

    Nobody needs to trust it through a CA: join tokens carry its fingerprint, and
    ``mlsm login --fingerprint`` pins it for people.
    """
    cert_path, key_path = directory / SELF_SIGNED_CERT, directory / SELF_SIGNED_KEY
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path  # reused: the cryptography package is not even loaded
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for h in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0] if hostnames else "mlsm-master")]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def ensure_self_signed_apart(directory: Path, hostnames: list[str]) -> tuple[Path, Path]:
    """:func:`ensure_self_signed`, made in a short-lived child process when it does not
    exist yet. A long-running process that only serves the certificate (the agent) then
    never maps the cryptography package: 8 MiB of its resident memory, for good."""
    cert_path, key_path = directory / SELF_SIGNED_CERT, directory / SELF_SIGNED_KEY
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    import subprocess
    import sys

    argv = [sys.executable, "-m", "mlsm.tls", str(directory), *hostnames]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=MAKE_CERT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot make a certificate in {directory}: {exc}") from None
    if done.returncode != 0 or not (cert_path.exists() and key_path.exists()):
        why = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise ConfigError(f"cannot make a certificate in {directory}: {why}")
    return cert_path, key_path


if __name__ == "__main__":  # python -m mlsm.tls DIR HOSTNAME...: ensure_self_signed_apart's child
    import sys

    ensure_self_signed(Path(sys.argv[1]), sys.argv[2:])
