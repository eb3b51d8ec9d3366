"""Write a small file whole or not at all: a temporary file beside it, then a rename.

A reader never sees the file truncated or half written (a ``mlsm`` call reading
``local.json`` while another writes it once read it empty), and a link planted at the
temporary name is replaced, never written through. The mode is set at creation, so a
secret is never readable by others, even for an instant.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text``, created with ``mode``; raises OSError."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a leftover of a killed writer with this pid; unlink never follows
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, mode)  # the umask may have narrowed a wider mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
