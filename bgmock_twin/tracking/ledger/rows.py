"""A payment as one ledger row and back (pure functions).

A payment is one flat mapping: its row of ``twin_payments`` and, as
``<step>_at/_since/_seconds`` keys, the steps kept in ``twin_payment_steps`` (the
readers in ``queries`` fold them back in). The mapping lives in one place: the
store writes what ``payment_row`` returns when a payment is registered and what
``state_of``/``step_of`` return for each change after that, a restarted twin
rebuilds its payments in flight with ``payment_from_row``, and readers get the row
as a ``PaymentRecord`` (``record_from_row``).
"""

from __future__ import annotations

import sys
import uuid
from datetime import datetime
from typing import Any

from bgmock_twin.contract import Status
from bgmock_twin.tracking.ledger.schema import step_keys
from bgmock_twin.tracking.lifecycle import (
    ALL_STEPS,
    STEP_NAME,
    Channel,
    Kind,
    Outcome,
    Payment,
    Route,
    Step,
    StepMark,
)
from bgmock_twin.tracking.records import PaymentRecord, StepRecord

# Each step and its keys in the flat mapping (``schema.step_keys``), spelled once:
# formatting them per payment and step cost 8 us of a payment row's 10-16 us.
STEP_KEYS = tuple((step, *step_keys(step.value)) for step in ALL_STEPS)


def payment_row(p: Payment, now_utc: datetime) -> dict[str, Any]:
    """The whole row of ``p`` as stored at ``now_utc`` (its ``updated_at``)."""
    row: dict[str, Any] = {
        "payment_id": p.payment_id,
        "transaction_id": str(p.transaction_id) if p.transaction_id else None,
        "simulation_id": p.simulation_id,
        "instance_id": p.instance_id,
        "channel": p.channel.value,
        "route": p.route.value,
        "kind": p.kind.value,
        "from_clearing": p.from_clearing,
        "from_account": p.from_account,
        "to_bankgood": p.to_bankgood,
        "to_clearing": p.to_clearing,
        "to_account": p.to_account,
        "amount": p.amount,
        "intended_at": p.intended_at,
        "status": p.status,
        "state": p.state,
        "finished": p.finished,
        "outcome": p.outcome.value if p.outcome else None,
        "counted_outcome": p.counted.value if p.counted else None,
        "final_status": p.final_status.value if p.final_status else None,
        "stuck_step": p.stuck_step.value if p.stuck_step else None,
        "message": p.message,
        "refusal_ambiguous": p.refusal_ambiguous,
        "matched_by": p.matched_by,
        "finished_at": p.finished_at,
        "updated_at": now_utc,
    }
    marks = p.steps
    for step, at_key, since_key, seconds_key in STEP_KEYS:
        mark = marks.get(step)
        if mark is None:
            row[at_key] = row[since_key] = row[seconds_key] = None
        else:
            row[at_key], row[since_key], row[seconds_key] = \
                mark.at, mark.since_intended, mark.duration
    return row


def state_of(p: Payment, now_utc: datetime) -> tuple[Any, ...]:
    """The values of ``schema.STATE_COLUMNS`` (what changes after registration)."""
    outcome, counted, final, stuck = p.outcome, p.counted, p.final_status, p.stuck_step
    return (
        str(p.transaction_id) if p.transaction_id else None,
        p.status,
        p.state,
        p.finished,
        outcome.value if outcome else None,
        counted.value if counted else None,
        final.value if final else None,
        stuck.value if stuck else None,
        p.message,
        p.refusal_ambiguous,
        p.matched_by,
        p.finished_at,
        now_utc,
    )


def step_of(p: Payment, step: Step) -> tuple[str, datetime, float, float] | None:
    """One step of ``p`` as a ``twin_payment_steps`` row (without the payment id)."""
    mark = p.steps.get(step)
    return (STEP_NAME[step], mark.at, mark.since_intended, mark.duration) if mark else None


def payment_from_row(row: dict[str, Any], now_mono: float, now_utc: datetime) -> Payment:
    """A payment read back after a restart. Its intended send time is re-anchored on
    this process's monotonic clock through the wall clock (the only clock shared
    with the previous process)."""
    intended_at: datetime = row["intended_at"]
    steps = {}
    for step, at_key, since_key, seconds_key in STEP_KEYS:
        at = row.get(at_key)
        if at is not None:
            steps[step] = StepMark(
                at, float(row.get(since_key) or 0.0), float(row.get(seconds_key) or 0.0))
    return Payment(
        payment_id=row["payment_id"],
        channel=Channel(row["channel"]),
        route=Route(row["route"]),
        kind=Kind(row["kind"]),
        # the few accounts and numbers every payment repeats, one string each (a
        # restart reads back up to 200k payments: 40 MB of copies otherwise)
        from_clearing=sys.intern(row["from_clearing"]),
        from_account=sys.intern(row["from_account"]),
        to_bankgood=sys.intern(row["to_bankgood"]),
        to_clearing=sys.intern(row["to_clearing"]),
        to_account=sys.intern(row["to_account"]),
        amount=row["amount"],
        intended_at=intended_at,
        intended_mono=now_mono - (now_utc - intended_at).total_seconds(),
        simulation_id=sys.intern(row["simulation_id"]) if row["simulation_id"] else None,
        instance_id=sys.intern(row["instance_id"]),
        transaction_id=uuid.UUID(row["transaction_id"]) if row["transaction_id"] else None,
        steps=steps,
        final_status=Status(row["final_status"]) if row["final_status"] else None,
        outcome=Outcome(row["outcome"]) if row["outcome"] else None,
        counted=Outcome(row["counted_outcome"]) if row["counted_outcome"] else None,
        stuck_step=Step(row["stuck_step"]) if row["stuck_step"] else None,
        message=row["message"],
        finished_at=row["finished_at"],
        refusal_ambiguous=bool(row["refusal_ambiguous"]),
        matched_by=row.get("matched_by"),
    )


def record_from_row(row: dict[str, Any]) -> PaymentRecord:
    """A stored payment as readers see it."""
    return PaymentRecord(
        payment_id=row["payment_id"],
        transaction_id=row["transaction_id"],
        simulation_id=row["simulation_id"],
        instance_id=row["instance_id"],
        channel=Channel(row["channel"]),
        route=Route(row["route"]),
        kind=Kind(row["kind"]),
        from_clearing=row["from_clearing"],
        from_account=row["from_account"],
        to_bankgood=row["to_bankgood"],
        to_clearing=row["to_clearing"],
        to_account=row["to_account"],
        amount=row["amount"],
        intended_at=row["intended_at"],
        status=row["status"],
        state=row["state"],
        outcome=Outcome(row["outcome"]) if row["outcome"] else None,
        counted_outcome=Outcome(row["counted_outcome"]) if row["counted_outcome"] else None,
        final_status=Status(row["final_status"]) if row["final_status"] else None,
        stuck_step=Step(row["stuck_step"]) if row["stuck_step"] else None,
        message=row["message"],
        refusal_ambiguous=bool(row["refusal_ambiguous"]),
        matched_by=row.get("matched_by"),
        finished_at=row["finished_at"],
        timeline=tuple(
            StepRecord(step, row[at_key], float(row[since_key] or 0.0),
                       float(row[seconds_key] or 0.0))
            for step, at_key, since_key, seconds_key in STEP_KEYS if row[at_key] is not None
        ),
    )
