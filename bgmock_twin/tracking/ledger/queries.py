"""What the rest of the twin asks the ledger: payments by filter or id, counts and
durations of a simulation, what to resume after a restart, an account's history.

Plain reads through the engine, each raising ``LedgerUnavailable`` when the database
cannot answer; nothing here writes. Reads of many payments come in bounded chunks
(``payment_row_chunks``): each chunk is one short statement on a pooled connection of
its own, taken up after the last row of the one before (keyset), so a large export
never holds a transaction, a snapshot or more than one chunk in memory, and the
ledger's writer is never kept waiting behind it.

A payment's steps are rows of ``twin_payment_steps``: every read of whole payments
folds them back into each payment's mapping (``with_steps``), read for the
payments just read, so callers see one flat mapping per payment (``rows``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from bgmock_twin.contract import Channel
from bgmock_twin.tracking.ledger.schema import (
    LEGACY_STEP_COLUMNS,
    deposits,
    payment_steps,
    payments,
    simulations,
    step_keys,
)
from bgmock_twin.tracking.ledger.store import LedgerUnavailable, short_error
from bgmock_twin.tracking.lifecycle import ALL_STEPS, Outcome, Step


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


STEPS_PER_READ = 500  # payment ids in one read of their steps


def read(engine: Engine, statement: Any, steps: bool = False) -> list[dict[str, Any]]:
    """The rows of ``statement``; ``steps``: rows of whole payments, with their steps."""
    try:
        with engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(statement)]
            return with_steps(conn, rows) if steps else rows
    except Exception as exc:
        raise LedgerUnavailable(short_error(exc)) from None


def with_steps(conn: Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fold each payment's step rows into its mapping as ``<step>_at/_since/_seconds``
    (None for a step not seen), in the same connection."""
    by_id: dict[str, dict[str, Any]] = {}
    for row in rows:
        row.update(dict.fromkeys(LEGACY_STEP_COLUMNS))
        by_id[row["payment_id"]] = row
    s = payment_steps.c
    for start in range(0, len(rows), STEPS_PER_READ):
        chunk = rows[start:start + STEPS_PER_READ]
        times = [row["intended_at"] for row in chunk]
        statement = sa.select(s.payment_id, s.step, s.at, s.since_intended, s.seconds).where(
            s.intended_at.between(min(times), max(times)),  # the key's first column
            s.payment_id.in_([row["payment_id"] for row in chunk]))
        for step in conn.execute(statement):
            at_key, since_key, seconds_key = step_keys(step.step)
            row = by_id[step.payment_id]
            if at_key in row:  # a step this twin knows
                row[at_key], row[since_key], row[seconds_key] = \
                    step.at, step.since_intended, step.seconds
    return rows


Key = tuple[datetime, str]  # (intended_at, payment_id) of the last row read


def unfinished_chunks(engine: Engine, instance_id: str, limit: int,
                      chunk_size: int) -> Iterator[list[dict[str, Any]]]:
    """This instance's payments still in flight (replicas sharing a ledger each
    follow only their own), oldest first, ``chunk_size`` at a time."""
    mine = (payments.c.finished.is_(False), payments.c.instance_id == instance_id)
    return _chunks(engine, lambda after: _in_key_order(mine, after, oldest_first=True),
                   limit, chunk_size)


def unfinished(engine: Engine, instance_id: str, limit: int) -> list[dict[str, Any]]:
    return [row for rows in unfinished_chunks(engine, instance_id, limit, limit)
            for row in rows]


def recent_finished_chunks(engine: Engine, instance_id: str, since: datetime, limit: int,
                           chunk_size: int) -> Iterator[list[dict[str, Any]]]:
    """This instance's payments finished since ``since``, newest first."""
    mine = (payments.c.finished.is_(True), payments.c.instance_id == instance_id,
            payments.c.intended_at >= since)
    return _chunks(engine, lambda after: _in_key_order(mine, after, oldest_first=False),
                   limit, chunk_size)


def recent_finished(engine: Engine, instance_id: str, since: datetime,
                    limit: int) -> list[dict[str, Any]]:
    return [row for rows in recent_finished_chunks(engine, instance_id, since, limit, limit)
            for row in rows]


def _in_key_order(conditions: tuple[Any, ...], after: Key | None, oldest_first: bool) -> Any:
    """Whole payments matching ``conditions`` beyond ``after``, in (intended_at,
    payment_id) order, both ascending or both descending."""
    at, pid = payments.c.intended_at, payments.c.payment_id
    statement = sa.select(payments).where(*conditions)
    if after is not None:
        last_at, last_id = after
        if oldest_first:
            statement = statement.where(
                sa.or_(at > last_at, sa.and_(at == last_at, pid > last_id)))
        else:
            statement = statement.where(
                sa.or_(at < last_at, sa.and_(at == last_at, pid < last_id)))
    return statement.order_by(*((at, pid) if oldest_first else (at.desc(), pid.desc())))


def _chunks(engine: Engine, beyond: Callable[[Key | None], Any], limit: int | None,
            chunk_size: int, offset: int = 0,
            after: Key | None = None) -> Iterator[list[dict[str, Any]]]:
    """Whole payments, ``chunk_size`` at a time, at most ``limit`` (every one when
    None): ``beyond(key)`` is the ordered statement of the payments after ``key``.
    Each chunk is its own short read, taken up after the last row of the one
    before; a payment written meanwhile further on in the order is still seen, one
    written before it is not."""
    remaining = limit
    while remaining is None or remaining > 0:
        size = chunk_size if remaining is None else min(chunk_size, remaining)
        rows = read(engine, beyond(after).limit(size).offset(offset), steps=True)
        if rows:
            yield rows
        if len(rows) < size:
            return
        offset = 0
        after = (rows[-1]["intended_at"], rows[-1]["payment_id"])
        if remaining is not None:
            remaining -= len(rows)


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
    return read(engine, _matching(q).limit(q.limit).offset(q.offset), steps=True)


def payment_row_chunks(engine: Engine, q: PaymentQuery,
                       chunk_size: int) -> Iterator[list[dict[str, Any]]]:
    """Payments matching ``q``, newest first, ``chunk_size`` rows at a time, at most
    ``q.limit`` in all (every one when None), each chunk its own read (``_chunks``)."""
    return _chunks(engine, lambda after: _matching(replace(q, after=after)), q.limit,
                   chunk_size, q.offset, q.after)


def payment_row_by_id(engine: Engine, identifier: str) -> dict[str, Any] | None:
    """One payment by its payment id or its BGMock transaction id."""
    rows = read(engine, sa.select(payments).where(
        sa.or_(payments.c.payment_id == identifier,
               payments.c.transaction_id == identifier)).limit(1), steps=True)
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
    p, s = payments.c, payment_steps.c
    rows = read(engine, sa.select(p.channel, p.outcome, s.step, s.since_intended, s.seconds)
                .select_from(payments.join(payment_steps, sa.and_(
                    s.intended_at == p.intended_at, s.payment_id == p.payment_id)))
                .where(p.simulation_id == simulation_id))
    result: dict[str, list[float]] = {step.value: [] for step in ALL_STEPS}
    result["total"] = []
    finished = (Outcome.SUCCESS.value, Outcome.FAILED.value)
    for row in rows:
        step = row["step"]
        if step not in result or step == "total":
            continue
        result[step].append(float(row["seconds"]))
        last = Step.COMPLETED.value if row["channel"] == Channel.KAFKA.value \
            else Step.SETTLED.value
        if step == last and row["outcome"] in finished:
            result["total"].append(float(row["since_intended"]))
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
