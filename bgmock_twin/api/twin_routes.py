"""Control-API routes of the daemon itself: its status and the emulator's faults.

The daemon answers with typed values (``api/twin.py``); these routes render them in
camelCase. A fault body names its target ``service`` and the books fault's account
``accountNumber``, as the emulator's own admin API does; the names of earlier
versions (``target``, ``corrupt_balance.account_number``, snake_case switches) are
still accepted so existing scripts keep working.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import AliasChoices, Field
from pydantic.alias_generators import to_camel

from bgmock_twin.api.auth import require_token
from bgmock_twin.api.books_routes import render_books_status
from bgmock_twin.api.twin import BalanceCorruption, Fault, FaultResult, TwinStatus, TwinView
from bgmock_twin.api.wire import WireRequest, WireResponse

MAX_DELTA = Decimal("1000000000")
SWITCHES = ("down", "hang", "latency_seconds", "error_rate", "garbage", "paused",
            "stall_outbox")


# --- status -----------------------------------------------------------------------------------
class ServiceHealthView(WireResponse):
    service: str
    up: bool | None = Field(description="null until the first probe finished")
    last_check: str | None
    last_up: str | None
    latency_seconds: float | None
    reason: str | None
    consecutive_failures: int


class LedgerView(WireResponse):
    available: bool
    buffered: int = Field(description="rows waiting to be written")


class PaymentsView(WireResponse):
    in_flight: int
    stuck: dict[str, int] = Field(description="payments stuck, by the step they wait for")
    submitted: int
    outcomes: dict[str, int]
    parked_events: int
    dropped: int
    sender_busy: int
    simulations_active: int
    provisioned: bool
    provision_error: str | None
    following: bool
    kafka_connected: bool
    ledger: LedgerView
    background_rate: float
    consumer_group: str
    poll_requests: int = Field(description="status GETs taken from the polling budget "
                                           "(following by rest_polling)")
    canary_by: str | None = Field(None, description="the replica of the fleet that sends "
                                  "the background canary (its lease's holder; null before "
                                  "it is known or with the canary off)")


class StatusView(WireResponse):
    mode: str
    following: str = Field(description="how payments are followed: kafka (the four topics) "
                                       "or rest_polling (no Kafka: the source bank and the "
                                       "clearing polled over REST)")
    not_observed: list[str] = Field(description="steps of a payment this twin cannot see "
                                                "in its mode; never invented")
    channels: list[str] = Field(description="channels a payment can be sent on")
    instance: str
    version: str
    started_at: str
    services: dict[str, ServiceHealthView]
    payments: PaymentsView | None = Field(None, description="absent without an event bus")
    books: dict[str, Any] | None = Field(None, description="absent without books")


def status_view(status: TwinStatus) -> StatusView:
    services = {
        name: ServiceHealthView(
            service=health.service, up=health.up,
            last_check=health.last_check.isoformat() if health.last_check else None,
            last_up=health.last_up.isoformat() if health.last_up else None,
            latency_seconds=health.latency_seconds, reason=health.reason,
            consecutive_failures=health.consecutive_failures,
        )
        for name, health in status.services.items()
    }
    payments = PaymentsView.model_validate(status.payments, from_attributes=True) \
        if status.payments is not None else None
    tracking = status.payments
    return StatusView(mode=status.mode, following=status.following,
                      not_observed=list(tracking.not_observed) if tracking else [],
                      channels=list(tracking.channels) if tracking else [],
                      instance=status.instance, version=status.version,
                      started_at=status.started_at.isoformat(), services=services,
                      payments=payments,
                      books=None if status.books is None else render_books_status(status.books))


# --- faults -----------------------------------------------------------------------------------
class CorruptBalance(WireRequest):
    """Change a bank account's balance behind BGMock's back (a books fault)."""

    account_number: str = Field(..., min_length=1, max_length=64, pattern=r"^[\w.-]+$",
                                description="also accepted as account_number")
    delta: Decimal = Field(..., ge=-MAX_DELTA, le=MAX_DELTA, decimal_places=2,
                           allow_inf_nan=False)


class FaultRequest(WireRequest):
    """A fault for the embedded emulator (demos and tests). Send a switch with
    ``false`` (or 0) to clear it."""

    service: str = Field(
        ..., pattern=r"^(bank_a|bank_b|clearing|bus)$",
        validation_alias=AliasChoices("service", "target"),
        description="bank_a, bank_b, clearing or bus (also accepted as target)",
    )
    down: bool | None = None
    hang: bool | None = None
    latency_seconds: float | None = Field(None, ge=0, le=60)
    error_rate: float | None = Field(None, ge=0, le=1)
    garbage: bool | None = None
    paused: bool | None = Field(None, description="pause the service's Kafka consumers")
    stall_outbox: bool | None = None
    corrupt_balance: CorruptBalance | None = Field(
        None, description="bank_a or bank_b only: change an account's balance"
    )
    drop_outbox_row: bool | None = Field(
        None, description="delete the oldest unpublished outbox row of the service"
    )

    def fault(self) -> Fault:
        switches = {name: getattr(self, name) for name in SWITCHES}
        corrupt = self.corrupt_balance
        return Fault(
            service=self.service,
            switches={name: value for name, value in switches.items() if value is not None},
            corrupt_balance=BalanceCorruption(corrupt.account_number, corrupt.delta)
            if corrupt is not None else None,
            drop_outbox_row=bool(self.drop_outbox_row),
        )


def fault_body(result: FaultResult) -> dict[str, Any]:
    """Only the parts the fault asked for, as before: ``droppedOutboxRow`` is null
    when no row was pending."""
    body: dict[str, Any] = {"service": result.service}
    if result.new_balance is not None:
        body["newBalance"] = str(result.new_balance)
    if result.outbox_drop is not None:
        body["droppedOutboxRow"] = result.outbox_drop.row
    if result.applied is not None:
        body["applied"] = {to_camel(name): value for name, value in result.applied.items()}
    return body


# --- routes -----------------------------------------------------------------------------------
def build_twin_router(twin: TwinView) -> APIRouter:
    router = APIRouter(prefix="/api/v1")

    @router.get("/status", summary="Mode, each service's health and counts", tags=["status"],
                response_model=StatusView)
    def status() -> JSONResponse:
        view = status_view(twin.status())
        absent = {name for name in ("payments", "books") if getattr(view, name) is None}
        return JSONResponse(view.model_dump(mode="json", by_alias=True, exclude=absent))

    @router.post("/emulator/faults", summary="Inject or clear a fault in the embedded "
                 "emulator", tags=["emulator"], dependencies=[Depends(require_token)],
                 responses={409: {"description": "not in embedded mode"}})
    def fault(request: FaultRequest) -> dict[str, Any]:
        return fault_body(twin.apply_fault(request.fault()))

    return router
