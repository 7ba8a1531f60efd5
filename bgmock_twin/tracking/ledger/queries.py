"""What the rest of the twin asks the ledger: payments by filter or id, counts and
durations of a simulation, what to resume after a restart, an account's history.

Plain reads through the engine, each raising ``LedgerUnavailable`` when the database
cannot answer; nothing here writes. Reads of many payments come in bounded chunks
(``payment_row_chunks``): each chunk is one short statement on a pooled connection of
its own, taken up after the last row of the one before (keyset), so a large export
never holds a transaction, a snapshot or more than one chunk in memory, and the
ledger's writer is never kept waiting behind it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bgmock_twin.contract import Channel
from bgmock_twin.tracking.ledger.schema import deposits, payments, simulations
from bgmock_twin.tracking.ledger.store import LedgerUnavailable, short_error
from bgmock_twin.tracking.lifecycle import ALL_STEPS, Outcome


@dataclass(frozen=True, slots=True)
class PaymentQuery:
    status: str | None = None
    simulation_id: str | None = None
    since: datetime | None = None
    channel: str | None = None
    route: str | None = None
    limit: int | None = 100  # None: every matching payment
    offset: int = 0
    after: tuple[datetime, str] | None = None  # keyset: (intended_at, payment_id) seen last


def read(engine: Engine, statement: Any) -> list[dict[str, Any]]:
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(statement)]
    except Exception as exc:
        raise LedgerUnavailable(short_error(exc)) from None


def unfinished(engine: Engine, instance_id: str, limit: int) -> list[dict[str, Any]]:
    """This instance's payments still in flight (replicas sharing a ledger each
    follow only their own)."""
    return read(engine, sa.select(payments)
                .where(payments.c.finished.is_(False), payments.c.instance_id == instance_id)
                .order_by(payments.c.intended_at).limit(limit))


def recent_finished(engine: Engine, instance_id: str, since: datetime,
                    limit: int) -> list[dict[str, Any]]:
    return read(engine, sa.select(payments)
                .where(payments.c.finished.is_(True), payments.c.instance_id == instance_id,
                       payments.c.intended_at >= since)
                .order_by(payments.c.intended_at.desc()).limit(limit))


def known_transactions(engine: Engine, transaction_ids: list[str]) -> set[str]:
    """Which of these BGMock transaction ids some ledger row already holds."""
    if not transaction_ids:
        return set()
    return {str(row["transaction_id"]) for row in read(engine, sa.select(
        payments.c.transaction_id).where(payments.c.transaction_id.in_(transaction_ids)))}


def _matching(q: PaymentQuery) -> Any:
    """The payments matching ``q``'s filters and keyset, in the list's total order:
    newest intended send time first, then payment id."""
    statement = sa.select(payments)
    if q.status:
        statement = statement.where(payments.c.status == q.status)
    if q.simulation_id:
        statement = statement.where(payments.c.simulation_id == q.simulation_id)
    if q.since:
        statement = statement.where(payments.c.intended_at >= q.since)
    if q.channel:
        statement = statement.where(payments.c.channel == q.channel)
    if q.route:
        statement = statement.where(payments.c.route == q.route)
    if q.after is not None:
        at, payment_id = q.after
        statement = statement.where(sa.or_(
            payments.c.intended_at < at,
            sa.and_(payments.c.intended_at == at, payments.c.payment_id > payment_id)))
    return statement.order_by(payments.c.intended_at.desc(), payments.c.payment_id)


def payment_rows(engine: Engine, q: PaymentQuery) -> list[dict[str, Any]]:
    """Payments matching ``q``, newest first (a bounded page: ``q.limit`` must be set)."""
    return read(engine, _matching(q).limit(q.limit).offset(q.offset))


def payment_row_chunks(engine: Engine, q: PaymentQuery,
                       chunk_size: int) -> Iterator[list[dict[str, Any]]]:
    """Payments matching ``q``, newest first, ``chunk_size`` rows at a time, at most
    ``q.limit`` in all (every one when None). Each chunk is its own short read, which
    resumes after the last row of the previous one; a payment written meanwhile
    further on in the order is still seen, one written before it is not."""
    remaining, offset, after = q.limit, q.offset, q.after
    while remaining is None or remaining > 0:
        size = chunk_size if remaining is None else min(chunk_size, remaining)
        chunk_query = PaymentQuery(q.status, q.simulation_id, q.since, q.channel, q.route,
                                   after=after)
        rows = read(engine, _matching(chunk_query).limit(size).offset(offset))
        if rows:
            yield rows
        if len(rows) < size:
            return
        offset = 0
        after = (rows[-1]["intended_at"], rows[-1]["payment_id"])
        if remaining is not None:
            remaining -= len(rows)


def payment_row_by_id(engine: Engine, identifier: str) -> dict[str, Any] | None:
    """One payment by its payment id or its BGMock transaction id."""
    rows = read(engine, sa.select(payments).where(
        sa.or_(payments.c.payment_id == identifier,
               payments.c.transaction_id == identifier)).limit(1))
    return rows[0] if rows else None


def count_by_status(engine: Engine, simulation_id: str | None = None) -> dict[str, int]:
    statement = sa.select(payments.c.status, sa.func.count().label("n")) \
        .group_by(payments.c.status)
    if simulation_id is not None:
        statement = statement.where(payments.c.simulation_id == simulation_id)
    return {row["status"]: int(row["n"]) for row in read(engine, statement)}


def count_by_counted_outcome(engine: Engine, simulation_id: str) -> dict[str, int]:
    statement = (
        sa.select(payments.c.counted_outcome, sa.func.count().label("n"))
        .where(payments.c.simulation_id == simulation_id)
        .group_by(payments.c.counted_outcome)
    )
    return {str(row["counted_outcome"] or "uncounted"): int(row["n"])
            for row in read(engine, statement)}


def durations(engine: Engine, simulation_id: str) -> dict[str, list[float]]:
    """Each step's durations and the total (intended send to final step) of a
    simulation's finished, non-rejected payments."""
    columns = [payments.c.channel, payments.c.outcome,
               *[payments.c[f"{s.value}_seconds"] for s in ALL_STEPS],
               payments.c.settled_since, payments.c.completed_since]
    rows = read(engine, sa.select(*columns).where(payments.c.simulation_id == simulation_id))
    result: dict[str, list[float]] = {s.value: [] for s in ALL_STEPS}
    result["total"] = []
    for row in rows:
        for step in ALL_STEPS:
            value = row[f"{step.value}_seconds"]
            if value is not None:
                result[step.value].append(float(value))
        if row["outcome"] in (Outcome.SUCCESS.value, Outcome.FAILED.value):
            total = row["completed_since"] if row["channel"] == Channel.KAFKA.value \
                else row["settled_since"]
            if total is not None:
                result["total"].append(float(total))
    return result


def all_simulations(engine: Engine) -> list[dict[str, Any]]:
    return read(engine, sa.select(simulations).order_by(simulations.c.created_at))


def all_deposits(engine: Engine) -> list[dict[str, Any]]:
    return read(engine, sa.select(deposits).order_by(deposits.c.at))


def has_history(engine: Engine, clearing: str, account: str,
                stored: Callable[[], bool]) -> bool:
    """Whether the ledger holds anything that moved money on this account: a
    deposit of any reason (carried-forward payments included) or a payment from or
    to it. ``stored()`` stores the rows still buffered first. Raises
    ``LedgerUnavailable`` when that cannot be told."""
    if not stored():
        raise LedgerUnavailable("ledger not writable: buffered rows not stored")
    d, p = deposits.c, payments.c
    checks = [
        sa.select(d.deposit_id).where(d.clearing_number == clearing,
                                      d.account_number == account).limit(1),
        sa.select(p.payment_id).where(p.from_clearing == clearing,
                                      p.from_account == account).limit(1),
        sa.select(p.payment_id).where(p.to_clearing == clearing,
                                      p.to_account == account).limit(1),
    ]
    try:
        with engine.connect() as conn:
            # one by one: the deposits answer for nearly every account, the scans of
            # the (unindexed) payment columns only run for a really new account
            return any(conn.execute(check).first() is not None for check in checks)
    except Exception as exc:
        raise LedgerUnavailable(short_error(exc)) from None
