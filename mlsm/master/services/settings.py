"""Lab-wide settings that admins change at run time (kept in the ``settings`` table).

One row per key, holding :class:`~mlsm.wire.api.LabSettings` as JSON; read once at start and
cached, written through on change (audited by the route).
"""

from __future__ import annotations

import msgspec
from sqlalchemy import select

from mlsm.errors import ValidationError
from mlsm.master.db import Database
from mlsm.master.db.models import Setting
from mlsm.wire import api

KEY = "lab"


def check_consistent(lab: api.LabSettings) -> None:
    """Settings that contradict each other are refused as a whole (nothing is written)."""
    if lab.max_time_limit_s and lab.default_time_limit_s > lab.max_time_limit_s:
        raise ValidationError(
            f"the default time limit ({lab.default_time_limit_s:g} s) is longer than the "
            f"maximum ({lab.max_time_limit_s:g} s)",
            path="default_time_limit_s",
        )


class SettingsService:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.current = api.LabSettings()

    async def load(self) -> None:
        async with self.db.session() as s:
            row = (await s.execute(select(Setting).where(Setting.key == KEY))).scalar_one_or_none()
        if row is not None:
            self.current = msgspec.convert(row.value, api.LabSettings)

    async def update(self, body: api.LabSettingsUpdate) -> api.LabSettings:
        merged = msgspec.structs.asdict(self.current)
        merged.update({k: v for k, v in msgspec.structs.asdict(body).items() if v is not None})
        new = msgspec.convert(merged, api.LabSettings)
        check_consistent(new)
        async with self.db.transaction() as s:
            row = (await s.execute(select(Setting).where(Setting.key == KEY))).scalar_one_or_none()
            if row is None:
                s.add(Setting(key=KEY, value=msgspec.to_builtins(new)))
            else:
                row.value = msgspec.to_builtins(new)
        self.current = new
        return new
