"""Direct-path tickets: one connection each, before expiry, for one transfer and target."""

from __future__ import annotations

import msgspec
import pytest

from mlsm import errors
from mlsm.bulk.tickets import TICKET_TTL_S, Ticket, TicketGate, TicketIssuer, new_key

TARGET = 7
SOURCE = "dataset corpus"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def pair(clock: Clock, target: int = TARGET) -> tuple[TicketIssuer, TicketGate]:
    key = new_key()
    return (
        TicketIssuer(key, 42, SOURCE, clock=clock),
        TicketGate(key, 42, SOURCE, target, clock=clock),
    )


def refused(gate: TicketGate, ticket: Ticket, why: str) -> None:
    with pytest.raises(errors.PermissionDenied, match=why):
        gate.admit(ticket)


def test_a_ticket_is_accepted_once() -> None:
    issuer, gate = pair(Clock())
    ticket = issuer.issue(TARGET)
    gate.admit(ticket)
    refused(gate, ticket, "already used")
    gate.admit(issuer.issue(TARGET))  # the next connection has its own ticket


def test_a_ticket_for_another_node_is_refused() -> None:
    issuer, gate = pair(Clock())
    refused(gate, issuer.issue(TARGET + 1), "another node")


def test_an_expired_ticket_is_refused() -> None:
    clock = Clock()
    issuer, gate = pair(clock)
    ticket = issuer.issue(TARGET)
    clock.now += TICKET_TTL_S
    refused(gate, ticket, "expired")


def test_a_changed_or_forged_ticket_is_refused() -> None:
    issuer, gate = pair(Clock())
    ticket = issuer.issue(TARGET)
    for change in (
        {"target_node": TARGET + 1},
        {"expires_at": ticket.expires_at + 3600},
        {"serial": ticket.serial + 1},
        {"source": "dataset other"},
        {"mac": "00" * 32},
        {"mac": ""},
    ):
        refused(gate, msgspec.structs.replace(ticket, **change), "not issued by the master")
    gate.admit(ticket)  # the real one is still good


def test_a_ticket_of_another_session_or_transfer_is_refused() -> None:
    clock = Clock()
    other_key = TicketIssuer(new_key(), 42, SOURCE, clock=clock).issue(TARGET)
    _issuer, gate = pair(clock)
    refused(gate, other_key, "not issued by the master")
    key = new_key()
    other_transfer = TicketIssuer(key, 43, SOURCE, clock=clock).issue(TARGET)
    refused(TicketGate(key, 42, SOURCE, TARGET, clock=clock), other_transfer, "another transfer")
