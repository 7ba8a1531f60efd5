"""Control-API routes of tracking: one payment, simulations, the ledger, the event view.

Thin on purpose: request models bound every value (so bad input is a 422 naming
the field, never a 500), each route delegates to ``Tracking`` and maps its
exceptions to 4xx/5xx answers. Money is a decimal *string* in every response;
field names are camelCase like BGMock's own JSON (requests also accept snake_case).
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from bgmock_twin.api.auth import require_token
from bgmock_twin.contract import TOPICS
from bgmock_twin.tracking.ledger import LedgerUnavailable, PaymentQuery
from bgmock_twin.tracking.lifecycle import FAILURE_KINDS, Channel, Kind
from bgmock_twin.tracking.load import FixturesUnavailable
from bgmock_twin.tracking.records import EXPORT_COLUMNS, PaymentRecord, export_row, record_of
from bgmock_twin.tracking.simulations import SimulationSpec, TooManySimulations

if TYPE_CHECKING:
    from bgmock_twin.tracking.service import Tracking

MAX_AMOUNT = Decimal("1000000000")
Amount = Annotated[Decimal, Field(gt=0, le=MAX_AMOUNT, max_digits=12, decimal_places=2)]
AccountNumber = Annotated[str, Field(min_length=1, max_length=64,
                                     pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Rate = Annotated[float, Field(gt=0, le=1000)]
Seconds = Annotated[float, Field(gt=0, le=86_400)]
FailureKind = Literal["insufficient_funds", "unknown_bankgood", "unknown_payee_account"]
STATUS_VALUES = Literal["in_flight", "success", "failed", "rejected", "stuck"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel,
                              allow_inf_nan=False)


class _Out(BaseModel):
    model_config = ConfigDict(populate_by_name=True, alias_generator=to_camel)


# --- requests ---------------------------------------------------------------------------------
class TransactionRequest(_In):
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


class RampRequest(_In):
    from_rate: float = Field(..., ge=0, le=1000, description="payments/s at the start")
    to_rate: Rate = Field(..., description="payments/s at the end and after")
    duration: Seconds = Field(..., description="seconds from from_rate to to_rate")


class SpikeRequest(_In):
    rate: Rate = Field(..., description="payments/s during the spike")
    start: float = Field(..., ge=0, le=86_400, description="seconds after the start")
    duration: Seconds = Field(..., description="seconds the spike lasts")


class SimulationRequest(_In):
    """A run of ``count`` payments. ``rate`` (payments/s) or the seed's fixed
    ``delay`` (seconds between payments) is the base rate of the constant and spike
    profiles; a ramp takes its rates from ``ramp``."""

    count: int = Field(..., ge=1, le=100_000)
    rate: Rate | None = None
    delay: float | None = Field(None, ge=0.5, le=10)
    profile: Literal["constant", "ramp", "spike"] = "constant"
    ramp: RampRequest | None = None
    spike: SpikeRequest | None = None
    channel: Literal["rest", "kafka"] = "rest"
    direction: Literal["a_to_b", "b_to_a", "both"] = "both"
    amount_min: Amount | None = None
    amount_max: Amount | None = None
    failure_share: float = Field(0.0, ge=0, le=1, description="share of deliberate failures")
    failure_kinds: list[FailureKind] | None = Field(None, min_length=1, max_length=3)
    name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[\w .:/-]+$")

    @model_validator(mode="after")
    def _consistent(self) -> SimulationRequest:
        if self.rate is not None and self.delay is not None:
            raise ValueError("give rate or delay, not both")
        if self.profile in ("constant", "spike") and self.rate is None and self.delay is None:
            raise ValueError(f"a {self.profile} profile needs rate or delay")
        if self.profile == "ramp" and self.ramp is None:
            raise ValueError("profile ramp needs ramp: {fromRate, toRate, duration}")
        if self.profile == "spike" and self.spike is None:
            raise ValueError("profile spike needs spike: {rate, start, duration}")
        if self.amount_min is not None and self.amount_max is not None and \
                self.amount_min > self.amount_max:
            raise ValueError("amount_min must not exceed amount_max")
        return self


# --- responses --------------------------------------------------------------------------------
class TimelineEntry(_Out):
    step: str
    at: datetime
    since_intended_seconds: float = Field(description="monotonic, from the intended send time")
    duration_seconds: float = Field(description="since the previous step seen")


class TransactionView(_Out):
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
    finished_at: datetime | None
    duration_seconds: float | None = Field(description="intended send to final step")
    timeline: list[TimelineEntry]


class TransactionPage(_Out):
    items: list[TransactionView]
    limit: int
    offset: int
    next_offset: int | None


class EventView(_Out):
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


class EventPage(_Out):
    items: list[EventView]


class SimulationSummary(_Out):
    id: str
    name: str | None
    state: str = Field(description="running, resuming, finished or stopped")
    created_at: str
    finished_at: str | None
    planned: int
    dispatched: int
    dropped: int
    unfinished: int
    channel: str
    profile: str


class SimulationList(_Out):
    items: list[SimulationSummary]


class Percentiles(_Out):
    """Nearest-rank percentiles in seconds (null when there is no value yet)."""

    count: int
    p50: float | None
    p95: float | None
    p99: float | None


class LagPercentiles(Percentiles):
    max: float | None


class Latency(_Out):
    total: Percentiles
    steps: dict[str, Percentiles]


class Progress(_Out):
    planned: int
    dispatched: int
    dropped: int
    not_yet_due: int
    recorded: int
    in_flight: int
    finished: int
    stuck_now: int


class SimulationDetail(SimulationSummary):
    spec: dict[str, Any]
    expected_duration_seconds: float
    resumed: bool
    progress: Progress
    outcomes: dict[str, int]
    current_status: dict[str, int]
    latency: Latency
    send_lag: LagPercentiles = Field(description="actual minus intended send time")


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
        message=record.message, finished_at=record.finished_at,
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


class JsonBodyRoute(APIRoute):
    """Reads a request body as JSON whatever content type it came with.

    ``curl -d '{"count": 500, "rate": 50}'`` sends its JSON as
    ``application/x-www-form-urlencoded``; FastAPI would then see a string where a
    JSON object is expected. The body is still validated against the model.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            kind = request.headers.get("content-type", "")
            if request.method in ("POST", "PUT", "PATCH") and "json" not in kind and \
                    (kind == "" or kind.startswith(("application/x-www-form-urlencoded",
                                                    "text/plain"))):
                headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
                request.scope["headers"] = [*headers, (b"content-type", b"application/json")]
                request.__dict__.pop("_headers", None)  # starlette caches the parsed headers
            return await handler(request)

        return route


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
        from bgmock_twin.tracking.service import SenderBusy

        req = request or TransactionRequest()
        try:
            payment = tracking.submit_one(
                from_bank=req.from_bank, to_bank=req.to_bank, from_account=req.from_account,
                to_account=req.to_account, amount=req.amount, channel=Channel(req.channel),
                kind=Kind(req.kind),
            )
        except FixturesUnavailable as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from None
        except SenderBusy as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from None
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
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

    @router.post(
        "/simulations", status_code=202, response_model=SimulationSummary,
        summary="Start a simulation (answers at once with its id)", dependencies=mutate,
        responses={409: {"description": "too many simulations running"},
                   503: {"description": "BGMock unreachable: accounts not provisioned"}},
    )
    def create_simulation(request: SimulationRequest) -> SimulationSummary:
        settings = tracking.settings
        kinds = tuple(Kind(k) for k in request.failure_kinds) if request.failure_kinds \
            else FAILURE_KINDS
        amount_min = request.amount_min or min(settings.load_amount_min,
                                               request.amount_max or settings.load_amount_min)
        amount_max = request.amount_max or max(settings.load_amount_max, amount_min)
        spec = SimulationSpec(
            count=request.count, amount_min=amount_min, amount_max=amount_max,
            profile=request.profile, rate=request.rate, delay=request.delay,
            ramp_from=request.ramp.from_rate if request.ramp else None,
            ramp_to=request.ramp.to_rate if request.ramp else None,
            ramp_duration=request.ramp.duration if request.ramp else None,
            spike_rate=request.spike.rate if request.spike else None,
            spike_start=request.spike.start if request.spike else None,
            spike_duration=request.spike.duration if request.spike else None,
            channel=Channel(request.channel), direction=request.direction,
            failure_share=request.failure_share, failure_kinds=kinds, name=request.name,
        )
        try:
            tracking.ensure_provisioned()
            sim = tracking.simulations.create(spec)
        except FixturesUnavailable as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from None
        except TooManySimulations as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        return SimulationSummary.model_validate(tracking.simulations.summary(sim))

    @router.get("/simulations", response_model=SimulationList,
                summary="Every simulation this twin knows, newest first")
    def list_simulations() -> SimulationList:
        return SimulationList(items=[SimulationSummary.model_validate(s)
                                     for s in tracking.simulations.summaries()])

    @router.get(
        "/simulations/{simulation_id}", response_model=SimulationDetail,
        responses={404: {"description": "unknown simulation"}},
        summary="Progress, outcomes so far and per-step latency percentiles",
    )
    def get_simulation(simulation_id: uuid.UUID) -> SimulationDetail:
        sim = tracking.simulations.get_sim(str(simulation_id))
        if sim is None:
            raise HTTPException(status_code=404, detail="no such simulation")
        try:
            return SimulationDetail.model_validate(tracking.simulations.detail(sim))
        except LedgerUnavailable as exc:
            raise _unavailable(exc) from None

    @router.delete(
        "/simulations/{simulation_id}", response_model=SimulationSummary,
        responses={404: {"description": "unknown simulation"}}, dependencies=mutate,
        summary="Stop a simulation (payments already sent are still followed)",
    )
    def stop_simulation(simulation_id: uuid.UUID) -> SimulationSummary:
        sim = tracking.simulations.stop(str(simulation_id))
        if sim is None:
            raise HTTPException(status_code=404, detail="no such simulation")
        return SimulationSummary.model_validate(tracking.simulations.summary(sim))

    return router
