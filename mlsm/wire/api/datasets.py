"""JSON API structs for datasets: copies, imports and transfers between nodes."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from mlsm.wire.api.base import NodeName, TransferKind, TransferState, UserName


# ---------------------------------------------------------------- datasets
class DatasetCopy(Struct, kw_only=True):
    node: str
    path: str
    size: int
    files: int
    modified: float
    digest: str | None = None
    top: list[str] = []
    node_state: str = ""


class Dataset(Struct, kw_only=True):
    name: str
    description: str = ""
    tags: list[str] = []
    owner: str = ""
    copies: list[DatasetCopy] = []
    used_by: list[int] = []


class DatasetUpdate(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    description: Annotated[str, Meta(max_length=4096)] | None = None
    tags: (
        Annotated[list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(max_length=64)]
        | None
    ) = None
    owner: UserName | None = None


class DatasetImport(Struct, kw_only=True, forbid_unknown_fields=True):
    """An import onto ``node`` as dataset ``name``: from ``url``, or (``from_node`` and
    ``path``) from a directory or file below an import root of another node of the lab."""

    url: Annotated[str, Meta(max_length=4096)] = ""
    node: NodeName
    name: Annotated[str, Meta(min_length=1, max_length=128)]
    sha256: Annotated[str, Meta(pattern=r"^([0-9a-fA-F]{64})?$")] = ""
    unpack: bool = True
    from_node: NodeName | None = None
    path: Annotated[str, Meta(max_length=4096)] = ""


class DatasetTransfer(Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=128)]
    src: NodeName
    dst: NodeName
    move: bool = False


class Transfer(Struct, kw_only=True):
    id: int
    kind: TransferKind
    dataset: str
    node: str
    state: TransferState
    done_bytes: int = 0
    total_bytes: int | None = None
    rate_bps: float = 0.0
    message: str = ""
    created_at: float = 0.0
    src_node: str | None = None  # copies and moves: where the bytes come from
