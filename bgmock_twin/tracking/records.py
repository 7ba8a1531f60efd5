"""One typed read shape of a synthetic payment, whether it is followed live or read
back from the ledger.

``Payment`` is the tracker's mutable working state; the ledger stores rows. Readers
(the control API, tests, reports) get a ``PaymentRecord`` from either, so a live
payment is never turned into a database row just to be shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from bgmock_twin.contract import Channel, Status
from bgmock_twin.tracking.lifecycle import ALL_STEPS, Kind, Outcome, Payment, Route, Step


@dataclass(frozen=True, slots=True)
class StepRecord:
    """When a step was seen: UTC wall time, and seconds since the intended send time
    and since the previous step (the twin's monotonic clock)."""

    step: Step
    at: datetime
    since_intended: float
    duration: float


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    payment_id: str
    transaction_id: str | None
    simulation_id: str | None
    instance_id: str
    channel: Channel
    route: Route
    kind: Kind
    from_clearing: str
    from_account: str
    to_bankgood: str
    to_clearing: str
    to_account: str
    amount: Decimal
    intended_at: datetime
    status: str  # in_flight, success, failed, rejected or stuck
    state: str  # the furthest step reached, "submitted" before any
    outcome: Outcome | None
    counted_outcome: Outcome | None  # as counted in the metrics (once)
    final_status: Status | None
    stuck_step: Step | None
    message: str | None
    refusal_ambiguous: bool
    matched_by: str | None  # how its id was found without the 202 (``tracking.rematch``)
    finished_at: datetime | None
    timeline: tuple[StepRecord, ...]  # the steps seen, in flow order

    @property
    def finished(self) -> bool:
        return self.outcome in (Outcome.SUCCESS, Outcome.FAILED, Outcome.REJECTED)

    def step(self, step: Step) -> StepRecord | None:
        return next((s for s in self.timeline if s.step is step), None)

    @property
    def duration(self) -> float | None:
        """Seconds from the intended send time to the final step, for a payment that
        went all the way (success or failed); None otherwise."""
        if self.outcome not in (Outcome.SUCCESS, Outcome.FAILED):
            return None
        final = self.step(Step.COMPLETED if self.channel is Channel.KAFKA else Step.SETTLED)
        return final.since_intended if final is not None else None


def record_of(p: Payment) -> PaymentRecord:
    """The record of a payment the tracker follows now."""
    return PaymentRecord(
        payment_id=p.payment_id,
        transaction_id=str(p.transaction_id) if p.transaction_id else None,
        simulation_id=p.simulation_id,
        instance_id=p.instance_id,
        channel=Channel(p.channel.value),
        route=p.route,
        kind=p.kind,
        from_clearing=p.from_clearing,
        from_account=p.from_account,
        to_bankgood=p.to_bankgood,
        to_clearing=p.to_clearing,
        to_account=p.to_account,
        amount=p.amount,
        intended_at=p.intended_at,
        status=p.status,
        state=p.state,
        outcome=p.outcome,
        counted_outcome=p.counted,
        final_status=p.final_status,
        stuck_step=p.stuck_step,
        message=p.message,
        refusal_ambiguous=p.refusal_ambiguous,
        matched_by=p.matched_by,
        finished_at=p.finished_at,
        timeline=tuple(StepRecord(step, mark.at, mark.since_intended, mark.duration)
                       for step in ALL_STEPS if (mark := p.steps.get(step)) is not None),
    )


# A record as one flat row (the transaction list's CSV): its fields in the ledger's
# column order, then three columns per step.
EXPORT_FIELDS = (
    "payment_id", "transaction_id", "simulation_id", "instance_id", "channel", "route", "kind",
    "from_clearing", "from_account", "to_bankgood", "to_clearing", "to_account", "amount",
    "intended_at", "status", "state", "outcome", "counted_outcome", "final_status",
    "stuck_step", "message", "matched_by", "finished_at",
)
EXPORT_COLUMNS = (
    *EXPORT_FIELDS,
    *[f"{step.value}_{part}" for step in ALL_STEPS for part in ("at", "since", "seconds")],
)


def export_row(record: PaymentRecord) -> dict[str, Any]:
    """``record`` keyed by ``EXPORT_COLUMNS`` (the columns of steps not seen absent)."""
    row = {name: getattr(record, name) for name in EXPORT_FIELDS}
    for s in record.timeline:
        row.update({f"{s.step.value}_at": s.at, f"{s.step.value}_since": s.since_intended,
                    f"{s.step.value}_seconds": s.duration})
    return row
