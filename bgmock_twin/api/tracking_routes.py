"""Control-API routes of tracking: one payment, the ledger, the event view, and (from
``simulation_routes``) simulations, built from the ``Tracking`` component.

Thin on purpose: request models bound every value (so bad input is a 422 naming
the field, never a 500), each route delegates to ``Tracking``, whose refusals
``api/errors.py`` maps to status codes. The wire conventions are ``api/wire.py``'s.
"""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Response
from pydantic import Field

from bgmock_twin.api.auth import require_token
from bgmock_twin.api.simulation_routes import build_simulation_router
from bgmock_twin.api.wire import AccountNumber, Amount, JsonBodyRoute, WireRequest, WireResponse
from bgmock_twin.contract import TOPICS
from bgmock_twin.tracking.ledger import LedgerUnavailable, PaymentQuery
from bgmock_twin.tracking.lifecycle import Channel, Kind
from bgmock_twin.tracking.records import EXPORT_COLUMNS, PaymentRecord, export_row, record_of
from bgmock_twin.tracking.service import Tracking

STATUS_VALUES = Literal["in_flight", "success", "failed", "rejected", "stuck"]


# --- requests ---------------------------------------------------------------------------------
class TransactionRequest(WireRequest):
    """One payment. Every field is optional: by default a random amount from a random
    twin account of one bank to a twin payee of the other."""

    from_bank: Literal["a", "b"] | None = Field(None, description="source bank")
    to_bank: Literal["a", "b"] | None = Field(None, description="destination bank")
    from_account: AccountNumber | None = Field(None, description="a twin payer account")
    to_account: AccountNumber | None = Field(None, description="a twin payee account")
    amount: Amount | None = Field(None, description="decimal, at most 2 places")
    channel: Literal["rest", "kafka"] = "rest"
    kind: Literal["normal", "insufficient_funds", "unknown_bankgood",
                  "unknown_payee_account"] = Field(
        "normal", description="a deliberate failure, or normal")


# --- responses --------------------------------------------------------------------------------
class TimelineEntry(WireResponse):
    step: str
    at: datetime
    since_intended_seconds: float = Field(description="monotonic, from the intended send time")
    duration_seconds: float = Field(description="since the previous step seen")


class TransactionView(WireResponse):
    payment_id: str
    transaction_id: str | None
    simulation_id: str | None
    instance_id: str = Field(description="the twin replica that sent it")
    channel: str
    route: str
    kind: str
    from_clearing_number: str
    from_account_number: str
    to_bankgood_number: str
    to_clearing_number: str
    to_account_number: str
    amount: Decimal
    intended_at: datetime
    status: str = Field(description="in_flight, success, failed, rejected or stuck")
    state: str = Field(description="furthest step reached")
    outcome: str | None
    counted_outcome: str | None = Field(description="as counted in the metrics (once)")
    final_status: str | None
    stuck_step: str | None = Field(description="step it waits for past the step deadline")
    message: str | None
    matched_by: str | None = Field(
        description="how the transaction id was found when the bank's 202 never came back: "
                    "initiated_event or bank_database (null: the 202)")
    finished_at: datetime | None
    duration_seconds: float | None = Field(description="intended send to final step")
    timeline: list[TimelineEntry]


class TransactionPage(WireResponse):
    items: list[TransactionView]
    limit: int
    offset: int
    next_offset: int | None


class EventView(WireResponse):
    topic: str
    partition: int
    offset: int
    key: str | None
    transaction_id: str | None
    status: str | None
    origin: str = Field(description="twin, foreign, pending (id not known yet) or invalid")
    observed_at: str
    amount: str | None = None
    message: str | None = None
    reason: str | None = None


class EventPage(WireResponse):
    items: list[EventView]


# --- conversions ------------------------------------------------------------------------------
def transaction_view(record: PaymentRecord) -> TransactionView:
    timeline = [
        TimelineEntry(step=s.step.value, at=s.at,
                      since_intended_seconds=round(s.since_intended, 6),
                      duration_seconds=round(s.duration, 6))
        for s in record.timeline
    ]
    duration = record.duration
    return TransactionView(
        payment_id=record.payment_id, transaction_id=record.transaction_id,
        simulation_id=record.simulation_id, instance_id=record.instance_id,
        channel=record.channel.value, route=record.route.value, kind=record.kind.value,
        from_clearing_number=record.from_clearing, from_account_number=record.from_account,
        to_bankgood_number=record.to_bankgood, to_clearing_number=record.to_clearing,
        to_account_number=record.to_account, amount=record.amount,
        intended_at=record.intended_at, status=record.status, state=record.state,
        outcome=_value(record.outcome), counted_outcome=_value(record.counted_outcome),
        final_status=_value(record.final_status), stuck_step=_value(record.stuck_step),
        message=record.message, matched_by=record.matched_by, finished_at=record.finished_at,
        duration_seconds=round(duration, 6) if duration is not None else None,
        timeline=sorted(timeline, key=lambda e: e.since_intended_seconds),
    )


def _value(member: StrEnum | None) -> str | None:
    return member.value if member is not None else None


CSV_COLUMNS = list(EXPORT_COLUMNS)


def _csv(rows: list[dict[str, Any]], columns: list[str], filename: str) -> Response:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return Response(
        buffer.getvalue(), media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def _unavailable(exc: Exception) -> HTTPException:
    return HTTPException(status_code=503, detail=f"ledger unavailable: {exc}")


CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}},
          "description": "JSON, or CSV with format=csv"},
}


def build_router(tracking: Tracking) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["tracking"], route_class=JsonBodyRoute)
    mutate = [Depends(require_token)]

    @router.post(
        "/transactions", status_code=202, response_model=TransactionView,
        summary="Send one synthetic payment now and follow it",
        dependencies=mutate,
        responses={502: {"description": "the source did not accept it"},
                   503: {"description": "BGMock unreachable or all sender slots busy"}},
    )
    def post_transaction(
        request: Annotated[TransactionRequest | None, Body()] = None,
    ) -> TransactionView:
        req = request or TransactionRequest()
        payment = tracking.submit_one(
            from_bank=req.from_bank, to_bank=req.to_bank, from_account=req.from_account,
            to_account=req.to_account, amount=req.amount, channel=Channel(req.channel),
            kind=Kind(req.kind),
        )
        view = transaction_view(record_of(payment))
        if payment.outcome is not None and payment.outcome.value == "rejected" and \
                payment.transaction_id is None and payment.channel is Channel.REST:
            raise HTTPException(status_code=502, detail=f"payment {payment.payment_id} "
                                f"not accepted: {payment.message}")
        return view

    @router.get(
        "/transactions", response_model=TransactionPage, responses=CSV_RESPONSE,
        summary="Synthetic payments from the ledger (newest first), JSON or CSV",
    )
    def list_transactions(
        status: STATUS_VALUES | None = None,
        simulation: Annotated[uuid.UUID | None, Query(description="simulation id")] = None,
        since: Annotated[datetime | None,
                         Query(description="intended send time at or after")] = None,
        channel: Literal["rest", "kafka"] | None = None,
        route: Literal["a_to_b", "b_to_a"] | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        offset: Annotated[int, Query(ge=0, le=100_000_000)] = 0,
        format: Literal["json", "csv"] = "json",
    ) -> Any:
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        query = PaymentQuery(status=status, simulation_id=str(simulation) if simulation else None,
                             since=since, channel=channel, route=route, limit=limit,
                             offset=offset)
        try:
            records = tracking.ledger.query(query)
        except LedgerUnavailable as exc:
            raise _unavailable(exc) from None
        if format == "csv":
            return _csv([export_row(r) for r in records], CSV_COLUMNS, "transactions.csv")
        return TransactionPage(
            items=[transaction_view(r) for r in records], limit=limit, offset=offset,
            next_offset=offset + limit if len(records) == limit else None,
        )

    @router.get(
        "/transactions/{transaction_id}", response_model=TransactionView,
        responses={**CSV_RESPONSE, 404: {"description": "unknown payment"}},
        summary="One payment and its timeline, by payment id or BGMock transaction id",
    )
    def get_transaction(
        transaction_id: Annotated[uuid.UUID, Path(description="payment or transaction id")],
        format: Literal["json", "csv"] = "json",
    ) -> Any:
        live = tracking.tracker.get(str(transaction_id))
        if live is not None:
            record: PaymentRecord | None = record_of(live)
        else:
            try:
                record = tracking.ledger.get(str(transaction_id))
            except LedgerUnavailable as exc:
                raise _unavailable(exc) from None
        if record is None:
            raise HTTPException(status_code=404, detail="no such synthetic payment")
        view = transaction_view(record)
        if format == "csv":
            entries = [e.model_dump() for e in view.timeline]
            return _csv(entries, ["step", "at", "since_intended_seconds", "duration_seconds"],
                        f"transaction-{transaction_id}.csv")
        return view

    @router.get(
        "/events", response_model=EventPage,
        summary="The most recent Kafka events seen (bounded buffer), newest first",
    )
    def events(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        topic: Literal[TOPICS] | None = None,  # type: ignore[valid-type]
        origin: Literal["twin", "foreign", "pending", "invalid"] | None = None,
    ) -> EventPage:
        items = tracking.tracker.events(limit, topic=topic, origin=origin)
        return EventPage(items=[EventView.model_validate(item) for item in items])

    router.include_router(build_simulation_router(tracking))
    return router
