"""Usage reports and GPU reservations."""

from __future__ import annotations

from mlsm.client.call import Call
from mlsm.client.resource import AsyncResource, SyncResource, async_method, sync_method
from mlsm.wire import usage as wu

USAGE = "/api/v1/usage"
RESERVATIONS = "/api/v1/reservations"


def _report(
    *,
    by: wu.UsageBy = "user",
    since: float | None = None,
    until: float | None = None,
    user: str | None = None,
) -> Call[wu.UsageReport]:
    """GPU-hours, utilisation-weighted GPU-hours, jobs, waits and energy, grouped."""
    params = {"by": by, "since": since, "until": until, "user": user}
    return Call("GET", USAGE, wu.UsageReport, params=params)


def _timeline(
    *, since: float | None = None, until: float | None = None, steps: int | None = None
) -> Call[wu.UsageTimeline]:
    """The lab's utilisation, queue length and wait over time."""
    params = {"since": since, "until": until, "steps": steps}
    return Call("GET", f"{USAGE}/timeline", wu.UsageTimeline, params=params)


def _list_reservations(*, all: bool = False) -> Call[list[wu.Reservation]]:
    """Reservations not over yet (``all``: ended and cancelled ones too)."""
    return Call("GET", RESERVATIONS, list[wu.Reservation], params={"all": all or None})


def _reserve(req: wu.ReservationCreate) -> Call[wu.Reservation]:
    """Set GPUs aside (audited); the answer names the node and GPUs chosen."""
    return Call("POST", RESERVATIONS, wu.Reservation, body=req)


def _cancel_reservation(reservation_id: int) -> Call[wu.Reservation]:
    return Call("DELETE", f"{RESERVATIONS}/{int(reservation_id)}", wu.Reservation)


class Usage(SyncResource):
    report = sync_method(_report)
    timeline = sync_method(_timeline)


class AsyncUsage(AsyncResource):
    report = async_method(_report)
    timeline = async_method(_timeline)


class Reservations(SyncResource):
    list = sync_method(_list_reservations)
    create = sync_method(_reserve)
    cancel = sync_method(_cancel_reservation)


class AsyncReservations(AsyncResource):
    list = async_method(_list_reservations)
    create = async_method(_reserve)
    cancel = async_method(_cancel_reservation)
