"""Shells and port forwards into running jobs, relayed between two WebSockets.

A person's tool opens a WebSocket to the master (``/api/v1/jobs/{id}/shell``, or
``.../forwards/{port}/connect`` for one forwarded TCP connection); :meth:`Channels.open`
checks who may (the job's owner and admins: another member is refused with 403, and the
refusal is audited), that the job runs on a node that is online and whose agent knows
``open_channel``, then sends the node :class:`~mlsm.wire.channels.OpenChannel` over its
command long-poll and waits up to ``channel_open_timeout`` for the agent to dial
``/agent/v1/channels/{channel_id}`` (:meth:`Channels.attach`: only the node the channel
was opened for may take it, and only once). :meth:`Channel.splice` then copies messages
both ways until either side ends.

Bounded: each direction holds one message at a time (at most
:data:`~mlsm.wire.channels.MAX_MESSAGE` bytes, which uvicorn enforces as the socket's
``ws_max_size``) and reads the next only once the other side took it, so a slow reader
holds back the writer through TCP, never the master's memory. Control messages from a
person are checked: only ``resize`` and ``eof`` pass.

Ends: the job ends (its node reports it, or the node is lost) -> its channels are closed
with a message saying so; the master stops -> uvicorn closes every socket (the CLI says
the master went away; the job keeps running); the agent's side ends -> the person's side
is told the shell's exit status. A session (``kind="session"``) whose last shell leaves is
ended unless it was started with ``--keep``. Every shell opened and closed is audited
(``job.shell.open`` / ``job.shell.close``), and so is every forward held open
(``job.forward.open`` / ``job.forward.close``).
"""

from __future__ import annotations

from mlsm.master.services.channels.relay import Channel, Socket
from mlsm.master.services.channels.service import AuditFn, Channels, ForwardHold

__all__ = ["AuditFn", "Channel", "Channels", "ForwardHold", "Socket"]
