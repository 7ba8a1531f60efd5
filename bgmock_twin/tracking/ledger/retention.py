"""Retention: prune old payments without changing what the books derive from the ledger.

The balance model sums every deposit and every payment's effect. So only payments
whose effect on the balances is final and certain are deleted (finished, with the
same certainty rules the books apply to a ledger row), and in the same transaction
their net effect is folded into one ``carry_forward`` deposit per account (it may be
negative: an account that paid out more than it received). Unfinished payments are
never deleted, nor those the tracker still follows (a later snapshot of theirs would
insert the row again and count it twice).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from bgmock_twin.contract import Channel
from bgmock_twin.tracking.ledger.schema import (
    CARRY_FORWARD,
    deposits,
    payment_steps,
    payments,
    simulations,
)
from bgmock_twin.tracking.ledger.store import LedgerUnavailable
from bgmock_twin.tracking.lifecycle import Outcome
from bgmock_twin.tracking.refusals import certain_rejection_clause

PRUNE_QUIET = timedelta(minutes=10)  # rows written more recently than this are kept
PRUNE_BATCH = 2000  # payments deleted (and carried forward) per transaction


def carry_effect(channel: str, outcome: str | None) -> tuple[int, int]:
    """What a settled payment did to the balances, in units of its amount:
    (source, destination). REST success moved the money; a Kafka-channel success
    credited the destination with money from outside (the source bank never saw
    it); failures and rejections left both untouched."""
    if outcome == Outcome.SUCCESS.value:
        return (0, 1) if channel == Channel.KAFKA.value else (-1, 1)
    return (0, 0)


def settled_clause() -> sa.ColumnElement[bool]:
    """Payments whose effect on the balances is final and known exactly: the rows the
    books turn into an exact effect (``books.sources.progress_of``). Success and
    failure; a rejection before any event unless the request may have arrived after
    all (``tracking.refusals.rejection_is_certain``, the rule the books apply: an
    ambiguous one gets a range, so it is never folded into an exact amount). A
    rejection followed by events, and anything unfinished, stays."""
    p = payments.c
    certain_rejection = sa.and_(
        p.outcome == Outcome.REJECTED.value,
        certain_rejection_clause(p.channel, p.state, p.transaction_id, p.refusal_ambiguous))
    return sa.and_(p.finished.is_(True), sa.or_(
        p.outcome.in_((Outcome.SUCCESS.value, Outcome.FAILED.value)), certain_rejection))


def prune(
    engine: Engine,
    flush: Callable[[float], bool],
    max_age: timedelta,
    max_payments: int,
    now_utc: datetime,
    *,
    followed: Callable[[], Iterable[str]] | None = None,
    instance_id: str = "",
    quiet: timedelta = PRUNE_QUIET,
    batch_size: int = PRUNE_BATCH,
    flush_timeout: float = 10.0,
) -> int:
    """Delete settled payments (``settled_clause``) intended before ``now_utc -
    max_age``, then the oldest settled ones while there are more than
    ``max_payments`` rows, folding their effect into ``carry_forward`` deposits;
    delete finished simulations older than ``max_age``. Returns how many
    payments were deleted.

    Kept whatever their age: unfinished payments (stuck ones included: they may
    still move money), payments ``followed()`` names (the tracker may still
    write them) and rows written within ``quiet`` of ``now_utc`` (a payment that
    started being followed after that call). Buffered rows are stored first, so
    no older snapshot of a deleted payment can arrive afterwards; raises
    ``LedgerUnavailable`` if they cannot be.
    """
    keep = frozenset(followed()) if followed is not None else frozenset()
    if not flush(flush_timeout):
        raise LedgerUnavailable("buffered rows could not be stored before pruning")
    cutoff = now_utc - max_age
    p = payments.c
    settled = sa.and_(settled_clause(), p.updated_at < now_utc - quiet)
    with engine.connect() as conn:
        total = int(conn.execute(sa.select(sa.func.count()).select_from(payments))
                    .scalar_one())
    over = max(0, total - max_payments)  # rows the count limit still wants gone
    deleted = 0
    after: tuple[datetime, str] | None = None
    while True:
        page = sa.select(p.payment_id, p.intended_at).where(settled)
        if after is not None:
            page = page.where(sa.or_(
                p.intended_at > after[0],
                sa.and_(p.intended_at == after[0], p.payment_id > after[1])))
        with engine.connect() as conn:
            rows = conn.execute(page.order_by(p.intended_at, p.payment_id)
                                .limit(batch_size)).all()
        if not rows:
            break
        after = (rows[-1][1], rows[-1][0])
        chosen: list[str] = []
        done = False
        for payment_id, intended_at in rows:
            if intended_at >= cutoff and over - len(chosen) <= 0:
                done = True
                break
            if payment_id not in keep:
                chosen.append(payment_id)
        removed = _delete_settled(engine, chosen, settled, instance_id)
        deleted += removed
        over -= removed
        if done or len(rows) < batch_size:
            break
    with engine.begin() as conn:
        conn.execute(sa.delete(simulations).where(
            simulations.c.created_at < cutoff, simulations.c.state != "running"))
    return deleted


def _delete_settled(engine: Engine, ids: Sequence[str], settled: sa.ColumnElement[bool],
                    instance_id: str) -> int:
    """Delete these payments (those still settled) and their step rows, and carry
    their effect forward, in one transaction."""
    if not ids:
        return 0
    p = payments.c
    columns = (p.payment_id, p.intended_at, p.channel, p.outcome, p.from_clearing,
               p.from_account, p.to_clearing, p.to_account, p.amount)
    gone: Sequence[Any]
    with engine.begin() as conn:
        if conn.dialect.delete_returning:  # SQLite, PostgreSQL
            gone = conn.execute(sa.delete(payments).where(p.payment_id.in_(ids), settled)
                                .returning(*columns)).all()
        else:  # read (locked) then delete exactly what was read
            locked = conn.execute(sa.select(*columns).where(
                p.payment_id.in_(ids), settled).with_for_update()).all()
            conn.execute(sa.delete(payments).where(
                p.payment_id.in_([row.payment_id for row in locked])))
            gone = locked
        if gone:  # by the steps' key: (intended_at, payment_id)
            s = payment_steps.c
            conn.execute(sa.delete(payment_steps).where(
                s.intended_at == sa.bindparam("at"), s.payment_id == sa.bindparam("id")),
                [{"at": row.intended_at, "id": row.payment_id} for row in gone])
        net: dict[tuple[str, str], Decimal] = {}
        for row in gone:
            source, destination = carry_effect(row.channel, row.outcome)
            if source:
                key = (row.from_clearing, row.from_account)
                net[key] = net.get(key, Decimal(0)) + source * row.amount
            if destination:
                key = (row.to_clearing, row.to_account)
                net[key] = net.get(key, Decimal(0)) + destination * row.amount
        for (clearing, account), amount in sorted(net.items()):
            if amount:
                _carry_forward(conn, clearing, account, amount, instance_id)
    return len(gone)


def _carry_forward(conn: Connection, clearing: str, account: str, amount: Decimal,
                   instance_id: str) -> None:
    """Add ``amount`` to the account's one ``carry_forward`` deposit (created at the
    first prune), so the deposits stay few however often retention runs.

    Its time becomes now (wall clock, UTC): the books take a deposit as perhaps not
    applied yet only for a reconciliation that read the banks before it, i.e. one
    running during this prune - whose ledger read, if not one snapshot, may see the
    deleted payments and the carry both; as a range the carry cannot turn that into
    drift. Any later reconciliation takes it exactly."""
    at = datetime.now(UTC)
    d = deposits.c
    current = conn.execute(
        sa.select(d.deposit_id, d.amount, d.at)
        .where(d.reason == CARRY_FORWARD, d.clearing_number == clearing,
               d.account_number == account)
        .order_by(d.deposit_id).limit(1).with_for_update()
    ).first()
    if current is None:
        conn.execute(sa.insert(deposits).values(
            deposit_id=str(uuid.uuid4()), instance_id=instance_id, clearing_number=clearing,
            account_number=account, amount=amount, reason=CARRY_FORWARD, at=at))
        return
    updated = conn.execute(
        sa.update(deposits)
        .where(d.deposit_id == current.deposit_id, d.amount == current.amount)
        .values(amount=current.amount + amount, at=max(at, current.at))
    ).rowcount
    if updated != 1:  # changed under us: roll the whole batch back, the next run retries
        raise LedgerUnavailable(f"carry-forward deposit of {account} changed concurrently")
