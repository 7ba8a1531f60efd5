"""Reader of the twin's own ledger, and what a ledger row tells about a payment's
money (``progress_of``). Read-only, always; BGMock's side is read by ``rest`` and
``sql``.

Finished payments are summed per (channel, outcome, accounts) in one statement
with the unfinished ones, so a payment finishing meanwhile is counted exactly
once; a payment whose row changed after the real state was read is treated as
"anything may have happened since it was sent" (the ledger may be ahead of what
the banks showed).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bgmock_twin.books.model import AccountKey, DepositFact, PaymentFact, Progress
from bgmock_twin.books.readings import FinishedPayment
from bgmock_twin.contract import Channel, bank_by_clearing
from bgmock_twin.tracking.lifecycle import Outcome
from bgmock_twin.tracking.refusals import REFUSED_STATES, rejection_is_certain

CENTS = Decimal("100")


def bank_of(clearing: str | None) -> str:
    """The name of the bank with this clearing number (``AccountKey.bank``)."""
    bank = bank_by_clearing(clearing)
    return bank.name if bank is not None else f"clearing_{clearing or 'unknown'}"


# --- ledger rows → model facts (pure) ------------------------------------------------------
def progress_of(
    channel: str,
    outcome: str | None,
    state: str,
    final_status: str | None,
    has_transaction_id: bool,
    refusal_ambiguous: bool,
) -> Progress:
    """What a ledger row tells about the payment's money.

    ``state`` is the furthest step seen (``submitted`` before any). REST:
    accepted..processed mean reserved (a 202 may still be a refusal, whose money
    effect is the same as a release); completed carries the clearing's final
    status; only ``settled`` (the source bank's own final status) is final.
    Kafka channel: ``completed`` is final. A rejection that was ambiguous (the
    request may have arrived: ``tracking.refusals.rejection_is_certain``, the rule
    retention applies too) stays "submitted" forever: the twin cannot know.
    """
    kafka = channel == Channel.KAFKA.value
    if outcome == "success":
        return Progress.SUCCEEDED
    if outcome == "failed":
        return Progress.FAILED
    if outcome == "rejected" and state in REFUSED_STATES:
        certain = rejection_is_certain(channel, state, has_transaction_id, refusal_ambiguous)
        return Progress.REJECTED if certain else Progress.SUBMITTED
    # unfinished, or events seen after a rejection: go by the furthest step
    if state in ("completed", "settled"):
        if final_status == "SUCCESS":
            return Progress.SUCCEEDED if kafka or state == "settled" else Progress.CREDITED
        if final_status == "FAILED":
            return Progress.FAILED if kafka or state == "settled" else Progress.NOT_CREDITED
    if kafka or state == "submitted":
        return Progress.SUBMITTED
    return Progress.RESERVED


@dataclass(frozen=True, slots=True)
class PaymentMeta:
    transaction_id: uuid.UUID | None
    intended_at: datetime  # UTC
    finished: bool = True  # False while the twin still follows it (in flight)


@dataclass(frozen=True, slots=True)
class LedgerSnapshot:
    deposits: list[DepositFact]
    payments: list[PaymentFact]
    accounts: set[AccountKey]  # every twin account the ledger names as deposited into
    meta: dict[str, PaymentMeta] = field(default_factory=dict)  # listed payments only


def _cents(column: Any, dialect: str) -> Any:
    """An amount as integer cents, exact on every backend (SQLite keeps text)."""
    if dialect == "sqlite":
        return sa.cast(sa.func.round(sa.cast(column, sa.Float) * 100), sa.Integer)
    return sa.cast(sa.cast(column, sa.Numeric(19, 2)) * 100, sa.BigInteger)


class LedgerBehind(Exception):
    """The ledger holds rows it could not store (a full disk, its database gone):
    what it says of the money is behind what happened, so nothing can be checked
    against it."""

    def __init__(self, rows: int) -> None:
        super().__init__(f"the ledger holds {rows} unwritten rows")
        self.rows = rows


# How much longer a healthy but slow writer may take to store what was written before
# a read; within the smallest reconciliation budget (5 s) with the first second.
SLOW_WRITER_PATIENCE_SECONDS = 3.0


class LedgerReader:
    """Reads the tracking ledger's tables (``twin_payments``, ``twin_deposits``)."""

    def __init__(
        self,
        engine: Engine,
        payments: sa.Table,
        deposits: sa.Table,
        flush: Callable[[float], bool] | None = None,
        unwritten: Callable[[], int] | None = None,
        failing: Callable[[], bool] | None = None,
        patience_seconds: float = SLOW_WRITER_PATIENCE_SECONDS,
    ) -> None:
        """``flush(timeout)``: store what the twin wrote so far (False if it could
        not); ``unwritten()``: the rows the ledger's buffer still holds;
        ``failing()``: whether its last write failed. A writer that is only slow (a
        busy machine) gets ``patience_seconds`` more before the ledger counts as
        behind; a failing one does not."""
        self.engine = engine
        self.payments = payments
        self.deposits = deposits
        self.flush = flush
        self.unwritten = unwritten
        self.failing = failing or (lambda: False)
        self.patience_seconds = patience_seconds

    def ensure_current(self, flush_timeout: float) -> None:
        """Return once everything written so far is stored; ``LedgerBehind`` when
        rows remain unwritten after ``flush_timeout``."""
        if self.flush is None or self.flush(flush_timeout):
            return
        if not self.failing() and self.flush(self.patience_seconds):
            return
        rows = self.unwritten() if self.unwritten is not None else 0
        if rows > 0:
            raise LedgerBehind(rows)

    def snapshot(self, changed_since: datetime, flush_timeout: float = 1.0,
                 detail_since: datetime | None = None) -> LedgerSnapshot:
        """Deposits and payments as of now. Rows written at or after
        ``changed_since`` (UTC) are taken as possibly ahead of the real state.
        Payments intended at or after ``detail_since`` are listed one by one (with
        their transaction ids), never summed. ``LedgerBehind`` while rows written
        before the call stay unwritten."""
        self.ensure_current(flush_timeout)
        p, d = self.payments, self.deposits
        with self.engine.connect() as conn:
            dialect = conn.dialect.name
            # summed: finished long enough ago, except rejections before any answer
            # (``refusal_ambiguous`` says whether they may have reached the bank)
            old_finished = sa.and_(
                p.c.finished.is_(True), p.c.updated_at < changed_since,
                sa.not_(sa.and_(p.c.outcome == "rejected", p.c.state == "submitted")),
                p.c.intended_at < (detail_since or changed_since),
            )
            group = (p.c.channel, p.c.outcome, p.c.state, p.c.final_status, p.c.from_clearing,
                     p.c.from_account, p.c.to_clearing, p.c.to_account)
            summed = sa.select(
                sa.cast(sa.null(), sa.String).label("payment_id"), *group,
                sa.cast(sa.null(), sa.String).label("transaction_id"),
                sa.literal(False).label("refusal_ambiguous"),
                sa.func.min(p.c.intended_at).label("intended_at"),
                sa.literal(False).label("recent"),
                sa.literal(True).label("is_finished"),
                sa.func.sum(_cents(p.c.amount, dialect)).label("cents"),
            ).where(old_finished).group_by(*group)
            single = sa.select(
                p.c.payment_id, *group, p.c.transaction_id, p.c.refusal_ambiguous,
                p.c.intended_at,
                (p.c.updated_at >= changed_since).label("recent"),
                p.c.finished.label("is_finished"),
                _cents(p.c.amount, dialect).label("cents"),
            ).where(sa.not_(old_finished))
            rows = [dict(r._mapping) for r in conn.execute(sa.union_all(summed, single))]
            deposit_rows = [dict(r._mapping) for r in conn.execute(sa.select(d))]
        payments: list[PaymentFact] = []
        meta: dict[str, PaymentMeta] = {}
        for i, row in enumerate(rows):
            if row["payment_id"] is not None:
                meta[row["payment_id"]] = PaymentMeta(_uuid(row["transaction_id"]),
                                                      _utc(row["intended_at"]),
                                                      bool(row["is_finished"]))
            if row["recent"]:
                progress = Progress.SUBMITTED
            else:
                progress = progress_of(row["channel"], row["outcome"], row["state"],
                                       row["final_status"], bool(row["transaction_id"]),
                                       bool(row["refusal_ambiguous"]))
            payments.append(PaymentFact(
                payment_id=row["payment_id"] or f"settled#{i}",
                channel=Channel(row["channel"]),
                source=AccountKey(bank_of(row["from_clearing"]), row["from_account"]),
                destination=AccountKey(bank_of(row["to_clearing"]), row["to_account"]),
                amount=Decimal(int(row["cents"])) / CENTS,
                progress=progress,
            ))
        deposits = [
            DepositFact(AccountKey(bank_of(r["clearing_number"]), r["account_number"]),
                        Decimal(r["amount"]), confirmed=_utc(r["at"]) < changed_since)
            for r in deposit_rows
        ]
        return LedgerSnapshot(deposits, payments, {dep.account for dep in deposits}, meta)

    def deposit_accounts(self) -> set[AccountKey]:
        """Every account the twin ever deposited into (its accounts)."""
        d = self.deposits
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(d.c.clearing_number, d.c.account_number).distinct())
            return {AccountKey(bank_of(clearing), number) for clearing, number in rows}

    def finished_between(self, since: datetime, until: datetime,
                         limit: int = 2000) -> list[tuple[datetime, FinishedPayment]]:
        """Finished payments (with a transaction id) by the time they finished,
        oldest first: those whose statuses the services must agree on."""
        p = self.payments
        statement = (
            sa.select(p.c.payment_id, p.c.transaction_id, p.c.channel, p.c.outcome, p.c.state,
                      p.c.from_clearing, p.c.to_clearing, p.c.finished_at, p.c.intended_at)
            .where(p.c.finished.is_(True), p.c.transaction_id.is_not(None),
                   p.c.finished_at > since, p.c.finished_at <= until)
            .order_by(p.c.finished_at).limit(limit)
        )
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(statement)]
        result = []
        for row in rows:
            if row["outcome"] == "rejected" and row["state"] not in ("submitted", "accepted"):
                continue  # events after a rejection: no clear expectation to compare
            try:
                transaction_id = uuid.UUID(str(row["transaction_id"]))
            except ValueError:
                continue
            to_bank = bank_by_clearing(row["to_clearing"])
            result.append((_utc(row["finished_at"]), FinishedPayment(
                payment_id=row["payment_id"], transaction_id=transaction_id,
                channel=Channel(row["channel"]), outcome=Outcome(row["outcome"]),
                source_service=bank_of(row["from_clearing"]),
                destination_service=to_bank.name if to_bank is not None else None,
                intended_at=_utc(row["intended_at"]),
            )))
        return result


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
