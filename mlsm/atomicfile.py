"""Write a small file whole or not at all: a temporary file beside it, then a rename.

A reader never sees the file truncated or half written (a ``mlsm`` call reading
``local.json`` while another writes it once read it empty), and a link planted at the
temporary name is replaced, never written through: the name is new for every write (so
two threads writing one file never share it) and created exclusively. The mode is set at
creation, so a secret is never readable by others, even for an instant.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

__all__ = ["write_atomic"]

_serial = itertools.count()  # next() is atomic under the GIL: one name per write


def write_atomic(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``, created with ``mode``; raises OSError."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_serial)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, mode)  # the umask may have narrowed a wider mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
