"""Control-API routes of simulations: start, list, follow and stop runs of payments.

Each route hands ``SimulationManager`` a typed spec or id and renders its typed
answer (``tracking.simulations``) in the API's camelCase; refusals are the domain's
errors, mapped to status codes by ``api/errors.py``.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import Field, model_validator
from pydantic.alias_generators import to_camel

from bgmock_twin.api.auth import require_token
from bgmock_twin.api.wire import (
    MAX_RATE,
    Amount,
    JsonBodyRoute,
    Rate,
    Seconds,
    WireRequest,
    WireResponse,
)
from bgmock_twin.tracking import simulation_report as report
from bgmock_twin.tracking import simulation_spec as spec_domain
from bgmock_twin.tracking import simulations as domain
from bgmock_twin.tracking.lifecycle import FAILURE_KINDS, Channel, Kind
from bgmock_twin.tracking.service import Tracking

FailureKind = Literal["insufficient_funds", "unknown_bankgood", "unknown_payee_account"]


# --- requests ---------------------------------------------------------------------------------
class RampRequest(WireRequest):
    from_rate: float = Field(..., ge=0, le=MAX_RATE, description="payments/s at the start")
    to_rate: Rate = Field(..., description="payments/s at the end and after")
    duration: Seconds = Field(..., description="seconds from from_rate to to_rate")


class SpikeRequest(WireRequest):
    rate: Rate = Field(..., description="payments/s during the spike")
    start: float = Field(..., ge=0, le=86_400, description="seconds after the start")
    duration: Seconds = Field(..., description="seconds the spike lasts")


class WaveRequest(WireRequest):
    """rate(t) = baseRate + amplitude * sin(2*pi*t / periodSeconds), never below 0."""

    base_rate: Rate = Field(..., description="payments/s the wave rises and falls around")
    amplitude: float = Field(..., ge=0, le=MAX_RATE, description="payments/s above and below")
    period_seconds: Seconds = Field(..., description="seconds of one rise and fall")


class SimulationRequest(WireRequest):
    """A run of ``count`` payments, or of the payments its profile has due within
    ``duration`` seconds (exactly one of the two). ``rate`` (payments/s) or the
    seed's fixed ``delay`` (seconds between payments) is the base rate of the
    constant and spike profiles; a ramp takes its rates from ``ramp``, a wave from
    ``wave``."""

    count: int | None = Field(None, ge=1, le=spec_domain.MAX_COUNT)
    duration: Seconds | None = Field(
        None, description="seconds to send for, instead of count: the count is the "
        "profile's integral over them, rounded up")
    rate: Rate | None = None
    delay: float | None = Field(None, ge=0.5, le=10)
    profile: Literal["constant", "ramp", "spike", "wave"] = "constant"
    ramp: RampRequest | None = None
    spike: SpikeRequest | None = None
    wave: WaveRequest | None = None
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

    @model_validator(mode="after")
    def _size_and_wave(self) -> SimulationRequest:
        if (self.count is None) == (self.duration is None):
            raise ValueError("give exactly one of count (payments) and duration (seconds)")
        if self.profile == "wave" and self.wave is None:
            raise ValueError("profile wave needs wave: {baseRate, amplitude, periodSeconds}")
        return self


# --- responses --------------------------------------------------------------------------------
class SimulationSummary(WireResponse):
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
    duration_seconds: float | None = Field(description="the duration asked for, if any")
    achieved_rate: float | None = Field(
        description="payments dispatched per second of sending (null before any)")


class SimulationList(WireResponse):
    items: list[SimulationSummary]


class Percentiles(WireResponse):
    """Exact statistics in seconds, percentiles nearest-rank (null when there is no
    value yet)."""

    count: int
    min: float | None
    mean: float | None
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    max: float | None


class LagPercentiles(Percentiles):
    pass


class Results(WireResponse):
    """The figures the client's thresholds read (``success_ratio`` and so on)."""

    achieved_rate: float | None
    sending_seconds: float | None
    dispatched: int
    dropped: int
    success: int
    failed: int
    rejected: int
    stuck: int
    unfinished: int
    success_ratio: float | None
    error_ratio: float | None
    drop_ratio: float | None


class Latency(WireResponse):
    total: Percentiles
    steps: dict[str, Percentiles]


class Progress(WireResponse):
    planned: int
    dispatched: int
    dropped: int
    not_yet_due: int
    recorded: int
    in_flight: int
    finished: int
    stuck_now: int


class ReplicaShare(WireResponse):
    """One replica's part of a simulation, as it last reported it (every replica
    writes its share to the ledger as it changes)."""

    instance_id: str
    dispatched: int
    dropped: int
    sent: int
    live: bool = Field(description="the replica's lease in the ledger is current")
    updated_at: str


class SimulationDetail(SimulationSummary):
    spec: dict[str, Any]
    expected_duration_seconds: float
    resumed: bool
    progress: Progress
    outcomes: dict[str, int]
    current_status: dict[str, int]
    latency: Latency
    send_lag: LagPercentiles = Field(description="actual minus intended send time")
    results: Results = Field(description="threshold-ready figures of the run")
    shares: list[ReplicaShare] = Field(
        description="each replica's share: replicas on one PostgreSQL ledger run a "
                    "simulation together; a lone twin's is its own")


# --- conversions ------------------------------------------------------------------------------
def simulation_spec(request: SimulationRequest,
                    tracking: Tracking) -> spec_domain.SimulationSpec:
    """The domain's spec of a request; unset amounts come from the twin's settings."""
    settings = tracking.settings
    kinds = tuple(Kind(k) for k in request.failure_kinds) if request.failure_kinds \
        else FAILURE_KINDS
    amount_min = request.amount_min or min(settings.load_amount_min,
                                           request.amount_max or settings.load_amount_min)
    amount_max = request.amount_max or max(settings.load_amount_max, amount_min)
    spec = spec_domain.SimulationSpec(
        count=request.count or 1, amount_min=amount_min, amount_max=amount_max,
        profile=request.profile, rate=request.rate, delay=request.delay,
        ramp_from=request.ramp.from_rate if request.ramp else None,
        ramp_to=request.ramp.to_rate if request.ramp else None,
        ramp_duration=request.ramp.duration if request.ramp else None,
        spike_rate=request.spike.rate if request.spike else None,
        spike_start=request.spike.start if request.spike else None,
        spike_duration=request.spike.duration if request.spike else None,
        wave_base=request.wave.base_rate if request.wave else None,
        wave_amplitude=request.wave.amplitude if request.wave else None,
        wave_period=request.wave.period_seconds if request.wave else None,
        channel=Channel(request.channel), direction=request.direction,
        failure_share=request.failure_share, failure_kinds=kinds, name=request.name,
    )
    if request.duration is not None:
        return spec_domain.sized_by_duration(spec, request.duration)
    return spec


def _summary_fields(summary: domain.SimulationSummary) -> dict[str, Any]:
    return {
        "id": summary.simulation_id, "name": summary.name, "state": summary.state,
        "created_at": summary.created_at.isoformat(),
        "finished_at": summary.finished_at.isoformat() if summary.finished_at else None,
        "planned": summary.planned, "dispatched": summary.dispatched,
        "dropped": summary.dropped, "unfinished": summary.unfinished,
        "channel": summary.channel.value, "profile": summary.profile,
        "duration_seconds": summary.duration_seconds, "achieved_rate": summary.achieved_rate,
    }


def summary_view(summary: domain.SimulationSummary) -> SimulationSummary:
    return SimulationSummary(**_summary_fields(summary))


def _percentiles(p: report.Percentiles) -> Percentiles:
    return Percentiles(count=p.count, min=p.min, mean=p.mean, p50=p.p50, p90=p.p90,
                       p95=p.p95, p99=p.p99, max=p.max)


def detail_view(detail: domain.SimulationDetail) -> SimulationDetail:
    lag = detail.send_lag
    return SimulationDetail(
        **_summary_fields(detail.summary),
        spec={to_camel(k): v for k, v in detail.spec.fields().items()},
        expected_duration_seconds=detail.expected_duration_seconds,
        resumed=detail.resumed,
        progress=Progress.model_validate(detail.progress, from_attributes=True),
        outcomes=detail.outcomes,
        current_status=detail.current_status,
        latency=Latency(total=_percentiles(detail.latency.total),
                        steps={k: _percentiles(v) for k, v in detail.latency.steps.items()}),
        send_lag=LagPercentiles.model_validate(_percentiles(lag).model_dump()),
        results=Results.model_validate(detail.results, from_attributes=True),
        shares=[ReplicaShare(instance_id=s.instance_id, dispatched=s.dispatched,
                             dropped=s.dropped, sent=s.sent, live=s.live,
                             updated_at=s.updated_at.isoformat()) for s in detail.shares],
    )


# --- routes -----------------------------------------------------------------------------------
def build_simulation_router(tracking: Tracking) -> APIRouter:
    router = APIRouter(tags=["tracking"], route_class=JsonBodyRoute)
    mutate = [Depends(require_token)]
    simulations = tracking.simulations

    @router.post(
        "/simulations", status_code=202, response_model=SimulationSummary,
        summary="Start a simulation (answers at once with its id)", dependencies=mutate,
        responses={202: {"description": "started", "headers": {"Location": {
                       "description": "the new simulation: /api/v1/simulations/{id}",
                       "schema": {"type": "string"}}}},
                   409: {"description": "too many simulations running, or the kafka "
                              "channel asked of a twin without Kafka"},
                   503: {"description": "BGMock unreachable: accounts not provisioned"}},
    )
    def create_simulation(request: SimulationRequest, http: Request,
                          response: Response) -> SimulationSummary:
        spec = simulation_spec(request, tracking)
        tracking.require_channel(spec.channel)  # no Kafka: the kafka channel is refused
        tracking.ensure_provisioned()
        created = simulations.summary(simulations.create(spec))
        response.headers["Location"] = f"{http.url.path.rstrip('/')}/{created.simulation_id}"
        return summary_view(created)

    @router.get("/simulations", response_model=SimulationList,
                summary="Every simulation this twin knows, newest first")
    def list_simulations() -> SimulationList:
        return SimulationList(items=[summary_view(s) for s in simulations.summaries()])

    @router.get(
        "/simulations/{simulation_id}", response_model=SimulationDetail,
        responses={404: {"description": "unknown simulation"},
                   503: {"description": "ledger unavailable"}},
        summary="Progress, outcomes so far and per-step latency percentiles",
    )
    def get_simulation(simulation_id: uuid.UUID) -> SimulationDetail:
        return detail_view(simulations.detail(simulations.get(str(simulation_id))))

    @router.delete(
        "/simulations/{simulation_id}", response_model=SimulationSummary,
        responses={404: {"description": "unknown simulation"}}, dependencies=mutate,
        summary="Stop a simulation (payments already sent are still followed)",
    )
    def stop_simulation(simulation_id: uuid.UUID) -> SimulationSummary:
        return summary_view(simulations.summary(simulations.stop(str(simulation_id))))

    return router
