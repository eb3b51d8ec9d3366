"""The crash-proof supervisor between the agent and one job process (stdlib only).

Started by :mod:`agent.runtimes.process` as::

    python -I -S shim.py JOB_DIR [--exe PATH] -- ARGV...

in a new session, already running as the job's Unix account, with stdin ``/dev/null``,
stdout+stderr appended to ``JOB_DIR/output.log``, and SIGTERM/SIGINT/SIGHUP blocked (so a
stop that arrives while the interpreter is still starting cannot kill the shim). It
spawns ``ARGV`` (executing ``PATH`` when given, else ``ARGV[0]`` as is) as its only child,
in the same session and process group, so that a SIGTERM to the process group reaches the
job while the shim itself ignores it and lives on to record the outcome. When the child
ends it writes ``JOB_DIR/exit.json`` atomically (tmp + rename)::

    {"exit_code": int | null, "signal": int | null, "ended_at": float, "error": str?}

``error`` is only present when the child could not be executed at all (exit_code 127).

It never touches the agent's pipes, so it survives the agent being kill -9'd. Start-up is
kept cheap: no ``site``, no imports beyond ``os``, ``sys``, ``_signal`` and ``time``.
"""

import os
import sys
import time

try:  # the C module: `signal` itself would import enum, which triples our start-up time
    import _signal as signal
except ImportError:  # not CPython
    import signal  # type: ignore[no-redef]

EXIT_NAME = "exit.json"
STOP_NAME = "stop.json"  # written by the agent before it signals a stop
_IGNORED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Python ignores SIGPIPE and SIGXFSZ itself; ignored dispositions survive exec, so the job
# gets them (and the signals the shim ignores) reset to their defaults.
_RESET = (*_IGNORED, signal.SIGPIPE, signal.SIGXFSZ)


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


def write_exit(job_dir: str, exit_code: int | None, sig: int | None, error: str = "") -> None:
    body = f'{{"exit_code": {_num(exit_code)}, "signal": {_num(sig)}, "ended_at": {time.time()!r}'
    if error:
        body += ', "error": ' + _json_str(error)
    body += "}\n"
    path = os.path.join(job_dir, EXIT_NAME)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, body.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def main(args: list[str]) -> int:
    if len(args) < 3 or "--" not in args:
        sys.stderr.write("usage: shim.py JOB_DIR [--exe PATH] -- ARGV...\n")
        return 2
    sep = args.index("--")
    job_dir, opts, argv = args[0], args[1:sep], args[sep + 1 :]
    exe = argv[0] if argv else ""
    if len(opts) == 2 and opts[0] == "--exe":
        exe = opts[1]
    elif opts or not argv:
        sys.stderr.write("usage: shim.py JOB_DIR [--exe PATH] -- ARGV...\n")
        return 2

    # The agent starts us with these blocked, so a SIGTERM sent before this point is held
    # pending; ignoring discards it, and only then do we unblock.
    for s in _IGNORED:
        signal.signal(s, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _IGNORED)
    try:
        pid = os.posix_spawn(exe, argv, os.environ, setsigdef=_RESET, setsigmask=())
    except OSError as e:
        msg = f"could not execute {exe}: {e.strerror or e}"
        sys.stderr.write("[mlsm] " + msg + "\n")
        write_exit(job_dir, 127, None, msg)
        return 0
    # A stop signalled while we were starting hit no job (and we discarded it): the agent
    # writes STOP_NAME before it signals, so looking after the spawn never misses one.
    if os.path.exists(os.path.join(job_dir, STOP_NAME)):
        try:
            os.killpg(os.getpgrp(), signal.SIGTERM)
        except OSError:
            pass
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        write_exit(job_dir, None, -code)
    else:
        write_exit(job_dir, code, None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
