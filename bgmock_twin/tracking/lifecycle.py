"""The life of one synthetic payment: a pure state machine, no clocks and no I/O.

Every function takes the observation time from its caller (the twin's monotonic
clock for durations, UTC for timestamps) and returns a ``Change`` that says what
the caller must export or persist, so the rules below are unit-testable alone.

Steps (``Step``), measured from the payment's *intended* send time on the twin's
monotonic clock, never from service timestamps:

- REST channel: submitted (t=0) → accepted (the source bank's 202 with an id) →
  initiated → forwarded → processed → completed (the four topics) → settled (the
  source bank's outgoing transaction read back with a final status). The final
  step is ``settled``.
- Kafka channel: the twin writes the OutgoingTransactionEvent to
  ``transactions.initiated`` itself, so there is no source-bank 202 and the source
  bank ignores ``transactions.completed`` (it has no such transaction). The steps
  are initiated (the twin sees its own event come back) → forwarded → processed →
  completed, and the final step is ``completed``.
- Without Kafka (REST polling, ``tracking.rest_follower``) the four event steps
  cannot be seen: they are the payment's ``hidden`` steps, never invented, and the
  flow is accepted → settled.
- An unknown bankgood number skips forwarded and processed: the clearing answers
  ``completed`` FAILED directly. Waiting is always for the step after the furthest
  one seen, so skipped steps are never waited for.

Outcomes (``Outcome``): ``success`` / ``failed`` follow the status of the final
step; ``rejected`` means the source refused the payment outright (the bank's
202-then-FAILED without any event, an error answer or no connection at all / the
Kafka write was never queued). A request that reached the bank but whose answer
never came (read timeout), or a Kafka write queued but not confirmed, is not a
refusal - the payment may have moved money - so it stays unfinished instead.

Repeats and disorder: delivery is at least once and the four topics are read
independently, so a step seen twice is a repeat (ignored), and a step may arrive
before an earlier one. A step's duration is the time since the latest step seen
*before it in the flow* (clamped at zero), so disorder never yields negative
durations.

Stuck and SLA, two separate things:

- *Stuck* is a live state: a payment whose awaited step has not come within
  ``step_deadline`` of the previous one is stuck at the awaited step (the
  ``bgmock_payments_stuck{step}`` gauge). It stops being stuck when a later step
  arrives.
- *Outcome counting* happens exactly once per payment, at the first of: it
  finishes (success, failed, rejected), or it passes the payment SLA unfinished
  (counted ``stuck``). A payment counted ``stuck`` that finishes later is still
  completed in the ledger and API (``outcome`` becomes its real outcome,
  ``counted`` stays ``stuck``), but the counter is not incremented twice, so
  ``sum(completed_total) == submitted_total`` once nothing is in flight.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from bgmock_twin.contract import (
    BANK_A,
    BANK_B,
    TOPIC_COMPLETED,
    TOPIC_FORWARDED,
    TOPIC_INITIATED,
    TOPIC_PROCESSED,
    Bank,
    Channel,
    Status,
)

__all__ = [
    "ALL_STEPS", "FAILURE_KINDS", "FINISHED_OUTCOMES", "KAFKA_STEPS", "REST_STEPS", "TOPIC_STEP",
    "Change", "Channel", "ClearingMark", "Kind", "Outcome", "Payment", "Route", "Step", "StepMark",
    "check_deadline", "final_step", "observe_step", "reject", "steps_of",
]


class Route(StrEnum):
    """Which way the money goes between the two banks."""

    A_TO_B = "a_to_b"
    B_TO_A = "b_to_a"

    @property
    def source(self) -> Bank:
        return BANK_A if self is Route.A_TO_B else BANK_B

    @property
    def destination(self) -> Bank:
        return self.source.other


class Kind(StrEnum):
    """What the twin meant the payment to do."""

    NORMAL = "normal"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    UNKNOWN_BANKGOOD = "unknown_bankgood"
    UNKNOWN_PAYEE_ACCOUNT = "unknown_payee_account"


FAILURE_KINDS = (Kind.INSUFFICIENT_FUNDS, Kind.UNKNOWN_BANKGOOD, Kind.UNKNOWN_PAYEE_ACCOUNT)


class Step(StrEnum):
    ACCEPTED = "accepted"
    INITIATED = "initiated"
    FORWARDED = "forwarded"
    PROCESSED = "processed"
    COMPLETED = "completed"
    SETTLED = "settled"


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILED = "failed"
    REJECTED = "rejected"
    STUCK = "stuck"


# a step's name as text without ``Enum.value`` (a Python-level property; this is a
# dict lookup, for the paths that run for every event)
STEP_NAME: dict[Step, str] = {step: step.value for step in Step}

REST_STEPS = (
    Step.ACCEPTED, Step.INITIATED, Step.FORWARDED, Step.PROCESSED, Step.COMPLETED, Step.SETTLED,
)
KAFKA_STEPS = (Step.INITIATED, Step.FORWARDED, Step.PROCESSED, Step.COMPLETED)
ALL_STEPS = REST_STEPS
TOPIC_STEP = {
    TOPIC_INITIATED: Step.INITIATED,
    TOPIC_FORWARDED: Step.FORWARDED,
    TOPIC_PROCESSED: Step.PROCESSED,
    TOPIC_COMPLETED: Step.COMPLETED,
}
FINISHED_OUTCOMES = (Outcome.SUCCESS, Outcome.FAILED, Outcome.REJECTED)


def steps_of(channel: Channel) -> tuple[Step, ...]:
    return REST_STEPS if channel is Channel.REST else KAFKA_STEPS


def final_step(channel: Channel) -> Step:
    return steps_of(channel)[-1]


@dataclass(slots=True)
class StepMark:
    """When the twin saw a step: UTC wall time, and on the monotonic clock the
    seconds since the intended send time and since the previous step."""

    at: datetime
    since_intended: float
    duration: float


@dataclass(frozen=True, slots=True)
class ClearingMark:
    """What the clearing said of a payment when the twin asked it over REST
    (``PENDING``, ``SUCCESS``, ``FAILED``, or ``unknown`` when it had no such
    transaction), timed on the twin's monotonic clock from the intended send time.
    Without Kafka this is where a payment late to settle is: not at the clearing
    (its initiated event not consumed), PENDING there (forwarded or processed on
    their way), final there (the source bank has not applied completed)."""

    status: str
    at: datetime
    since_intended: float


@dataclass(slots=True)
class Payment:
    payment_id: str
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
    intended_mono: float
    simulation_id: str | None = None
    instance_id: str = ""
    transaction_id: uuid.UUID | None = None
    steps: dict[Step, StepMark] = field(default_factory=dict)
    final_status: Status | None = None
    outcome: Outcome | None = None
    counted: Outcome | None = None
    stuck_step: Step | None = None
    message: str | None = None
    finished_at: datetime | None = None
    refusal_ambiguous: bool = False  # rejected, but the request may have arrived
    # steps the twin cannot see in its mode (no Kafka): never waited for, never invented
    hidden: frozenset[Step] = frozenset()
    clearing: ClearingMark | None = None  # the latest answer of the clearing (live only)
    # how its transaction id was learnt when the 202 never reached the twin
    # (``tracking.rematch``): None for the 202 itself
    matched_by: str | None = None

    @property
    def sequence(self) -> tuple[Step, ...]:
        steps = REST_STEPS if self.channel is Channel.REST else KAFKA_STEPS
        if not self.hidden:
            return steps
        return tuple(step for step in steps if step not in self.hidden)

    @property
    def finished(self) -> bool:
        return self.outcome in FINISHED_OUTCOMES

    @property
    def furthest(self) -> Step | None:
        """The furthest step along the flow seen so far."""
        seen = self.steps
        if not seen:
            return None
        for step in reversed(self.sequence):
            if step in seen:
                return step
        return None

    @property
    def awaited(self) -> Step | None:
        """The step the payment waits for next (None once finished)."""
        if self.finished:
            return None
        sequence = self.sequence
        furthest = self.furthest
        if furthest is None:
            return sequence[0]
        index = sequence.index(furthest)
        return sequence[index + 1] if index + 1 < len(sequence) else None

    @property
    def status(self) -> str:
        """One word for the API: the outcome when finished, ``stuck`` once past the
        SLA, else ``in_flight``."""
        if self.finished:
            assert self.outcome is not None
            return self.outcome.value
        if self.counted is Outcome.STUCK:
            return Outcome.STUCK.value
        return "in_flight"

    @property
    def state(self) -> str:
        """The furthest step reached (``submitted`` before any)."""
        furthest = self.furthest
        return STEP_NAME[furthest] if furthest is not None else "submitted"

    @property
    def last_progress(self) -> float:
        """Seconds after the intended send time of the furthest step (0 if none)."""
        furthest = self.furthest
        return self.steps[furthest].since_intended if furthest is not None else 0.0


@dataclass(slots=True)
class Change:
    """What one observation changed, for the caller to export and persist."""

    new_step: Step | None = None
    step_duration: float | None = None
    repeat: bool = False
    finished: Outcome | None = None
    counted: Outcome | None = None
    total_duration: float | None = None
    stuck: Step | None = None
    unstuck: Step | None = None

    @property
    def changed(self) -> bool:
        return any((self.new_step, self.finished, self.counted, self.stuck, self.unstuck))


def row_summary(payment: Payment) -> tuple[object, ...]:
    """The columns of a payment's row a step may change besides its furthest step."""
    return (payment.transaction_id, payment.message, payment.final_status,
            payment.matched_by)


def only_furthest_step(change: Change, before: tuple[object, ...], payment: Payment) -> bool:
    """Whether an observation moved nothing in the payment's row but its furthest step
    (``before``: its ``row_summary`` ahead of it): the ledger then updates no other
    column."""
    return change.finished is None and change.counted is None and change.stuck is None \
        and change.unstuck is None and row_summary(payment) == before


def observe_step(
    payment: Payment,
    step: Step,
    now_mono: float,
    now_utc: datetime,
    status: Status | None = None,
    message: str | None = None,
) -> Change:
    """Record that ``step`` was seen; finish the payment if it is the final step."""
    sequence = payment.sequence
    if step not in sequence or step in payment.steps:
        return Change(repeat=True)
    since = now_mono - payment.intended_mono
    position = sequence.index(step)
    before = [payment.steps[s].since_intended for s in sequence[:position] if s in payment.steps]
    duration = max(0.0, since - max(before, default=0.0))
    payment.steps[step] = StepMark(now_utc, max(0.0, since), duration)
    change = Change(new_step=step, step_duration=duration)
    if payment.stuck_step is not None and sequence.index(payment.stuck_step) <= position:
        change.unstuck = payment.stuck_step
        payment.stuck_step = None
    if status is Status.FAILED and message and payment.message is None:
        payment.message = message[:255]
    if step is Step.COMPLETED and status is not None:
        payment.final_status = status
    if step is final_step(payment.channel) and not payment.finished:
        if step is Step.SETTLED and status is not None:
            completed = payment.final_status
            if completed is not None and completed is not status and payment.message is None:
                payment.message = f"completed {completed.value} but settled {status.value}"
            payment.final_status = status
        outcome = Outcome.SUCCESS if payment.final_status is Status.SUCCESS else Outcome.FAILED
        _finish(payment, outcome, now_utc, change)
        change.total_duration = payment.steps[step].since_intended
    return change


def reject(payment: Payment, reason: str, now_utc: datetime, ambiguous: bool = False) -> Change:
    """The source refused the payment: it will never produce an event. ``ambiguous``:
    the request may have reached BGMock after all (``tracking.refusals``)."""
    change = Change()
    if payment.finished:
        return Change(repeat=True)
    payment.final_status = Status.FAILED
    payment.refusal_ambiguous = ambiguous
    if payment.message is None:
        payment.message = reason[:255]
    if payment.stuck_step is not None:
        change.unstuck = payment.stuck_step
        payment.stuck_step = None
    _finish(payment, Outcome.REJECTED, now_utc, change)
    return change


def _finish(payment: Payment, outcome: Outcome, now_utc: datetime, change: Change) -> None:
    payment.outcome = outcome
    payment.finished_at = now_utc
    change.finished = outcome
    if payment.stuck_step is not None:
        change.unstuck = payment.stuck_step
        payment.stuck_step = None
    if payment.counted is None:
        payment.counted = outcome
        change.counted = outcome


def check_deadline(
    payment: Payment, now_mono: float, step_deadline: float, sla: float
) -> Change:
    """Mark the payment stuck at its awaited step once the step deadline passed, and
    count it ``stuck`` once it passed the SLA unfinished."""
    change = Change()
    if payment.finished:
        return change
    elapsed = now_mono - payment.intended_mono
    awaited = payment.awaited
    if awaited is not None and elapsed - payment.last_progress > step_deadline \
            and payment.stuck_step is not awaited:
        if payment.stuck_step is not None:
            change.unstuck = payment.stuck_step
        payment.stuck_step = awaited
        change.stuck = awaited
    if elapsed > sla and payment.counted is None:
        payment.counted = Outcome.STUCK
        change.counted = Outcome.STUCK
    return change
