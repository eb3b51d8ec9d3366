"""Starting dataset changes on nodes: import a URL or a directory of another node, copy or
move between nodes, delete a copy, hash a copy. Each is checked here (names, nodes online, roots, nothing in the way, jobs that
need a copy) and then runs as a transfer (:mod:`.transfers`).

Import URLs are checked at the edge: http/https only, and an address given as an IP
literal must be a public one unless the lab settings allow its range (hosts by name are
resolved and checked by the agent, which is where DNS answers).

An import from a node (``from_node`` and ``path``) reads a directory of that node as its
agent's user, so it is confined by the node itself: the path must be absolute, plain, and
at or below one of the import roots the node's agent was started with (``--import-root``,
reported in its node info); a node with none serves no path at all. The master checks
that here to refuse early in words; the source agent checks it again and opens the path
without following links (:func:`agent.bulk.sources.path_resolver`). The bytes then move
as a copy's do (direct, else relayed; resumable), into the target's dataset root.
"""

from __future__ import annotations

import contextlib
import ipaddress
import time
from urllib.parse import urlsplit

from mlsm import COMMAND_SINCE
from mlsm.datasets_names import dataset_name_problem, import_path_problem, is_below
from mlsm.errors import Conflict, NotFound, PermissionDenied, ValidationError
from mlsm.master.security import Principal
from mlsm.master.services.datasets.catalog import DatasetCatalog
from mlsm.master.services.datasets.transfers import LiveTransfer, Transfers
from mlsm.master.services.livenode import LiveNode
from mlsm.master.services.nodes import NodeRegistry
from mlsm.master.services.settings import SettingsService
from mlsm.redact import url_secrets
from mlsm.wire import agent as w
from mlsm.wire import api
from mlsm.wire import bulk as wb

IMPORT_SCHEMES = ("http", "https")
#: How many of the jobs that need a copy a refused delete names.
NEEDING_SHOWN = 10


class DatasetOperations:
    def __init__(
        self,
        nodes: NodeRegistry,
        catalog: DatasetCatalog,
        transfers: Transfers,
        lab_settings: SettingsService,
    ) -> None:
        self.nodes = nodes
        self.catalog = catalog
        self.transfers = transfers
        self.lab_settings = lab_settings

    async def start_import(self, p: Principal, body: api.DatasetImport) -> api.Transfer:
        _check_name(body.name)
        if body.from_node is not None or body.path:
            if body.url:
                raise ValidationError("give a URL or --from-node and --path, not both", path="url")
            return await self.start_node_import(p, body)
        if not body.url:
            raise ValidationError(
                "nothing to import: give a URL, or --from-node NODE and --path DIR", path="url"
            )
        settings = self.lab_settings.current
        _check_url(body.url, list(settings.import_allow_cidrs))
        node = self._online(body.node, "the")
        _with_roots(node)
        self._not_there(node, body.name)
        live = await self.transfers.new(
            LiveTransfer(
                id=0,
                kind="import",
                dataset=body.name,
                node=node.name,
                node_id=node.id,
                created_at=time.time(),
                created_by=p.name,
                state="running",
                message="queued on the node",
                secrets=url_secrets(body.url),
            )
        )
        await self.transfers.command(
            live,
            "import",
            node.id,
            w.ImportDataset,
            url=body.url,
            name=body.name,
            sha256=body.sha256,
            max_bytes=settings.import_max_bytes,
            allow_cidrs=list(settings.import_allow_cidrs),
            unpack=body.unpack,
        )
        await self.transfers.save(live)
        return live.view()

    async def start_transfer(self, p: Principal, body: api.DatasetTransfer) -> api.Transfer:
        """Copy (or move) a dataset between nodes: the target pulls it from the source
        (through the master's relay pipes), verifies every file and renames it into place."""
        _check_name(body.name)
        if body.src == body.dst:
            raise ValidationError("--from and --to name the same node", path="dst")
        src = self._online(body.src, "source")
        path = self.catalog.path_on(src.id, body.name)
        if path is None:
            raise NotFound(f"node {src.name} holds no dataset {body.name}")
        dst = self._online(body.dst, "target")
        _with_roots(dst)
        self._not_there(dst, body.name)
        self._speaks_bulk(src, dst)
        kind: api.TransferKind = "move" if body.move else "copy"
        return await self._pull(p, kind, body.name, src, dst, path, f"{src.name} -> {dst.name}")

    async def start_node_import(self, p: Principal, body: api.DatasetImport) -> api.Transfer:
        """Import ``body.path`` of node ``body.from_node`` onto ``body.node`` as a dataset
        (see the module docstring): pulled by the target as a copy is."""
        if body.sha256:
            raise ValidationError(
                "--sha256 is for URL imports (an import from a node verifies every file)",
                path="sha256",
            )
        if body.from_node is None or not body.path:
            raise ValidationError(
                "an import from a node needs both --from-node and --path",
                path="path" if body.from_node else "from_node",
            )
        problem = import_path_problem(body.path)
        if problem is not None:
            raise ValidationError(problem, path="path")
        path = body.path.rstrip("/")
        src = self._online(body.from_node, "source")
        roots = list(src.info.import_roots)
        if not roots:
            raise Conflict(
                f"node {src.name} allows no imports from its disk: its agent must be started "
                "with --import-root DIR (the directories admins may import from)",
                details={"node": src.name},
            )
        if is_below(path, roots) is None:
            raise PermissionDenied(
                f"{path} is not below an import root of node {src.name} ({', '.join(roots)})",
                details={"node": src.name, "import_roots": roots},
            )
        dst = self._online(body.node, "target")
        _with_roots(dst)
        self._not_there(dst, body.name)
        self._speaks_bulk(src, dst)
        where = f"{src.name}:{path} -> {dst.name}"
        return await self._pull(p, "import", body.name, src, dst, path, where)

    async def _pull(
        self,
        p: Principal,
        kind: api.TransferKind,
        name: str,
        src: LiveNode,
        dst: LiveNode,
        path: str,
        where: str,
    ) -> api.Transfer:
        """A transfer of ``src``'s tree at ``path`` that ``dst`` pulls (a copy, a move, an
        import from a node): recorded, then the target told to receive it."""
        live = await self.transfers.new(
            LiveTransfer(
                id=0,
                kind=kind,
                dataset=name,
                node=dst.name,
                node_id=dst.id,
                src_node=src.name,
                src_id=src.id,
                src_path=path,
                created_at=time.time(),
                created_by=p.name,
                state="running",
                phase="receive",
                message=f"{where}: queued on {dst.name}",
            )
        )
        await self.transfers.command(
            live, "receive", dst.id, wb.BulkReceive, **self.transfers.receive_fields(live)
        )
        await self.transfers.save(live)
        return live.view()

    async def start_delete(self, p: Principal, name: str, node_name: str) -> api.Transfer:
        """Remove the copy on ``node_name``; refused (409) while a job needs that copy."""
        _check_name(name)
        node = self.nodes.get(node_name)
        path = self.catalog.path_on(node.id, name)
        if path is None:
            raise NotFound(f"node {node_name} holds no dataset {name}")
        if self.nodes.state_of(node) == "offline":
            raise Conflict(f"node {node_name} is offline: its disk cannot be changed now")
        needing = await self.catalog.needed_by(name, node)
        if needing:
            shown = ", ".join(str(j) for j in needing[:NEEDING_SHOWN])
            raise Conflict(
                f"dataset {name} on {node.name} is needed by job(s) {shown} "
                "(queued or running, and no other online node holds it); "
                "wait for them or cancel them first",
                details={"jobs": needing},
            )
        busy = self.transfers.touching(name, node.id)
        if busy is not None:
            raise Conflict(
                f"dataset {name} on {node_name} is in transfer {busy}; wait or cancel it"
            )
        live = await self.transfers.new(
            LiveTransfer(
                id=0,
                kind="delete",
                dataset=name,
                node=node.name,
                node_id=node.id,
                src_path=path,
                created_at=time.time(),
                created_by=p.name,
                state="running",
                message=f"deleting {path}",
            )
        )
        self.catalog.withdraw(node.id, name)  # no new job is placed on it meanwhile
        await self.transfers.command(live, "delete", node.id, w.DeleteDataset, path=path)
        await self.transfers.save(live)
        return live.view()

    async def start_digest(self, p: Principal, name: str, node_name: str) -> api.Transfer:
        """Hash every file of the copy on ``node_name``; the digest shows on that copy."""
        _check_name(name)
        node = self._online(node_name, "the")
        path = self.catalog.path_on(node.id, name)
        if path is None:
            raise NotFound(f"node {node_name} holds no dataset {name}")
        live = await self.transfers.new(
            LiveTransfer(
                id=0,
                kind="digest",
                dataset=name,
                node=node.name,
                node_id=node.id,
                created_at=time.time(),
                created_by=p.name,
                state="running",
                message=f"hashing {path}",
            )
        )
        await self.transfers.command(live, "digest", node.id, w.DigestDataset, path=path)
        await self.transfers.save(live)
        return live.view()

    # ---------------------------------------------------------------- checks
    @staticmethod
    def _speaks_bulk(*nodes: LiveNode) -> None:
        need = COMMAND_SINCE["bulk_receive"]
        for n in nodes:
            if n.protocol < need:
                raise Conflict(
                    f"the agent on {n.name} is too old for copies between servers (it speaks "
                    f"protocol {n.protocol}, copies need {need}): upgrade mlsm on that server",
                    details={"node": n.name, "protocol": n.protocol, "needs": need},
                )

    def _online(self, name: str, what: str) -> LiveNode:
        node = self.nodes.get(name)
        state = self.nodes.state_of(node)
        if state not in ("online", "draining"):
            raise Conflict(f"{what} node {name} is {state}: it must be online")
        return node

    def _not_there(self, node: LiveNode, name: str) -> None:
        if self.catalog.path_on(node.id, name) is not None:
            raise Conflict(f"dataset {name} already exists on node {node.name}")
        busy = self.transfers.bringing(name, node.id)
        if busy is not None:
            raise Conflict(
                f"dataset {name} is already being brought to {node.name} (transfer {busy})"
            )


def _check_name(name: str) -> None:
    why = dataset_name_problem(name)
    if why is not None:
        raise ValidationError(why, path="name")


def _with_roots(node: LiveNode) -> None:
    if not node.info.dataset_roots:
        raise Conflict(
            f"node {node.name} has no dataset root: start its agent with --dataset-root PATH"
        )


def _check_url(url: str, allowed: list[str]) -> None:
    """Scheme allow-list, and for an IP literal the same address guard the agent applies
    (hosts by name are resolved and checked by the agent, which is where DNS answers)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port  # raises for a port that is not a number up to 65535
    except ValueError:  # the parser's words may quote a password: none are echoed
        raise ValidationError(
            "invalid URL: its host or port cannot be read (a port is a number up to 65535)",
            path="url",
        ) from None
    if port == 0:
        raise ValidationError("invalid URL: port 0", path="url")
    if parts.scheme.lower() not in IMPORT_SCHEMES:
        raise ValidationError(
            f"URL scheme {parts.scheme or '(none)'!r} is not allowed: only http and https",
            path="url",
        )
    if not host:
        raise ValidationError("the URL has no host", path="url")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return
    nets = []
    for c in allowed:
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.ip_network(c, strict=False))
    if any(ip.version == n.version and ip in n for n in nets):
        return
    if not ip.is_global or ip.is_multicast:
        raise ValidationError(
            f"refusing to import from {host}: it is an internal address (loopback, private or "
            "link-local); an admin can allow its range with "
            "`mlsm settings set --import-allow-cidr CIDR`",
            path="url",
        )
