"""Webhook signing secrets at rest: encrypted with a key that never enters the database.

The master must sign with the secret, so it cannot keep only a hash. Each secret is
encrypted (Fernet: AES-128-CBC + HMAC-SHA256) with ``notify.key``, a random key made
0600 in the master's data dir at first use. A copy of the database alone (a PostgreSQL
dump, a stolen backup) then holds no usable secret; someone who can also read the data
dir can decrypt them, as they can read the audit key.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from mlsm.errors import ConfigError

KEY_FILE = "notify.key"


def _load_or_create(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    key = Fernet.generate_key()
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


class SecretBox:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / KEY_FILE
        self._fernet: Fernet | None = None

    def _f(self) -> Fernet:
        if self._fernet is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                self._fernet = Fernet(_load_or_create(self.path))
            except ValueError:
                raise ConfigError(
                    f"{self.path} is not a notify key (44 base64 characters)"
                ) from None
        return self._fernet

    def seal(self, secret: str) -> str:
        return self._f().encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        """The secret, or ``""`` when the key that sealed it is gone (such a webhook is
        delivered unsigned no more: its deliveries fail, naming why)."""
        try:
            return self._f().decrypt(sealed.encode()).decode()
        except InvalidToken:
            return ""
