"""Datasets on the agent's own disk: naming, scanning, import, delete (copies between nodes are received by agent.bulk).

Public API (everything else is private to the package)::

    validate_dataset_name(name) -> str            paths.py
    confine(root, name) -> Path
    confine_path(root, path) -> Path
    pick_root(roots, requested) -> Path
    DatasetScanner(roots).scan(full=False) -> DatasetReport      scan.py
    scan_entry(root, name) -> DatasetEntry
    digest(path) -> (digest, manifest)
    import_dataset(cmd, root, *, progress, cancel, max_bytes, ...) -> DatasetEntry   importer.py
    delete_dataset(roots, path) -> bool                          delete.py
    purge_leftovers(roots, keep=()) -> list[Path]

Blocking functions (scan, digest, delete) belong in a worker thread; import is a
coroutine that push their own blocking parts to threads.
"""

from .delete import delete_dataset, purge_leftovers
from .errors import (
    DatasetCancelled,
    DatasetError,
    DatasetExistsError,
    DatasetImportError,
    DatasetNotFoundError,
    DatasetPathError,
    DatasetTooLargeError,
    TransferVerifyError,
    UnsafeArchiveError,
)
from .importer import import_dataset
from .paths import confine, confine_path, pick_root, validate_dataset_name
from .scan import DatasetScanner, digest, manifest_digest, scan_entry

__all__ = [
    "DatasetCancelled",
    "DatasetError",
    "DatasetExistsError",
    "DatasetImportError",
    "DatasetNotFoundError",
    "DatasetPathError",
    "DatasetScanner",
    "DatasetTooLargeError",
    "TransferVerifyError",
    "UnsafeArchiveError",
    "confine",
    "confine_path",
    "delete_dataset",
    "digest",
    "import_dataset",
    "manifest_digest",
    "pick_root",
    "purge_leftovers",
    "scan_entry",
    "validate_dataset_name",
]
