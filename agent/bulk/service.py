"""The agent's bulk commands: answering relay pipes with manifests and frames.

``BulkManifest`` pushes the MessagePack manifest of a source spec into its pipe;
``BulkServe`` pushes the frames answering a want (:class:`mlsm.bulk.Source`, from the tree
by descriptor); ``BulkListen`` opens a direct listener for one transfer
(:mod:`agent.bulk.direct`) and pushes its port. Each runs as a task, so the command loop keeps taking commands (many
pipes at once: one per want in flight). Other features register more source kinds
(:meth:`BulkCommands.sources`) or more pipe commands (:meth:`BulkCommands.pipe_command`:
a command with a ``pipe_id`` and a function that produces its answer in a thread).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from agent.link import MasterLink
from mlsm import errors
from mlsm.bulk import encode_manifest
from mlsm.wire import bulk as wb

from .direct import DirectServer, Identity
from .pipes import push_answer
from .sources import SourceBook

log = logging.getLogger("mlsm.agent.bulk")

LISTEN_START_S = 10.0  # opening a listener takes far less

#: A pipe command's answer: ``produce(cmd, stop)`` returns its chunks (runs in a thread).
Answer = Callable[[Any, threading.Event], Iterator[bytes]]


class BulkCommands:
    def __init__(
        self, link: MasterLink, identity: Identity | None = None, data_dir: Path | None = None
    ) -> None:
        """With ``identity`` the agent also serves the direct path (``BulkListen``); with
        ``data_dir`` the hashes of the trees it serves are kept there (:mod:`.sources`)."""
        self.link = link
        self.sources = SourceBook(data_dir)
        self._answers: dict[type, Answer] = {
            wb.BulkManifest: self._manifest,
            wb.BulkServe: self._serve,
        }
        self.direct = DirectServer(identity, self.sources) if identity is not None else None
        if self.direct is not None:
            self._answers[wb.BulkListen] = self._listen
        self.tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def pipe_command(self, kind: type, answer: Answer) -> None:
        """Answer commands of ``kind`` (which carry ``pipe_id``) with ``answer``."""
        self._answers[kind] = answer

    def install(self, handlers: dict[type, Callable[[Any], Awaitable[None]]]) -> None:
        for kind in self._answers:
            handlers[kind] = self._start

    async def _start(self, cmd: Any) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.create_task(self._run(cmd), name=f"pipe-{cmd.id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, cmd: Any) -> None:
        answer = self._answers[type(cmd)]
        try:
            sent = await push_answer(self.link, cmd.pipe_id, lambda stop: answer(cmd, stop))
            log.debug("pipe %s: %d bytes pushed", cmd.pipe_id, sent)
        except errors.MlsmError:
            pass  # logged by push_answer; the puller has its own error
        except Exception:
            log.exception("pipe %s failed", cmd.pipe_id)

    # ---------------------------------------------------------------- answers
    def _manifest(self, cmd: wb.BulkManifest, stop: threading.Event) -> Iterator[bytes]:
        manifest = self.sources.manifest(
            cmd.source, stop, hashes_later=cmd.hashes_later, resume=cmd.resume
        )
        yield encode_manifest(manifest)

    def _listen(self, cmd: wb.BulkListen, stop: threading.Event) -> Iterator[bytes]:
        """Open the direct listener (on the event loop) and answer with its port."""
        assert self.direct is not None and self._loop is not None
        opening = asyncio.run_coroutine_threadsafe(self.direct.listen(cmd), self._loop)
        port = opening.result(timeout=LISTEN_START_S)
        yield msgspec.msgpack.encode(wb.ListenReply(port=port))

    def _serve(self, cmd: wb.BulkServe, stop: threading.Event) -> Iterator[bytes]:
        tree, manifest = self.sources.serving(cmd.source, cmd.manifest_digest, stop)
        with self.sources.source(tree, manifest, cmd.manifest_digest) as source:
            for chunk in source.chunks(cmd.want):
                if stop.is_set():
                    return
                yield chunk
