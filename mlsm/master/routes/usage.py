"""Usage reports (``/api/v1/usage``) and GPU reservations (``/api/v1/reservations``)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, delete, get, post
from litestar.params import Parameter

from mlsm.master.http import audit_target
from mlsm.master.routes.common import DbId, ServicesDep, principal
from mlsm.wire import usage as wu

#: A time in a query (unix seconds), bounded.
Time = Annotated[float, Parameter(ge=0, le=wu.MAX_TIME)]


@get("/api/v1/usage", opt={"role": "member"}, tags=["usage"])
async def usage_report(
    request: Request[Any, Any, Any],
    services: ServicesDep,
    by: wu.UsageBy = "user",
    since: Time | None = None,
    until: Time | None = None,
    user: str | None = Parameter(default=None, max_length=64),
) -> wu.UsageReport:
    """GPU-hours, utilisation-weighted GPU-hours, jobs, waits and energy, grouped; members
    see their own jobs only."""
    return await services.usage.report(
        principal(request), by=by, since=since, until=until, user=user
    )


@get("/api/v1/usage/timeline", opt={"role": "member"}, tags=["usage"])
async def usage_timeline(
    request: Request[Any, Any, Any],
    services: ServicesDep,
    since: Time | None = None,
    until: Time | None = None,
    steps: int | None = Parameter(default=None, ge=1, le=1000),
) -> wu.UsageTimeline:
    """The lab's utilisation, queue length and wait over time (for charts)."""
    return await services.usage.timeline(principal(request), since=since, until=until, steps=steps)


@get("/api/v1/reservations", opt={"role": "member"}, tags=["reservations"])
async def list_reservations(services: ServicesDep, all: bool = False) -> list[wu.Reservation]:
    """Reservations not over yet (everyone sees them: they explain why GPUs are held);
    ``all``: ended and cancelled ones too."""
    return await services.reservations.listing(all=all)


@post(
    "/api/v1/reservations",
    opt={"role": "member", "audit": "reservation.create"},
    status_code=201,
    tags=["reservations"],
)
async def create_reservation(
    request: Request[Any, Any, Any], services: ServicesDep, data: wu.ReservationCreate
) -> wu.Reservation:
    made = await services.reservations.create(principal(request), data)
    audit_target(
        request,
        f"reservation:{made.id}",
        user=made.user,
        node=made.node,
        gpus=made.gpu_indices,
        start=made.start,
        end=made.end,
        maintenance=made.maintenance,
    )
    return made


@delete(
    "/api/v1/reservations/{reservation_id:int}",
    opt={"role": "member", "audit": "reservation.cancel"},
    status_code=200,
    tags=["reservations"],
)
async def cancel_reservation(
    request: Request[Any, Any, Any], services: ServicesDep, reservation_id: DbId
) -> wu.Reservation:
    audit_target(request, f"reservation:{reservation_id}")
    return await services.reservations.cancel(principal(request), reservation_id)


ROUTES = [usage_report, usage_timeline, list_reservations, create_reservation, cancel_reservation]
