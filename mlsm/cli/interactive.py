"""``mlsm shell``, ``mlsm session`` and ``mlsm forward``: interactive work inside jobs.

A shell's bytes go CLI <-> master <-> agent over WebSockets (:mod:`mlsm.client.channels`);
the local terminal is raw while it runs and restored on every way out
(:mod:`mlsm.cli.rawterm`); window changes (SIGWINCH) are sent as ``resize``; the CLI exits
with the shell's exit status. A session is a job of kind ``session``: queued and placed
like any job, its command only holds the GPUs; the CLI waits until it runs, then opens
its shell; when the last shell leaves, the master ends it (unless ``--keep``). A forward
listens on a local port and opens one channel per connection; it ends when the job ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
from typing import Any

import click

from mlsm.cli.common import client_from, parse_duration
from mlsm.cli.output import echo
from mlsm.client.channels import (
    ChannelSocket,
    Ended,
    forward_connect_path,
    forward_hold_path,
    open_channel,
    shell_path,
)
from mlsm.errors import Conflict, MlsmError, ValidationError
from mlsm.wire import api
from mlsm.wire import channels as wc

#: Bytes read from the local terminal or a local connection at once.
READ_CHUNK = wc.MAX_DATA_FRAME
#: Seconds between looks at a queued session's state.
SESSION_POLL_S = 1.0
#: What a session runs to hold its GPUs while nobody works in it (GNU and busybox have it).
KEEPER_ARGV = ["tail", "-f", "/dev/null"]
JUPYTER_PORT = 8888
#: Ctrl-D: what the remote terminal reads as the end of input.
EOF_KEY = b"\x04"
#: Bytes of randomness in a session's JupyterLab token.
JUPYTER_TOKEN_BYTES = 24


def _say(text: str) -> None:
    """A status line on stderr (stdout is the shell's)."""
    echo(text, err=True)


# ---------------------------------------------------------------- the shell
async def _shell(core: Any, job_id: int) -> int:
    """Run a shell in job ``job_id`` on this terminal; returns its exit status."""
    from mlsm.cli.rawterm import window_size

    rows, cols = window_size()
    term = os.environ.get("TERM") or "xterm-256color"
    params = {"rows": rows, "cols": cols, "term": term}
    async with open_channel(core, shell_path(job_id), params) as ch:
        return await _terminal(ch)


async def _terminal(ch: ChannelSocket) -> int:
    """Pump the local terminal through ``ch`` until the shell ends."""
    from mlsm.cli.rawterm import window_size

    loop = asyncio.get_running_loop()
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    keys: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1)

    def readable() -> None:
        try:
            data = os.read(stdin, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(stdin)
        keys.put_nowait(data)
        if keys.full():
            loop.remove_reader(stdin)  # held back until the last read was sent

    async def send_keys() -> None:
        while True:
            data = await keys.get()
            if not data:
                # Local input ended (a pipe, a file): the remote terminal's end-of-file
                # key, so the shell reads its end too and exits after what it was given.
                await ch.send(EOF_KEY)
                return
            await ch.send(data)
            loop.add_reader(stdin, readable)

    pending: set[asyncio.Task[None]] = set()

    def resized() -> None:
        rows, cols = window_size()
        t = loop.create_task(ch.control(wc.Resize(rows=rows, cols=cols)))
        pending.add(t)
        t.add_done_callback(pending.discard)

    loop.add_reader(stdin, readable)
    loop.add_signal_handler(signal.SIGWINCH, resized)
    sender = asyncio.create_task(send_keys())
    code = 0
    try:
        while True:
            msg = await ch.recv()
            if msg is None:
                break
            if isinstance(msg, bytes):
                _write_all(stdout, msg)
            elif isinstance(msg, wc.Exit):
                code = msg.code
            elif isinstance(msg, wc.Error):
                raise Conflict(msg.message)
    except Ended:
        pass
    finally:
        loop.remove_reader(stdin)
        loop.remove_signal_handler(signal.SIGWINCH)
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
    return code


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            time.sleep(0)


def run_shell(core: Any, job_id: int) -> int:
    """The shell, with the local terminal raw meanwhile and restored after."""
    from mlsm.cli.rawterm import raw_terminal

    fd = sys.stdin.fileno()
    with raw_terminal(fd):
        return asyncio.run(_shell(core, job_id))


def _end_line(exc: MlsmError, job_id: int) -> MlsmError:
    from mlsm.client.channels import ConnectionLost

    if isinstance(exc, ConnectionLost):
        exc.message = f"{exc.message}: the shell ended; job {job_id} keeps running"
    return exc


@click.command("shell")
@click.argument("job_id", type=int)
@click.pass_context
def shell(ctx: click.Context, job_id: int) -> None:
    """Open an interactive shell inside running job JOB_ID (its owner and admins).

    The shell runs as the job's account, in its working directory and environment
    (CUDA_VISIBLE_DEVICES, venv or conda), or inside its container. The command exits with
    the shell's exit status."""
    with client_from(ctx) as c:
        try:
            code = run_shell(c, job_id)
        except MlsmError as exc:
            raise _end_line(exc, job_id) from None
    sys.exit(code)


# ---------------------------------------------------------------- sessions
def _session_submit(
    gpus: int,
    image: str,
    time_s: float,
    keep: bool,
    jupyter: bool,
    name: str,
    node: str | None,
    venv: str = "",
    conda: str = "",
    jupyter_port: int = JUPYTER_PORT,
) -> tuple[api.JobSubmit, str]:
    token = secrets.token_hex(JUPYTER_TOKEN_BYTES) if jupyter else ""
    argv = (
        [
            "jupyter",
            "lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={jupyter_port}",
            "--ServerApp.port_retries=0",
        ]
        if jupyter
        else KEEPER_ARGV
    )
    spec = api.JobSubmit(
        argv=argv,
        name=name,
        gpus=gpus,
        node=node,
        env_kind="docker" if image else "venv" if venv else "conda" if conda else "process",
        image=image,
        venv=venv,
        conda=conda,
        timeout_s=time_s,
        kind="session",
        session_keep=keep,
        # The token goes in the environment, which only its owner and admins see.
        env={"JUPYTER_TOKEN": token} if token else {},
    )
    return spec, token


def wait_running(c: Any, job_id: int, say: Any = None) -> api.Job:
    """Wait until the session runs, saying why it waits when that changes."""
    last = ""
    while True:
        job: api.Job = c.jobs.get(job_id)
        if job.state == "running":
            return job
        if job.state in api.FINAL_STATES:
            raise Conflict(f"session {job_id} ended before it opened: {job.reason or job.state}")
        line = f"session {job_id} is {job.state}" + (f": {job.reason}" if job.reason else "")
        if line != last and say is not None:
            say(line)
            last = line
        time.sleep(SESSION_POLL_S)


@click.command("session")
@click.option("--gpus", type=click.IntRange(0, 64), default=1, show_default=True)
@click.option("--image", default="", help="Run the session in this container image.")
@click.option("--time", "time_", default="", help="Time limit (e.g. 4h); default: the lab's.")
@click.option("--keep", is_flag=True, help="Keep the session when the shell leaves.")
@click.option("--jupyter", is_flag=True, help="Run JupyterLab in it (when the env has it).")
@click.option(
    "--jupyter-port", type=click.IntRange(1, 65535), default=JUPYTER_PORT, show_default=True
)
@click.option("--venv", default="", help="Run in this venv (an absolute path on the node).")
@click.option("--conda", default="", help="Run in this conda environment.")
@click.option("--name", default="session", show_default=True)
@click.option("--node", default=None, help="Run on this node.")
@click.pass_context
def session(
    ctx: click.Context,
    gpus: int,
    image: str,
    time_: str,
    keep: bool,
    jupyter: bool,
    jupyter_port: int,
    venv: str,
    conda: str,
    name: str,
    node: str | None,
) -> None:
    """Allocate GPUs through the queue and open a shell there when they are yours.

    The session waits in the queue like any job (caps, fair share, reasons) and gets the
    lab's default time limit unless --time says otherwise. Leaving the shell ends the
    session unless --keep (return with `mlsm shell ID`, end with `mlsm cancel ID`)."""
    time_s = parse_duration(time_) if time_ else 0.0
    if time_ and time_s <= 0:
        raise ValidationError("--time must be a positive duration")
    if sum(map(bool, (image, venv, conda))) > 1:
        raise ValidationError("a session runs in one environment: --image, --venv or --conda")
    spec, token = _session_submit(
        gpus, image, time_s, keep, jupyter, name, node, venv, conda, jupyter_port
    )
    with client_from(ctx) as c:
        reply = c.jobs.submit(spec)
        job_id = reply.ids[0]
        _say(f"session {job_id} queued ({gpus} GPU{'s' if gpus != 1 else ''})")
        job = wait_running(c, job_id, _say)
        gpu_text = ",".join(str(g) for g in job.gpu_indices) or "none"
        _say(f"session {job_id} runs on {job.node} (GPUs {gpu_text})")
        if jupyter:
            _say(
                f"JupyterLab: run `mlsm forward {job_id} {jupyter_port}` on your laptop, then "
                f"open http://127.0.0.1:{jupyter_port}/lab?token={token}"
            )
        try:
            code = run_shell(c, job_id)
        except MlsmError as exc:
            raise _end_line(exc, job_id) from None
        if keep:
            _say(
                f"session {job_id} keeps running: `mlsm shell {job_id}` to return, "
                f"`mlsm cancel {job_id}` to end it"
            )
        else:
            _say(f"session {job_id} ended")
    sys.exit(code)


# ---------------------------------------------------------------- forwards
def _parse_local(local: str | None, port: int) -> tuple[str, int]:
    if not local:
        return "127.0.0.1", port
    host, sep, p = local.rpartition(":")
    try:
        lport = int(p)
    except ValueError:
        raise ValidationError(f"LOCAL {local!r}: expected PORT or HOST:PORT") from None
    if not 0 <= lport <= 65535:
        raise ValidationError(f"LOCAL port {lport} is not a TCP port")
    return (host.strip("[]") if sep and host else "127.0.0.1"), lport


async def _forward(core: Any, job_id: int, port: int, host: str, lport: int) -> None:
    conns: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with open_channel(core, forward_connect_path(job_id, port)) as ch:
                await _splice_tcp(ch, reader, writer)
        except MlsmError as exc:
            _say(f"mlsm: a connection to port {port} failed: {exc.message}")
        finally:
            writer.close()

    def track(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        t = asyncio.create_task(serve(reader, writer))
        conns.add(t)
        t.add_done_callback(conns.discard)

    local = f"{host}:{lport}"
    async with open_channel(core, forward_hold_path(job_id, port), {"local": local}) as hold:
        server = await asyncio.start_server(track, host, lport)
        bound = server.sockets[0].getsockname()
        _say(f"forwarding {bound[0]}:{bound[1]} -> port {port} of job {job_id} (Ctrl-C to stop)")
        try:
            while (msg := await hold.recv()) is not None:
                if isinstance(msg, wc.Error):
                    raise Conflict(msg.message)
        finally:
            server.close()
            for t in list(conns):
                t.cancel()
            await asyncio.gather(*conns, return_exceptions=True)


async def _splice_tcp(
    ch: ChannelSocket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    async def up() -> None:
        while data := await reader.read(READ_CHUNK):
            await ch.send(data)
        await ch.control(wc.Eof())

    sender = asyncio.create_task(up())
    try:
        while (msg := await ch.recv()) is not None:
            if isinstance(msg, bytes):
                writer.write(msg)
                await writer.drain()
            elif isinstance(msg, wc.Eof) and writer.can_write_eof():
                writer.write_eof()
            elif isinstance(msg, wc.Error):
                raise Conflict(msg.message)
    except Ended:
        pass
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)


@click.command("forward")
@click.argument("job_id", type=int)
@click.argument("port", type=click.IntRange(1, 65535))
@click.argument("local", required=False)
@click.pass_context
def forward(ctx: click.Context, job_id: int, port: int, local: str | None) -> None:
    """Forward local port LOCAL ([HOST:]PORT, default 127.0.0.1:PORT) to PORT inside JOB_ID.

    Each connection is relayed through the master (nothing listens on the node); many may
    be open at once. The forward ends when the job ends, or with Ctrl-C."""
    host, lport = _parse_local(local, port)
    with client_from(ctx) as c:
        try:
            asyncio.run(_forward(c, job_id, port, host, lport))
        except OSError as exc:
            raise ValidationError(f"cannot listen on {host}:{lport}: {exc.strerror}") from None
    echo(f"forward to job {job_id} ended")
