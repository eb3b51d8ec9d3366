"""Which overview rows changed since a dashboard's last poll.

A dashboard polls the overview every 2 s; a 1,000-node lab's whole row list is ~400 kB
of JSON to build, send and decode each time. The dashboard sends the cursor of its last
answer and gets only the rows that differ since then, the names of the nodes gone since
then, and a new cursor.

Changes are found by comparing each row with the one built for the previous answer, not
by hooks on every path that can change a node: a node going stale (time passing), a job
starting there or a drain are all caught the same way. A cursor is ``<epoch>.<seq>``:
the epoch is drawn when the master starts, so a cursor of another (or a restarted) master
is never mistaken for one of this master; such a cursor, a malformed one, or one older
than the removals kept (:data:`REMOVALS_KEPT`) is answered with the whole list.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from mlsm.wire import api

#: Removed nodes remembered for cursors that predate the removal; a cursor older than the
#: oldest one forgotten gets the whole list.
REMOVALS_KEPT = 4096


class OverviewLog:
    """Each node's last overview row and the sequence number at which it last changed."""

    def __init__(self) -> None:
        self.epoch = secrets.token_hex(4)
        self.seq = 0
        #: name -> (seq at which the row last changed, the row).
        self._rows: dict[str, tuple[int, api.NodeRow]] = {}
        #: name -> seq at which the node left the list (oldest first).
        self._removed: dict[str, int] = {}
        #: Cursors below this may have missed a removal that is forgotten.
        self._floor = 0

    @property
    def cursor(self) -> str:
        return f"{self.epoch}.{self.seq}"

    def record(self, rows: Iterable[api.NodeRow]) -> None:
        """Take the rows as they are now (every node's); rows that differ from the last
        recorded ones, new nodes and nodes that are gone get the next sequence number."""
        seq = self.seq + 1
        changed = False
        seen: set[str] = set()
        known = self._rows
        for row in rows:
            seen.add(row.name)
            last = known.get(row.name)
            if last is None or last[1] != row:
                known[row.name] = (seq, row)
                changed = True
                if last is None:
                    self._removed.pop(row.name, None)
        if len(seen) != len(known):
            for name in [name for name in known if name not in seen]:
                del known[name]
                self._removed[name] = seq
                changed = True
            while len(self._removed) > REMOVALS_KEPT:
                oldest = next(iter(self._removed))
                self._floor = max(self._floor, self._removed.pop(oldest))
        if changed:
            self.seq = seq

    def _since(self, cursor: str | None) -> int | None:
        """The sequence number a cursor of this master stands for; None when it must be
        answered with the whole list (none, another master's, too old, malformed: only
        ASCII digits count, as ``str.isdigit`` alone takes '²', which ``int`` refuses)."""
        if not cursor:
            return None
        epoch, _, number = cursor.partition(".")
        if epoch != self.epoch or not (number.isascii() and number.isdigit()):
            return None
        seq = int(number)
        return seq if self._floor <= seq <= self.seq else None

    def answer(self, summary: api.LabSummary, cursor: str | None) -> api.LabOverview:
        """The rows changed after ``cursor`` (all of them, ``full``, when it is not a
        usable cursor of this master), by name, with the new cursor."""
        since = self._since(cursor)
        if since is None:
            rows = [row for _, row in sorted(self._rows.values(), key=_by_name)]
            return api.LabOverview(summary=summary, nodes=rows, cursor=self.cursor, full=True)
        changed = sorted((r for r in self._rows.values() if r[0] > since), key=_by_name)
        gone = sorted(name for name, seq in self._removed.items() if seq > since)
        return api.LabOverview(
            summary=summary,
            nodes=[row for _, row in changed],
            cursor=self.cursor,
            full=False,
            removed=gone,
        )


def _by_name(entry: tuple[int, api.NodeRow]) -> str:
    return entry[1].name
