"""A job's files on its node, and the only way the agent touches them.

The agent usually runs as root and a job must never steer what root reads or writes. Two
directories per job:

* ``<agent data>/jobs/<id>/`` (:func:`prepare_job_dir`): the job's own tree, its default
  working directory and ``MLSM_OUTPUT_DIR``, owned by the job's account, mode 0750. It
  holds ``output.log``, which the job writes through the descriptor it inherits (or the
  container log follower writes); the job can also replace it, so the agent opens it only
  through :func:`open_regular`: no link followed, no blocking on a FIFO, only a regular
  file with one link that the job's account owns (a hard link to another file, or a file
  someone else owns, is refused). The agent never reads or writes anything else in it.
* ``<agent data>/control/<id>/`` (:func:`control_dir`): the agent's own bookkeeping,
  ``exit.json`` (written by the job's supervisor, which stays the agent's account: see
  :mod:`agent.runtimes.process.shim`) and ``stop.json``, in a directory private to the agent
  (0700) that no job can write.

The agent's data dir must be traversable for a job's account to reach its tree: an agent
that runs jobs as other accounts creates it (and ``jobs/``) 0711 (others may pass through,
not list), otherwise 0700. The agent never changes the mode of a directory it did not just
create, so an existing data dir is never widened: if it is not traversable, a job that must
run as another account is refused with what to do (:func:`prepare_job_dir`). Every file the
agent keeps in its data dir is 0600 and every directory of its own 0700, so traversing
reveals nothing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

from agent.runtimes.accounts import Account, data_dir_mode
from agent.runtimes.base import LOG_NAME, RuntimeContext, RuntimeStartError
from mlsm.errors import MlsmError
from mlsm.wire.agent import JobSpec

log = logging.getLogger("mlsm.agent")

SHARED_DIR_MODE = 0o711  # others may traverse to their own tree, not list
PRIVATE_DIR_MODE = 0o700
JOB_DIR_MODE = 0o750  # the job's account, and its group may read outputs
LOG_MODE = 0o640
CONTROL_FILE_MODE = 0o600
MAX_CONTROL_JSON = 64 * 1024  # exit.json / stop.json are a few hundred bytes
_SAFE = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class UnsafeFileError(OSError):
    """A path the agent was about to use is a link, a FIFO, a device, has other names or
    is not the expected owner's: refused instead of followed."""


def control_dir(agent_data: Path, job_id: int) -> Path:
    return Path(agent_data) / "control" / str(job_id)


# ---------------------------------------------------------------- opening files
def _check_fd(fd: int, path: Path | str, owner: int | None) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFileError(errno.EINVAL, "not a regular file", str(path))
    if st.st_nlink != 1:
        raise UnsafeFileError(errno.EMLINK, "a file with other names (a hard link)", str(path))
    if owner is not None and st.st_uid != owner:
        raise UnsafeFileError(errno.EPERM, f"owned by uid {st.st_uid}", str(path))
    return st


def open_regular(
    path: Path | str,
    flags: int,
    mode: int = CONTROL_FILE_MODE,
    *,
    owner: int | None = None,
    dir_fd: int | None = None,
) -> int:
    """``os.open`` that never follows a final symlink, never blocks on a FIFO, and returns
    a descriptor only for a regular file with one link (owned by ``owner`` when given)."""
    try:
        fd = os.open(path, flags | _SAFE, mode, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeFileError(e.errno, "refusing to follow a symbolic link", str(path)) from e
        raise
    try:
        _check_fd(fd, path, owner)
        os.set_blocking(fd, True)  # non-blocking only mattered for the open of a FIFO
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: Path | str, limit: int, offset: int = 0, owner: int | None = None) -> bytes:
    """Up to ``limit`` bytes of a regular file from ``offset``; b"" when it is missing."""
    try:
        fd = open_regular(path, os.O_RDONLY, owner=owner)
    except FileNotFoundError:
        return b""
    try:
        return os.pread(fd, limit, offset)
    finally:
        os.close(fd)


def file_size(path: Path | str) -> int:
    """Size of a regular file (0 when missing or not a regular file); never follows a link."""
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def read_json(path: Path | str) -> dict[str, Any] | None:
    try:
        raw = read_regular(path, MAX_CONTROL_JSON)
        data = json.loads(raw) if raw else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically (tmp + rename) write ``data``; the tmp name is created exclusively, so a
    planted ``stop.json.tmp`` link is replaced rather than written through."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # unlink never follows a link
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _SAFE, CONTROL_FILE_MODE)
    try:
        os.write(fd, json.dumps(data).encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def append_line(log_path: Path, line: str, owner: int | None = None) -> None:
    """Append an mlsm line to a job's log, on a fresh line; quiet when it cannot (a log the
    job replaced by a link, a FIFO or a file not its own is left alone)."""
    try:
        fd = open_regular(log_path, os.O_RDWR | os.O_APPEND, owner=owner)
    except OSError:
        return
    try:
        size = os.fstat(fd).st_size
        prefix = b""
        if size and os.pread(fd, 1, size - 1) != b"\n":
            prefix = b"\n"
        os.write(fd, prefix + line.encode() + b"\n")
    finally:
        os.close(fd)


def tail_contains(log_path: Path, needle: bytes, window: int, owner: int | None = None) -> bool:
    try:
        fd = open_regular(log_path, os.O_RDONLY, owner=owner)
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        return needle in os.pread(fd, window, max(0, size - window))
    finally:
        os.close(fd)


def remove_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # unlink never follows: a planted link is removed, not its target


# ---------------------------------------------------------------- directories
def _mkdir(path: Path, mode: int) -> bool:
    """Create ``path`` with exactly ``mode`` (whatever the umask); False if it existed."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return False
    os.chmod(path, mode)  # only a directory this call created: the umask may have cut it
    return True


def _own_dir(path: Path) -> None:
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeFileError(errno.ENOTDIR, "not a directory (a link?)", str(path))
    if st.st_uid != os.geteuid():
        raise UnsafeFileError(errno.EPERM, f"owned by uid {st.st_uid}", str(path))


def ensure_agent_dir(ctx: RuntimeContext) -> Path:
    """The agent's data dir: created traversable (0711) when jobs run as other accounts,
    else private (0700); an existing one is left as it is."""
    data = Path(ctx.agent_data)
    if not data.exists():
        data.parent.mkdir(parents=True, exist_ok=True)
        _mkdir(data, data_dir_mode(ctx.runs_as_root, ctx.single_user))
    return data


def ensure_control_dir(ctx: RuntimeContext, job_id: int) -> Path:
    """``<agent data>/control/<id>/``, private to the agent; refused if any part of it is
    not the agent's own real directory."""
    ensure_agent_dir(ctx)
    path = control_dir(ctx.agent_data, job_id)
    for d in (path.parent, path):
        _mkdir(d, PRIVATE_DIR_MODE)
        _own_dir(d)
    return path


def ensure_private_dir(path: Path) -> Path:
    """A directory of the agent's own (it and every missing parent created 0700)."""
    missing = []
    p = Path(path)
    while not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        _mkdir(d, PRIVATE_DIR_MODE)
    _own_dir(path)
    return path


def unreachable_parent(path: Path) -> Path | None:
    """The first directory on the way to ``path`` that other accounts cannot traverse."""
    p = Path(os.path.abspath(path))
    for d in [*reversed(p.parents), p]:
        try:
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return d
        except OSError:
            return d
    return None


def prepare_job_dir(
    ctx: RuntimeContext, job_dir: Path, acct: Account, *, reach_by_path: bool = True
) -> None:
    """``job_dir`` (``<agent data>/jobs/<id>/``) made the job's: owned by its account, 0750
    when created; an existing one (a retry) keeps its contents and mode.

    With ``reach_by_path`` (a process job), raises RuntimeStartError when the job's account
    could not reach it from ``/``; a container gets it bound by the engine instead.
    """
    job_dir = Path(job_dir)
    ensure_agent_dir(ctx)
    root = job_dir.parent
    if not root.exists():
        _mkdir(root, SHARED_DIR_MODE if acct.switch else PRIVATE_DIR_MODE)
    _own_dir(root)  # nobody else can create or swap entries in it
    if acct.switch and reach_by_path:
        blocked = unreachable_parent(root)
        if blocked is not None:
            raise RuntimeStartError(
                f"job directory {job_dir} is not reachable by Unix user {acct.name}: "
                f"{blocked} is not traversable by other accounts (mode "
                f"{stat.S_IMODE(os.stat(blocked).st_mode):04o}); make it traversable "
                "(chmod o+x; the agent's data dir: 0711, e.g. StateDirectoryMode=0711) "
                "or move the agent's data dir"
            )
    _mkdir(job_dir, JOB_DIR_MODE)
    try:
        fd = os.open(job_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise RuntimeStartError(f"job directory {job_dir} is not a directory: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if acct.switch and (st.st_uid, st.st_gid) != (acct.uid, acct.gid):
            os.fchown(fd, acct.uid, acct.gid)
    finally:
        os.close(fd)


def code_workdir(ctx: RuntimeContext, spec: JobSpec, job_dir: Path, acct: Account) -> Path | None:
    """Where a job that ships code or names a project runs, set up (its copy of the code
    written for its account: see :mod:`agent.codecache`); None for any other job."""
    if not (spec.code or spec.project):
        return None
    if ctx.code is None:
        raise RuntimeStartError("this agent cannot run jobs in shipped code or projects")
    if spec.project:
        user, _, name = spec.project.partition("/")
        path = ctx.code.project_path(user, name)
        if not os.path.isdir(path):
            raise RuntimeStartError(f"project {spec.project} is not on this node")
        return path
    try:
        return ctx.code.materialize(spec.code, job_dir, acct)
    except (OSError, MlsmError) as e:
        raise RuntimeStartError(f"cannot write the job's code into {job_dir}: {e}") from e


def open_job_log(job_dir: Path, uid: int | None, gid: int | None) -> int:
    """The job's ``output.log``, open for appending (and reading), owned by ``uid:gid`` (the
    job's account; None: whoever owns it, for records of an older agent).

    A log left by an earlier attempt (or run) is reused when it is still a regular file of
    the job's own; anything else found under that name (a link, a FIFO, a hard link, another
    account's file) is removed, never followed, and a fresh log started.
    """
    dfd = os.open(job_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for _ in range(2):
            try:
                fd = os.open(
                    LOG_NAME, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | _SAFE, LOG_MODE,
                    dir_fd=dfd,
                )  # fmt: skip
            except FileExistsError:
                try:
                    return open_regular(LOG_NAME, os.O_RDWR | os.O_APPEND, owner=uid, dir_fd=dfd)
                except OSError as e:
                    log.warning("%s/%s: %s; starting a fresh log", job_dir, LOG_NAME, e)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(LOG_NAME, dir_fd=dfd)
                    continue
            try:
                os.set_blocking(fd, True)
                if uid is not None and os.fstat(fd).st_uid != uid:
                    os.fchown(fd, uid, -1 if gid is None else gid)
            except BaseException:
                os.close(fd)
                raise
            return fd
        raise RuntimeStartError(f"cannot create the job's log in {job_dir}")
    finally:
        os.close(dfd)
