"""Control-API routes of tracking: one payment, the ledger, the event view, and (from
``simulation_routes``) simulations, built from the ``Tracking`` component.

Thin on purpose: request models bound every value (so bad input is a 422 naming
the field, never a 500), each route delegates to ``Tracking``, whose refusals
``api/errors.py`` maps to status codes. The wire conventions are ``api/wire.py``'s.
The transaction list is streamed and its heavy reads bounded (``api/streams.py``).
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
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field

from bgmock_twin.api.auth import require_token
from bgmock_twin.api.errors import error_body
from bgmock_twin.api.simulation_routes import build_simulation_router
from bgmock_twin.api.streams import (
    CHUNK_ROWS,
    HEAVY_PAGE,
    RETRY_AFTER_SECONDS,
    CsvEncoder,
    Encoder,
    NdjsonEncoder,
    PageEncoder,
    ReadSlots,
    cell,
    first_chunk,
    stream,
)
from bgmock_twin.api.wire import AccountNumber, Amount, JsonBodyRoute, WireRequest, WireResponse
from bgmock_twin.contract import TOPICS
from bgmock_twin.tracking.ledger import LedgerUnavailable, PaymentQuery
from bgmock_twin.tracking.lifecycle import ALL_STEPS, Channel, Kind, Step
from bgmock_twin.tracking.records import (
    PaymentRecord,
    cursor_keyset,
    record_of,
)
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


class ClearingView(WireResponse):
    status: str = Field(description="PENDING, SUCCESS, FAILED, or unknown (not there)")
    at: datetime
    since_intended_seconds: float = Field(description="monotonic, from the intended send time")


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
    clearing: ClearingView | None = Field(
        None, description="without Kafka: what the clearing said when the payment was "
                          "late to settle (live payments only)")
    not_observed: list[str] = Field(
        default_factory=list,
        description="steps this twin cannot see in its mode (no Kafka: the four event "
                    "steps); never invented, absent from the timeline")


class TransactionPage(WireResponse):
    items: list[TransactionView]
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page; null on the last")
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page (stable while payments are added); "
        "null on the last")
    has_more: bool = Field(description="whether more payments match after this page")


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
def transaction_view(record: PaymentRecord,
                     hidden: frozenset[Step] = frozenset()) -> TransactionView:
    """``hidden``: the steps of such a payment the twin cannot see in its mode; those
    its timeline lacks are listed as not observed."""
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
        clearing=None if record.clearing is None else ClearingView(
            status=record.clearing.status, at=record.clearing.at,
            since_intended_seconds=round(record.clearing.since_intended, 6)),
        not_observed=[step.value for step in ALL_STEPS
                      if step in hidden and record.step(step) is None],
    )


def _value(member: StrEnum | None) -> str | None:
    return member.value if member is not None else None


def _csv(rows: list[dict[str, Any]], columns: list[str], filename: str) -> Response:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([cell(row.get(c)) for c in columns])
    return Response(
        buffer.getvalue(), media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _unavailable(exc: Exception) -> HTTPException:
    return HTTPException(status_code=503, detail=f"ledger unavailable: {exc}")


CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}},
          "description": "JSON, or CSV with format=csv"},
}
LIST_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}},
                      "application/x-ndjson": {"schema": {"type": "string"}}},
          "description": "a JSON page; every matching payment as CSV (format=csv) or "
                         "one JSON object a line (format=ndjson), streamed"},
    429: {"description": "too many heavy reads at once; retry after `Retry-After` seconds"},
    503: {"description": "the ledger cannot be read"},
}


def build_router(tracking: Tracking, heavy_reads: int = 2) -> APIRouter:
    """The tracking routes; at most ``heavy_reads`` exports or big pages at a time."""
    router = APIRouter(prefix="/api/v1", tags=["tracking"], route_class=JsonBodyRoute)
    mutate = [Depends(require_token)]
    slots = ReadSlots(heavy_reads)

    def render(record: PaymentRecord) -> TransactionView:
        return transaction_view(record, tracking.not_observed(record.channel))

    @router.post(
        "/transactions", status_code=202, response_model=TransactionView,
        summary="Send one synthetic payment now and follow it",
        dependencies=mutate,
        responses={409: {"description": "the kafka channel, asked of a twin without Kafka"},
                   502: {"description": "the source did not accept it"},
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
        view = transaction_view(record_of(payment), tracking.not_observed(payment.channel))
        if payment.outcome is not None and payment.outcome.value == "rejected" and \
                payment.transaction_id is None and payment.channel is Channel.REST:
            raise HTTPException(status_code=502, detail=f"payment {payment.payment_id} "
                                f"not accepted: {payment.message}")
        return view

    @router.get(
        "/transactions", response_model=TransactionPage, responses=LIST_RESPONSES,
        summary="Synthetic payments from the ledger (newest first): a JSON page, or "
                "every match streamed as CSV or NDJSON",
        description="Page with `nextCursor` (pass it back as `cursor`): stable while "
        "payments are added. `limit`/`offset` still work. `format=csv` and "
        "`format=ndjson` stream every matching payment (or `limit` of them when given). "
        f"Exports and pages over {HEAVY_PAGE} items are heavy reads: a few at a time, "
        "429 with `Retry-After` beyond.",
    )
    async def list_transactions(
        status: STATUS_VALUES | None = None,
        simulation: Annotated[uuid.UUID | None, Query(description="simulation id")] = None,
        since: Annotated[datetime | None,
                         Query(description="intended send time at or after")] = None,
        channel: Literal["rest", "kafka"] | None = None,
        route: Literal["a_to_b", "b_to_a"] | None = None,
        limit: Annotated[int | None, Query(
            ge=1, le=10_000,
            description="items per JSON page (default 100); for csv/ndjson at most "
                        "this many (default: every match)")] = None,
        offset: Annotated[int, Query(ge=0, le=100_000_000)] = 0,
        cursor: Annotated[str | None, Query(
            max_length=200, description="`nextCursor` of the previous page")] = None,
        format: Literal["json", "csv", "ndjson"] = "json",
    ) -> Response:
        after = _keyset(cursor, offset)
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        page = limit or 100
        encoder: Encoder
        if format == "csv":
            encoder, wanted = CsvEncoder(), limit
        elif format == "ndjson":
            encoder, wanted = NdjsonEncoder(render), limit
        else:
            encoder, wanted = PageEncoder(render, page, offset), page + 1
        slot = None
        if format != "json" or page > HEAVY_PAGE:
            slot = slots.take()
            if slot is None:
                return JSONResponse(
                    status_code=429, headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                    content=error_body(f"{slots.limit} heavy reads are running; retry "
                                       f"after {RETRY_AFTER_SECONDS} s"))
        query = PaymentQuery(status=status, simulation_id=str(simulation) if simulation else None,
                             since=since, channel=channel, route=route, limit=wanted,
                             offset=offset, after=after)
        chunks = tracking.ledger.query_chunks(query, CHUNK_ROWS)
        try:
            first = await first_chunk(chunks)
        except BaseException as exc:
            if slot is not None:
                slot.release()
            if isinstance(exc, LedgerUnavailable):
                raise _unavailable(exc) from None
            raise
        headers = {} if format == "json" else {
            "Content-Disposition": f'attachment; filename="transactions.{format}"'}
        return StreamingResponse(stream(first, chunks, encoder, slot),
                                 media_type=encoder.media_type, headers=headers)

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
        view = render(record)
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


def _keyset(cursor: str | None, offset: int) -> tuple[datetime, str] | None:
    """The keyset a cursor stands for; a 422 naming the field for a bad one."""
    if cursor is None:
        return None
    try:
        if offset:
            raise ValueError("cursor and offset cannot be combined; pass one of them")
        return cursor_keyset(cursor)
    except ValueError as exc:
        raise RequestValidationError([{"loc": ("query", "cursor"), "msg": str(exc),
                                       "type": "value_error"}]) from None
