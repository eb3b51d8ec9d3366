"""User management with the role rules of the design.

- admins create, change and disable members; only a superadmin creates, promotes, demotes
  or disables admins and superadmins;
- the last enabled superadmin can be neither demoted nor disabled;
- nobody changes their own role;
- a password change, a disable and a role change downward end the user's sessions at once
  (API tokens too when the change asks for it); see :mod:`mlsm.master.services.auth`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mlsm.errors import Conflict, NotFound, PermissionDenied, ValidationError
from mlsm.master.db import Database
from mlsm.master.db.models import User
from mlsm.master.security import Principal, hash_password
from mlsm.master.services.auth import end_sessions
from mlsm.wire import api
from mlsm.wire.api import ROLE_RANK

PRIVILEGED = ("admin", "superadmin")


def to_wire(u: User) -> api.User:
    return api.User(
        id=u.id,
        username=u.username,
        role=u.role,
        disabled=u.disabled,
        created_at=u.created_at,
        unix_user=u.unix_user,
        gpu_cap=u.gpu_cap,
        last_login=u.last_login,
    )


async def _get(s: AsyncSession, username: str) -> User:
    user = (await s.execute(select(User).where(User.username == username))).scalar_one_or_none()
    if user is None:
        raise NotFound(f"no user named {username!r}")
    return user


async def _is_last_superadmin(s: AsyncSession, user: User) -> bool:
    """True when ``user`` is the only enabled superadmin (a disabled one never is)."""
    if user.role != "superadmin" or user.disabled:
        return False
    q = (
        select(func.count())
        .select_from(User)
        .where(User.role == "superadmin", User.disabled.is_(False), User.id != user.id)
    )
    return int((await s.execute(q)).scalar_one()) == 0


class UserService:
    def __init__(self, db: Database, on_change: Callable[[int], None] | None = None) -> None:
        self.db = db
        # Told the id of a user whose role, account, cap or sessions changed (cached
        # principals are dropped, the scheduler relearns accounts and caps).
        self._on_change = on_change

    async def query(self) -> list[api.User]:
        async with self.db.session() as s:
            rows = (await s.execute(select(User).order_by(User.username))).scalars().all()
        return [to_wire(u) for u in rows]

    async def get(self, username: str) -> api.User:
        async with self.db.session() as s:
            return to_wire(await _get(s, username))

    async def create(self, actor: Principal, body: api.UserCreate) -> api.User:
        if body.role in PRIVILEGED and not actor.at_least("superadmin"):
            raise PermissionDenied(f"only a superadmin can create an {body.role}")
        _check_unix_user(body.unix_user)
        try:
            async with self.db.transaction() as s:
                user = User(
                    username=body.username,
                    password_hash=hash_password(body.password),
                    role=body.role,
                    unix_user=body.unix_user,
                    created_at=time.time(),
                )
                s.add(user)
                await s.flush()
                result = to_wire(user)
        except IntegrityError:
            raise Conflict(f"user {body.username!r} already exists") from None
        if self._on_change is not None:
            self._on_change(result.id)  # placement learns the Unix account and cap
        return result

    async def update(self, actor: Principal, username: str, body: api.UserUpdate) -> api.User:
        _check_unix_user(body.unix_user)
        new_hash = hash_password(body.password) if body.password is not None else None
        async with self.db.transaction() as s:
            user = await _get(s, username)
            end = False  # whether the user's sessions end with this change
            touches_privileged = user.role in PRIVILEGED or (body.role in PRIVILEGED)
            if touches_privileged and not actor.at_least("superadmin"):
                raise PermissionDenied("only a superadmin can change admins or make admins")
            # The last-superadmin rule is checked first: it is the reason that matters when
            # the only superadmin tries to demote or disable themselves.
            if body.role is not None and body.role != user.role:
                if await _is_last_superadmin(s, user):
                    raise Conflict("the last superadmin cannot be demoted")
                if user.id == actor.user_id:
                    raise PermissionDenied("you cannot change your own role")
                end = end or ROLE_RANK[body.role] < ROLE_RANK.get(user.role, 0)
                user.role = body.role
            if body.disabled is not None and body.disabled != user.disabled:
                if body.disabled and await _is_last_superadmin(s, user):
                    raise Conflict("the last superadmin cannot be disabled")
                if body.disabled and user.id == actor.user_id:
                    raise PermissionDenied("you cannot disable yourself")
                end = end or body.disabled
                user.disabled = body.disabled
            if new_hash is not None:
                user.password_hash = new_hash
                end = True
            if body.unix_user is not None:
                user.unix_user = body.unix_user
            if body.clear_gpu_cap:
                user.gpu_cap = None
            elif body.gpu_cap is not None:
                user.gpu_cap = body.gpu_cap
            if end or body.revoke_api_tokens:
                # The actor's own session survives a change of their own password.
                keep = actor.token_id if user.id == actor.user_id else None
                await end_sessions(s, user.id, keep_token_id=keep, api_too=body.revoke_api_tokens)
            result = to_wire(user)
        if self._on_change is not None:
            self._on_change(result.id)
        return result

    async def bootstrap_superadmin(self, username: str, password: str) -> bool:
        """Create the first superadmin; does nothing (False) when any user exists."""
        async with self.db.transaction() as s:
            count = int((await s.execute(select(func.count()).select_from(User))).scalar_one())
            if count:
                return False
            s.add(
                User(
                    username=username,
                    password_hash=hash_password(password),
                    role="superadmin",
                    created_at=time.time(),
                )
            )
            return True


def _check_unix_user(name: str | None) -> None:
    """No user's jobs ever run as root: refuse the mapping here (the node refuses any other
    name that turns out to be uid 0 there)."""
    if name == "root":
        raise ValidationError(
            "jobs never run as root: map the user to their own Unix account", path="unix_user"
        )
