"""Which Unix account a job runs as: one rule for every runtime (process, venv, conda, docker).

An agent that runs as root *switches* accounts (unless it was started ``--single-user``):

1. the account the master mapped the job's user to (``JobSpec.unix_user``), which must
   exist on this node;
2. else the account named like the job's mlsm user (``JobSpec.user``), when it exists here
   and is a regular login account (uid within ``UID_MIN``..``UID_MAX`` of
   ``/etc/login.defs``, not the overflow account ``nobody``): a lab user named ``backup`` or
   ``www-data`` never runs as the system account of that name;
3. else the agent's ``--default-unix-user``, an account the node's admin chose;
4. else, for a job of an mlsm admin (``JobSpec.admin``), the agent's own account (root),
   said in the log header; ``mlsm nodes`` warns about nodes where that can happen;
5. else a member's job does not start. The master knows which accounts a node has
   (:func:`regular_accounts`, sent in the node's info) and keeps such a job queued with a
   reason that says what an admin must do, so this is only reached when the node changed
   meanwhile.

uid 0 is never used for a member's job, and never through a mapping or the default
account, whatever they name (an alias of root such as ``toor`` included).

An agent that does not switch (it is not root, or it runs ``--single-user`` on a one-person
machine such as the embedded local service) runs every job as its own account, and says so
in the log header and in its node info (``NodeInfo.job_account``), which ``mlsm nodes``
shows as a warning: users' jobs are not separated there.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from functools import cache

from agent.runtimes.base import RuntimeContext, RuntimeStartError
from mlsm.policy import no_account_reason
from mlsm.wire.agent import MAX_NODE_ACCOUNTS, JobSpec

LOGIN_DEFS = "/etc/login.defs"
DEFAULT_UID_MIN = 1000
DEFAULT_UID_MAX = 60000
OVERFLOW_UID = 65534  # nobody: a shared account, never a person's own


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    switch: bool  # the agent is root and drops to this account for the job
    note: str = ""  # said in the log header after "as NAME"


class NoAccountError(RuntimeStartError):
    """No account on this node may run the job (rule 4 in the module docstring)."""


@cache
def _uid_range(path: str = LOGIN_DEFS) -> tuple[int, int]:
    lo, hi = DEFAULT_UID_MIN, DEFAULT_UID_MAX
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdecimal():
                    if parts[0] == "UID_MIN":
                        lo = int(parts[1])
                    elif parts[0] == "UID_MAX":
                        hi = int(parts[1])
    except OSError:
        pass
    return lo, hi


def is_regular(pw: pwd.struct_passwd) -> bool:
    """Whether ``pw`` is a person's login account (not root, a system or the overflow one)."""
    lo, hi = _uid_range()
    return pw.pw_uid != 0 and pw.pw_uid != OVERFLOW_UID and lo <= pw.pw_uid <= hi


def regular_accounts() -> list[str]:
    """Names of this node's regular accounts, sorted, for the master's placement rule."""
    try:
        names = sorted({pw.pw_name for pw in pwd.getpwall() if is_regular(pw)})
    except OSError:
        return []
    return names[:MAX_NODE_ACCOUNTS]


def switches_accounts(ctx: RuntimeContext) -> bool:
    return ctx.runs_as_root and not ctx.single_user


def data_dir_mode(runs_as_root: bool, single_user: bool) -> int:
    """Mode of an agent data dir the agent creates: traversable by the accounts its jobs run
    as when it switches accounts (they reach their trees in it), else private. An existing
    one is never changed (see agent.runtimes.jobfs)."""
    return 0o711 if runs_as_root and not single_user else 0o700


def own_account() -> Account:
    uid = os.geteuid()
    try:
        pw = pwd.getpwuid(uid)
        name, home = pw.pw_name, pw.pw_dir
    except KeyError:
        name, home = os.environ.get("USER", str(uid)), os.environ.get("HOME", "/")
    return Account(name, uid, os.getegid(), (), home, switch=False)


def _lookup(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _switched(pw: pwd.struct_passwd) -> Account:
    groups = tuple(os.getgrouplist(pw.pw_name, pw.pw_gid))
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir, switch=True)


def resolve_account(ctx: RuntimeContext, spec: JobSpec) -> Account:
    """The account ``spec`` runs as on this node; raises RuntimeStartError when none may."""
    if not switches_accounts(ctx):
        own = own_account()
        if ctx.single_user:
            note = " (single-user node: every job runs as the agent's own account)"
        elif spec.unix_user and spec.unix_user != own.name:
            note = f" (the agent is not root, so not as {spec.unix_user})"
        else:
            note = ""
        return Account(own.name, own.uid, own.gid, own.groups, own.home, False, note)
    if spec.unix_user:
        pw = _lookup(spec.unix_user)
        if pw is None:
            raise RuntimeStartError(f"Unix user {spec.unix_user} does not exist on this node")
        if pw.pw_uid == 0:
            raise RuntimeStartError(
                f"refusing to run a job as Unix user {spec.unix_user}: it is uid 0"
            )
        return _switched(pw)
    if spec.user:
        pw = _lookup(spec.user)
        if pw is not None and is_regular(pw):
            return _switched(pw)
    if ctx.default_unix_user:
        pw = _lookup(ctx.default_unix_user)
        if pw is None:
            raise RuntimeStartError(
                f"the node's default Unix user {ctx.default_unix_user} does not exist on this node"
            )
        if pw.pw_uid == 0:
            raise RuntimeStartError(
                f"refusing to run a job as the default Unix user {ctx.default_unix_user}: "
                "it is uid 0"
            )
        return _switched(pw)
    if spec.admin:
        own = own_account()
        note = f" (the agent's own account: admin {spec.user} has no Unix account here)"
        return Account(own.name, own.uid, own.gid, own.groups, own.home, False, note)
    who = spec.user or "this job's user"
    raise NoAccountError(no_account_reason(who, f"node {ctx.node_name}"))


def default_account_ok(name: str) -> bool:
    """Whether a configured default account exists and is not uid 0 (for the node info)."""
    pw = _lookup(name) if name else None
    return pw is not None and pw.pw_uid != 0
