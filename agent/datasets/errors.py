"""Errors of the agent's dataset code.

Every message is one readable line that names the thing at fault (the name, the entry of
an archive, the URL, both digests), because it travels to the master verbatim as the
``message`` of a failed :class:`~mlsm.wire.agent.TransferProgress`::

    DatasetError                         code
    ├── DatasetPathError (ValueError)    dataset_path      bad name, or a path outside a root
    ├── DatasetExistsError               dataset_exists    the target name is taken
    ├── DatasetNotFoundError             dataset_not_found
    ├── UnsafeArchiveError               unsafe_archive    an archive entry that could escape
    ├── DatasetTooLargeError             too_large         max_bytes / entry count / ratio
    ├── DatasetImportError               import_failed     URL, address, HTTP, checksum
    ├── TransferVerifyError              verify_failed     a received file differs
    └── DatasetCancelled                 cancelled         scan/digest/import/receive stopped

Codes are stable; add new ones, never rename.
"""

from __future__ import annotations

from typing import ClassVar


class DatasetError(Exception):
    code: ClassVar[str] = "dataset_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DatasetPathError(DatasetError, ValueError):
    code = "dataset_path"


class DatasetExistsError(DatasetError):
    code = "dataset_exists"


class DatasetNotFoundError(DatasetError):
    code = "dataset_not_found"


class UnsafeArchiveError(DatasetError):
    code = "unsafe_archive"


class DatasetTooLargeError(DatasetError):
    code = "too_large"


class DatasetImportError(DatasetError):
    code = "import_failed"


class TransferVerifyError(DatasetError):
    code = "verify_failed"


class DatasetCancelled(DatasetError):
    code = "cancelled"
