"""One typed read shape of a synthetic payment, whether it is followed live or read
back from the ledger.

``Payment`` is the tracker's mutable working state; the ledger stores rows. Readers
(the control API, tests, reports) get a ``PaymentRecord`` from either, so a live
payment is never turned into a database row just to be shown.

A record's place in the list order (newest intended send time first, then payment id)
is also what a client holds between pages: ``cursor_of`` makes it an opaque token and
``cursor_keyset`` reads it back, refusing anything it did not make.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from bgmock_twin.contract import Channel, Status
from bgmock_twin.tracking.lifecycle import (
    ALL_STEPS,
    ClearingMark,
    Kind,
    Outcome,
    Payment,
    Route,
    Step,
)


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
    # without Kafka, the clearing's latest answer about a payment late to settle
    # (live payments only: not kept in the ledger)
    clearing: ClearingMark | None = None

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
        clearing=p.clearing,
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


# --- the cursor of the transaction list -------------------------------------------------------
_CURSOR_VERSION = "p1"


def cursor_of(record: PaymentRecord) -> str:
    """An opaque token for the place just after ``record`` in the list order."""
    text = f"{_CURSOR_VERSION}|{record.intended_at.astimezone(UTC).isoformat()}|" \
           f"{record.payment_id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def cursor_keyset(cursor: str) -> tuple[datetime, str]:
    """The (intended_at, payment_id) a cursor stands for; ``ValueError`` for anything
    ``cursor_of`` did not make."""
    if not 1 <= len(cursor) <= 200 or not cursor.isascii():
        raise ValueError("not a cursor of this list")
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, at_text, payment_id = text.split("|")
        at = datetime.fromisoformat(at_text)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a cursor of this list") from None
    if version != _CURSOR_VERSION or at.tzinfo is None or not 1 <= len(payment_id) <= 36:
        raise ValueError("not a cursor of this list")
    return at.astimezone(UTC), payment_id
