"""The agent's side of a relay pipe: run a command's answer in a worker thread and stream
it to the master as the body of ``POST /agent/v1/bulk/push/{pipe_id}``.

Every pipe command (``BulkServe``, ``BulkManifest``, and later listings of a job's outputs)
comes down to :func:`push_answer` with a ``produce(stop)`` function that returns the answer
as an iterator of byte chunks. ``produce`` runs in a thread (it reads and hashes files); its
chunks pass through a queue of :data:`PUSH_QUEUE` chunks to the upload, which wraps them in
pipe records (:mod:`mlsm.wire.bulk`): memory is a few chunks whatever the answer's size,
and a master that reads slowly holds the thread back. An :class:`~mlsm.errors.MlsmError`
raised by ``produce`` (a missing dataset, a changed tree) ends the answer with an ERROR
record carrying its code, so the puller gets the same error; any other exception becomes an
``internal`` error (the details go to the agent's log only).

When the master answers the push with an error (the puller went away, the pipe timed out)
or the connection breaks, the upload stops, ``stop`` is set and the thread ends at its next
chunk: nothing more is read from disk for that answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator

from agent.link import MasterLink
from mlsm import errors
from mlsm.wire.bulk import PipeKind, encode_error, pipe_header, pipe_record

log = logging.getLogger("mlsm.agent.bulk")

PUSH_QUEUE = 4  # chunks between the producing thread and the upload
PUT_WAIT_S = 0.2  # how often a producer blocked on a full queue checks ``stop``

Produce = Callable[[threading.Event], Iterator[bytes]]
_END = object()


async def push_answer(link: MasterLink, pipe_id: str, produce: Produce) -> int:
    """Push ``produce``'s answer into relay pipe ``pipe_id``; the data bytes sent. Raises
    the :mod:`mlsm.errors` class of a refused or broken push."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue(PUSH_QUEUE)
    stop = threading.Event()
    sent = 0

    def put(item: object) -> bool:
        fut = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while True:
            try:
                fut.result(timeout=PUT_WAIT_S)
                return True
            except concurrent.futures.TimeoutError:
                if stop.is_set():
                    fut.cancel()
                    return False

    def run() -> None:
        try:
            for chunk in produce(stop):
                if stop.is_set() or not put(chunk):
                    return
            put(_END)
        except errors.MlsmError as exc:
            put(exc)
        except Exception as exc:
            log.exception("pipe %s: the answer failed", pipe_id)
            put(errors.MlsmError(f"the agent failed to answer: {type(exc).__name__}"))

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        while True:
            item = await queue.get()
            if item is _END:
                yield pipe_record(PipeKind.END)
                return
            if isinstance(item, errors.MlsmError):
                yield encode_error(item)
                return
            assert isinstance(item, bytes | memoryview)
            yield pipe_header(PipeKind.DATA, len(item))
            yield bytes(item) if isinstance(item, memoryview) else item
            sent += len(item)

    worker = asyncio.ensure_future(asyncio.to_thread(run))
    try:
        await link.push(pipe_id, body())
    except errors.MlsmError as exc:
        log.info("pipe %s: push stopped after %d bytes (%s)", pipe_id, sent, exc.message)
        raise
    finally:
        stop.set()
        while not queue.empty():  # unblock a producer waiting on a full queue
            queue.get_nowait()
        await asyncio.shield(worker)
    return sent
