"""The crash-proof supervisor between the agent and one job process (stdlib only).

Started by :mod:`agent.runtimes.process.launch` as::

    python -I -S shim.py CONTROL_DIR [--uid U --gid G --groups G1,G2 --user NAME]
                                     [--cwd DIR] [--need WHAT=PATH]...
                                     [--fence CONTACT_FILE --grace S] -- ARGV...

in a new session, as the agent's own account, with stdin ``/dev/null``, stdout+stderr
appended to the job's ``output.log`` (a descriptor the agent opened), and
SIGTERM/SIGINT/SIGHUP blocked (so a stop that arrives while the interpreter is still
starting cannot kill the shim). It forks the job as its only child, in the same session and
process group, so that a SIGTERM to the process group reaches the job while the shim itself
ignores it and lives on to record the outcome. The child, before it executes ``ARGV``
(``ARGV[0]`` searched in ``PATH`` unless it holds a ``/``):

* drops to the job's account (``--uid/--gid/--groups``: supplementary groups, then gid,
  then uid), so the job never holds the agent's privileges while the shim keeps them;
* changes to ``--cwd`` *as that account*, and checks every ``--need`` path is usable by it,
  so what it may not reach is refused in the same words whether or not it exists.

The shim stays the agent's account, so it records the end in ``CONTROL_DIR/exit.json``,
a directory the job cannot write, atomically (tmp + rename)::

    {"exit_code": int | null, "signal": int | null, "ended_at": float, "error": str?}

``error`` is only present when the job could not be started at all (exit_code 127); the
child tells the shim why through a close-on-exec pipe.

With ``--fence`` (a job the master retries elsewhere if the node is lost, see
:mod:`agent.fence`) it keeps the lease fence even when the agent is dead: once the agent's
``CONTACT_FILE`` says the node has been out of the master's reach for longer than the lease
(with a quarter's slack: the agent rewrites the file at most every quarter lease), it
records the stop in ``STOP_NAME`` (as the agent would: ``end_kind`` ``lost``), sends the
job's process group SIGTERM, and SIGKILL after ``--grace`` seconds.

It never touches the agent's pipes, so it survives the agent being kill -9'd. Start-up is
kept cheap: no ``site``, no imports beyond ``os``, ``sys``, ``_signal`` and ``time``.
"""

import os
import sys
import time

# mypy honours any name TYPE_CHECKING; importing `typing` for it would slow start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:  # typeshed has no `_signal`; `signal` re-exports the same functions
    import signal
else:
    try:  # the C module: `signal` itself would import enum, which triples our start-up time
        import _signal as signal
    except ImportError:  # not CPython
        import signal

EXIT_NAME = "exit.json"
STOP_NAME = "stop.json"  # written by the agent before it signals a stop
_IGNORED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Python ignores SIGPIPE and SIGXFSZ itself; ignored dispositions survive exec, so the job
# gets them (and the signals the shim ignores) reset to their defaults.
_RESET = (*_IGNORED, signal.SIGPIPE, signal.SIGXFSZ)
_USAGE = (
    "usage: shim.py CONTROL_DIR [--uid U --gid G --groups G,... --user NAME] [--cwd DIR]"
    " [--need WHAT=PATH]... [--fence CONTACT_FILE --grace S] -- ARGV...\n"
)
_MAX_ERROR = 2048
FENCE_CHECK_S = 1.0  # how often a fenced wait reads the agent's contact file
FENCE_SLACK = 1.25  # of the lease: the agent rewrites the file at most every quarter lease
#: Bytes of the exit record taken before the job starts: a record with the longest error
#: (``_MAX_ERROR`` bytes, each escaped as ``\\uXXXX`` at worst) fits.
EXIT_RESERVE = 6 * _MAX_ERROR + 256


def _json_str(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _num(v: int | None) -> str:
    return "null" if v is None else str(int(v))


def reserve_exit(control_dir: str) -> None:
    """Take the room of the exit record before the job starts (the agent calls it): a disk
    the job fills meanwhile cannot then keep :func:`write_exit` from recording its end."""
    tmp = os.path.join(control_dir, EXIT_NAME + ".tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        _write_all(fd, b" " * EXIT_RESERVE)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_exit(control_dir: str, exit_code: int | None, sig: int | None, error: str = "") -> None:
    body = f'{{"exit_code": {_num(exit_code)}, "signal": {_num(sig)}, "ended_at": {time.time()!r}'
    if error:
        body += ', "error": ' + _json_str(error)
    body += "}\n"
    data = body.encode()
    path = os.path.join(control_dir, EXIT_NAME)
    tmp = path + ".tmp"
    try:  # the room reserved at the start: overwritten in place, then cut to size
        fd = os.open(tmp, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        reserved = len(data) <= os.fstat(fd).st_size
        if not reserved:
            os.close(fd)
    except FileNotFoundError:
        reserved = False
    if not reserved:  # none (an older agent started us) or too small: a fresh file
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600)
    try:
        _write_all(fd, data)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class _Opts:
    """The parsed command line (a plain class: `dataclasses` would cost start-up time)."""

    __slots__ = ("argv", "cwd", "dir", "fence", "gid", "grace", "groups", "need", "uid", "user")

    def __init__(self, control_dir: str, argv: list[str]) -> None:
        self.dir = control_dir
        self.argv = argv
        self.need: list[tuple[str, str]] = []
        self.user = ""
        self.uid: int | None = None
        self.gid: int | None = None
        self.groups: list[int] = []
        self.cwd = ""
        self.fence = ""
        self.grace = 10.0


def _parse(args: list[str]) -> _Opts | None:
    if len(args) < 3 or "--" not in args:
        return None
    sep = args.index("--")
    opts, argv = args[1:sep], args[sep + 1 :]
    if not argv or len(opts) % 2:
        return None
    out = _Opts(args[0], argv)
    for key, value in zip(opts[::2], opts[1::2], strict=True):
        if key == "--uid":
            out.uid = int(value)
        elif key == "--gid":
            out.gid = int(value)
        elif key == "--groups":
            out.groups = [int(g) for g in value.split(",") if g]
        elif key == "--user":
            out.user = value
        elif key == "--cwd":
            out.cwd = value
        elif key == "--fence":
            out.fence = value
        elif key == "--grace":
            out.grace = float(value)
        elif key == "--need" and "=" in value:
            what, path = value.split("=", 1)
            out.need.append((what, path))
        else:
            return None
    if (out.uid is None) != (out.gid is None):
        return None
    return out


def _child(o: _Opts, report: int) -> None:
    """In the forked child: become the job, or tell the shim why not; never returns."""
    who = o.user or str(os.getuid())
    msg = ""
    try:
        for s in _RESET:
            signal.signal(s, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        if o.uid is not None and o.gid is not None:
            os.setgroups(o.groups)
            os.setgid(o.gid)
            os.setuid(o.uid)
            if os.getuid() != o.uid or os.geteuid() != o.uid:
                raise PermissionError("could not drop privileges")
        cwd = o.cwd
        if cwd:
            try:
                os.chdir(cwd)
            except OSError:
                msg = f"workdir {cwd} does not exist or is not accessible to Unix user {who}"
                raise
        for what, path in o.need:
            if not os.access(path, os.X_OK):
                msg = f"{what} does not exist or is not usable by Unix user {who}"
                raise FileNotFoundError(path)
        argv = o.argv
        try:
            _exec(argv)
        except FileNotFoundError:
            msg = f"command not found: {argv[0]}"
            raise
        except PermissionError:
            msg = f"command {argv[0]} is not executable by Unix user {who}"
            raise
    except BaseException as e:
        if not msg:
            msg = f"could not execute {o.argv[0]}: {getattr(e, 'strerror', None) or e}"
    try:
        os.write(report, msg.encode("utf-8", "replace")[:_MAX_ERROR])
    finally:
        os._exit(127)


def _exec(argv: list[str]) -> None:
    """``execvp``, by hand: ``os.execvpe`` imports modules, which the job's account may not
    be able to read once the child has dropped to it."""
    env = os.environ
    if "/" in argv[0]:
        os.execve(argv[0], argv, env)  # noqa: S606 (an argv, never a shell)
    denied: OSError | None = None
    for d in (env.get("PATH") or os.defpath).split(":"):
        try:
            os.execve(os.path.join(d or ".", argv[0]), argv, env)  # noqa: S606
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError as e:
            denied = e  # as execvp: keep looking, report "permission denied" if nothing runs
    if denied is not None:
        raise denied
    raise FileNotFoundError(argv[0])


def main(args: list[str]) -> int:
    o = _parse(args)
    if o is None:
        sys.stderr.write(_USAGE)
        return 2
    # The agent starts us with these blocked, so a SIGTERM sent before this point is held
    # pending; ignoring discards it, and only then do we unblock.
    for s in _IGNORED:
        signal.signal(s, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _IGNORED)
    if o.fence:  # the fenced wait takes child exits with sigtimedwait (the child clears it)
        signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGCHLD,))
    rd, wr = os.pipe()  # close-on-exec: a successful exec closes the child's end
    pid = os.fork()
    if pid == 0:
        os.close(rd)
        _child(o, wr)
    os.close(wr)
    chunks = []
    while True:
        chunk = os.read(rd, _MAX_ERROR)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(rd)
    error = b"".join(chunks).decode("utf-8", "replace")
    if error:
        os.waitpid(pid, 0)
        sys.stderr.write("[mlsm] " + error + "\n")
        write_exit(o.dir, 127, None, error)
        return 0
    # A stop signalled while we were starting hit no job (and we discarded it): the agent
    # writes STOP_NAME before it signals, so looking after the exec never misses one.
    if os.path.exists(os.path.join(o.dir, STOP_NAME)):
        try:
            os.killpg(os.getpgrp(), signal.SIGTERM)
        except OSError:
            pass
    if o.fence:
        status = _wait_fenced(o, pid)
    else:
        _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        write_exit(o.dir, None, -code)
    else:
        write_exit(o.dir, code, None)
    return 0


def _write_file(path: str, text: str) -> None:
    """``text`` into ``path`` atomically (a temporary file, then a rename)."""
    tmp = path + ".shim.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600)
        try:
            _write_all(fd, text.encode("utf-8", "replace"))
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        pass  # a full disk: the stop still happens, reported as a signal


def _away(path: str) -> tuple[float, float] | None:
    """Seconds since the agent's latest contact with the master, and the lease (None:
    unknown, e.g. an agent that never reached the master yet)."""
    try:
        with open(path) as f:
            wall, lease = f.read().split()
        return time.time() - float(wall), float(lease)
    except (OSError, ValueError):
        return None


def _wait_fenced(o: _Opts, pid: int) -> int:
    """``waitpid`` for the job, stopping it once the node has been out of the master's
    reach past the lease (see the module docstring). Its wait status."""
    kill_at = 0.0
    while True:
        signal.sigtimedwait((signal.SIGCHLD,), FENCE_CHECK_S)
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            return status
        now = time.time()
        if not kill_at:
            seen = _away(o.fence)
            if seen is None or seen[0] <= seen[1] * FENCE_SLACK:
                continue
            kill_at = now + o.grace
            stop = os.path.join(o.dir, STOP_NAME)
            if os.path.exists(stop):
                continue  # the agent stopped it already; only its kill may be missing
            reason = (
                f"stopped: no contact with the master for {seen[0]:.0f} s (lease "
                f"{seen[1]:.0f} s); the master runs this job again elsewhere"
            )
            _write_file(
                stop,
                f'{{"reason": {_json_str(reason)}, "end_kind": "lost", "kill_at": {kill_at}}}',
            )
            try:
                os.killpg(os.getpgrp(), signal.SIGTERM)
            except OSError:
                pass
        elif now >= kill_at:
            os.killpg(os.getpgrp(), signal.SIGKILL)  # the shim ends with the job's group


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
