"""Readers of everything the books compare: the twin's ledger, the banks' REST API
and the three BGMock databases. Read-only, always.

- Ledger (the twin's database): finished payments are summed per (channel, outcome,
  accounts) in one statement with the unfinished ones, so a payment finishing
  meanwhile is counted exactly once; a payment whose row changed after the real
  state was read is treated as "anything may have happened since it was sent"
  (the ledger may be ahead of what the banks showed).
- REST: ``GET /bank/account/{n}`` of the twin's accounts, one bank after the other
  (the order narrows the conservation range), stopping at a bank's first
  timeout.
- SQL: one read-only transaction per database (a consistent snapshot on
  PostgreSQL, with a statement timeout), in the contract's table layout.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from bgmock_twin.books.checks import (
    AccountReading,
    FinishedPayment,
    OutboxStats,
    PendingSum,
    StoredRow,
)
from bgmock_twin.books.model import (
    BANK_BY_CLEARING,
    AccountKey,
    Channel,
    DepositFact,
    PaymentFact,
    Progress,
)
from bgmock_twin.clients.bgmock import BGMockClients
from bgmock_twin.clients.rest import ServiceError
from bgmock_twin.contract import TOPIC_FORWARDED, TOPIC_INITIATED, parse_amount
from bgmock_twin.contract import tables as schema
from bgmock_twin.tracking.refusals import REFUSED_STATES, rejection_is_certain

CENTS = Decimal("100")
ROW_LIMIT = 1000  # offending rows fetched per query; counts beyond it are noted
ID_CHUNK = 500


def bank_of(clearing: str | None) -> str:
    return BANK_BY_CLEARING.get(clearing or "", f"clearing_{clearing or 'unknown'}")


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


class LedgerReader:
    """Reads the tracking ledger's tables (``twin_payments``, ``twin_deposits``)."""

    def __init__(
        self,
        engine: Engine,
        payments: sa.Table,
        deposits: sa.Table,
        flush: Callable[[float], bool] | None = None,
    ) -> None:
        self.engine = engine
        self.payments = payments
        self.deposits = deposits
        self.flush = flush

    def snapshot(self, changed_since: datetime, flush_timeout: float = 1.0,
                 detail_since: datetime | None = None) -> LedgerSnapshot:
        """Deposits and payments as of now. Rows written at or after
        ``changed_since`` (UTC) are taken as possibly ahead of the real state.
        Payments intended at or after ``detail_since`` are listed one by one (with
        their transaction ids), never summed."""
        if self.flush is not None:
            self.flush(flush_timeout)
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
                sa.func.sum(_cents(p.c.amount, dialect)).label("cents"),
            ).where(old_finished).group_by(*group)
            single = sa.select(
                p.c.payment_id, *group, p.c.transaction_id, p.c.refusal_ambiguous,
                p.c.intended_at,
                (p.c.updated_at >= changed_since).label("recent"),
                _cents(p.c.amount, dialect).label("cents"),
            ).where(sa.not_(old_finished))
            rows = [dict(r._mapping) for r in conn.execute(sa.union_all(summed, single))]
            deposit_rows = [dict(r._mapping) for r in conn.execute(sa.select(d))]
        payments: list[PaymentFact] = []
        meta: dict[str, PaymentMeta] = {}
        for i, row in enumerate(rows):
            if row["payment_id"] is not None:
                meta[row["payment_id"]] = PaymentMeta(_uuid(row["transaction_id"]),
                                                      _utc(row["intended_at"]))
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
            to_bank = BANK_BY_CLEARING.get(row["to_clearing"] or "")
            result.append((_utc(row["finished_at"]), FinishedPayment(
                payment_id=row["payment_id"], transaction_id=transaction_id,
                channel=row["channel"], outcome=row["outcome"],
                source_service=bank_of(row["from_clearing"]), destination_service=to_bank,
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


# --- REST ---------------------------------------------------------------------------------
@dataclass(slots=True)
class RestAccounts:
    readings: dict[AccountKey, AccountReading | None] = field(default_factory=dict)
    banks_read: list[str] = field(default_factory=list)  # every account of these was read
    errors: dict[str, str] = field(default_factory=dict)


def read_rest_accounts(
    clients: BGMockClients,
    accounts: Iterable[AccountKey],
    order: Sequence[str],
    timeout: float,
) -> RestAccounts:
    """``GET /bank/account/{n}`` for every twin account, bank by bank in ``order``.
    A bank that times out or refuses is given up at once (its accounts unread)."""
    by_bank: dict[str, list[AccountKey]] = {}
    for account in sorted(accounts):
        by_bank.setdefault(account.bank, []).append(account)
    banks = {"bank_a": clients.bank_a, "bank_b": clients.bank_b}
    result = RestAccounts()
    for bank_name in order:
        bank = banks.get(bank_name)
        if bank is None:
            continue
        try:
            for account in by_bank.get(bank_name, []):
                result.readings[account] = _get_account(bank.rest, account, timeout)
        except ServiceError as exc:
            result.errors[bank_name] = exc.reason
            for account in by_bank.get(bank_name, []):
                result.readings.pop(account, None)
            continue
        result.banks_read.append(bank_name)
    return result


def _get_account(rest: Any, account: AccountKey, timeout: float) -> AccountReading | None:
    response = rest.request("GET", "/bank/account/{accountNumber}",
                            {"accountNumber": account.number}, timeout=timeout)
    if response.status == 404:
        return None
    body = response.body
    if response.status != 200 or not isinstance(body, dict):
        raise ServiceError(rest.service, f"http_{response.status}" if response.status != 200
                           else "bad_body")
    try:
        return AccountReading(account, parse_amount(body.get("balance")),
                              parse_amount(body.get("reservedBalance") or 0), "rest")
    except ValueError:
        raise ServiceError(rest.service, "bad_body") from None


# --- SQL ----------------------------------------------------------------------------------
@dataclass(slots=True)
class BankSnapshot:
    service: str
    out_of_bounds: list[AccountReading]  # any account with reserved outside [0, balance]
    pending_mismatches: list[PendingSum]
    outbox: OutboxStats
    missing_outbox: list[StoredRow]
    stale: list[StoredRow]
    outgoing_status: dict[uuid.UUID, str]
    incoming_status: dict[uuid.UUID, str]
    created_at: dict[uuid.UUID, datetime]  # of the rows found by id (the bank's clock)


@dataclass(slots=True)
class ClearingSnapshot:
    service: str
    outbox: OutboxStats
    missing_outbox: list[StoredRow]
    stale: list[StoredRow]
    status: dict[uuid.UUID, str]
    created_at: dict[uuid.UUID, datetime]  # of the rows found by id (the clearing's clock)
    # bankgood -> (clearing, account), None when looked up but not mapped
    mappings: dict[str, tuple[str | None, str | None] | None]


def _readonly_transaction(conn: Connection, statement_timeout_ms: int) -> None:
    """Make the open transaction a read-only snapshot with a statement timeout, also
    on engines that were not built read-only (the embedded emulator's own)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        conn.execute(sa.text(f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}"))


def _money(value: Any) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.01"))


def _stored(service: str, table: str, row: Any, account_key: str) -> StoredRow:
    amount = row.get("amount")
    return StoredRow(service, table, row["transaction_id"], row.get(account_key),
                     None if amount is None else _money(amount), row.get("status"),
                     row.get("created_at"), row.get("to_bankgood_number"))


def _outbox(conn: Connection, table: sa.Table, service: str) -> OutboxStats:
    count, oldest = conn.execute(
        sa.select(sa.func.count(), sa.func.min(table.c.created_at))
        .where(table.c.published.is_(False))
    ).one()
    return OutboxStats(service, int(count or 0), oldest)


def _statuses(conn: Connection, table: sa.Table, ids: Sequence[uuid.UUID],
              created: dict[uuid.UUID, datetime]) -> dict[uuid.UUID, str]:
    """Status of each transaction found; its ``created_at`` goes into ``created``."""
    found: dict[uuid.UUID, str] = {}
    for start in range(0, len(ids), ID_CHUNK):
        chunk = list(ids[start:start + ID_CHUNK])
        for tx, status, created_at in conn.execute(
            sa.select(table.c.transaction_id, table.c.status, table.c.created_at)
            .where(table.c.transaction_id.in_(chunk))
        ):
            found[tx] = status
            if created_at is not None:
                created[tx] = created_at
    return found


def _missing_outbox(conn: Connection, outgoing: sa.Table, outbox: sa.Table, topic: str,
                    service: str) -> list[StoredRow]:
    has_row = sa.select(outbox.c.id).where(
        outbox.c.transaction_id == outgoing.c.transaction_id, outbox.c.topic == topic
    ).exists()
    rows = conn.execute(
        sa.select(outgoing).where(outgoing.c.status == "PENDING", sa.not_(has_row))
        .order_by(outgoing.c.created_at).limit(ROW_LIMIT)
    )
    return [_stored(service, outgoing.name, r._mapping, "from_account_number") for r in rows]


def _stale(conn: Connection, table: sa.Table, service: str, cutoff: datetime,
           account_column: str) -> list[StoredRow]:
    rows = conn.execute(
        sa.select(table).where(table.c.status == "PENDING", table.c.created_at < cutoff)
        .order_by(table.c.created_at).limit(ROW_LIMIT)
    )
    return [_stored(service, table.name, r._mapping, account_column) for r in rows]


JournalRow = tuple[str, str, datetime | None]


@dataclass(frozen=True, slots=True)
class BankBooks:
    """The twin's accounts at one bank with the bank's own journal of them, read in
    one snapshot: the journal says where each recent payment stood at that moment."""

    service: str
    accounts: dict[AccountKey, AccountReading | None]  # None: no such account
    # transaction id -> (status, twin account number, created_at on the bank's clock)
    outgoing: dict[uuid.UUID, JournalRow]  # from twin accounts: PENDING, or created since
    incoming: dict[uuid.UUID, JournalRow]  # to twin accounts, created since
    since: datetime  # naive UTC: rows created before it (and not PENDING) are not listed
    complete: bool  # False when a row limit was hit: absence proves nothing


JOURNAL_ROW_LIMIT = 50_000


def read_bank_books(
    engine: Engine,
    service: str,
    numbers: Iterable[str],
    since: datetime,
    statement_timeout_ms: int,
) -> BankBooks:
    """The twin's accounts at one bank and its journal rows about them since
    ``since`` (naive UTC), in one read-only snapshot."""
    a, o, i = schema.accounts, schema.bank_outgoing_transactions, schema.incoming_transactions
    wanted = sorted(set(numbers))
    found: dict[AccountKey, AccountReading | None] = {AccountKey(service, n): None for n in wanted}
    outgoing: dict[uuid.UUID, JournalRow] = {}
    incoming: dict[uuid.UUID, JournalRow] = {}
    complete = True
    with engine.connect() as conn, conn.begin():
        _readonly_transaction(conn, statement_timeout_ms)
        for start in range(0, len(wanted), ID_CHUNK):
            chunk = wanted[start:start + ID_CHUNK]
            for row in conn.execute(
                sa.select(a.c.account_number, a.c.balance, a.c.reserved_balance)
                .where(a.c.account_number.in_(chunk))
            ):
                key = AccountKey(service, row.account_number)
                found[key] = AccountReading(key, _money(row.balance),
                                            _money(row.reserved_balance), "sql")
            rows = conn.execute(
                sa.select(o.c.transaction_id, o.c.status, o.c.from_account_number,
                          o.c.created_at)
                .where(o.c.from_account_number.in_(chunk),
                       sa.or_(o.c.status == "PENDING", o.c.created_at >= since))
                .limit(JOURNAL_ROW_LIMIT)
            ).all()
            complete = complete and len(rows) < JOURNAL_ROW_LIMIT
            outgoing.update({r.transaction_id: (r.status, r.from_account_number, r.created_at)
                             for r in rows})
            rows = conn.execute(
                sa.select(i.c.transaction_id, i.c.status, i.c.to_account_number,
                          i.c.created_at)
                .where(i.c.to_account_number.in_(chunk), i.c.created_at >= since)
                .limit(JOURNAL_ROW_LIMIT)
            ).all()
            complete = complete and len(rows) < JOURNAL_ROW_LIMIT
            incoming.update({r.transaction_id: (r.status, r.to_account_number, r.created_at)
                             for r in rows})
    return BankBooks(service, found, outgoing, incoming, since, complete)


def read_bank_db(
    engine: Engine,
    service: str,
    outgoing_ids: Sequence[uuid.UUID],
    incoming_ids: Sequence[uuid.UUID],
    stale_cutoff: datetime,
    statement_timeout_ms: int,
) -> BankSnapshot:
    """Everything the checks need from one bank's database, in one snapshot.
    ``stale_cutoff`` is naive UTC, like the services' timestamps."""
    a, o, i, e = (schema.accounts, schema.bank_outgoing_transactions,
                  schema.incoming_transactions, schema.bank_outbox_events)
    created: dict[uuid.UUID, datetime] = {}
    with engine.connect() as conn, conn.begin():
        _readonly_transaction(conn, statement_timeout_ms)
        out_of_bounds = [
            AccountReading(AccountKey(service, r.account_number), _money(r.balance),
                           _money(r.reserved_balance), "sql")
            for r in conn.execute(
                sa.select(a.c.account_number, a.c.balance, a.c.reserved_balance)
                .where(sa.or_(a.c.reserved_balance < 0, a.c.reserved_balance > a.c.balance))
                .limit(ROW_LIMIT)
            )
        ]
        pending = (
            sa.select(o.c.from_account_number.label("account"),
                      sa.func.sum(o.c.amount).label("pending"))
            .where(o.c.status == "PENDING").group_by(o.c.from_account_number).subquery()
        )
        pending_sum = sa.func.coalesce(pending.c.pending, 0)
        mismatches = [
            PendingSum(AccountKey(service, r.account_number), _money(r.reserved_balance),
                       _money(r.pending))
            for r in conn.execute(
                sa.select(a.c.account_number, a.c.reserved_balance,
                          pending_sum.label("pending"))
                .select_from(a.outerjoin(pending, pending.c.account == a.c.account_number))
                # a tolerance of half a cent: SQLite keeps amounts as floats
                .where(sa.func.abs(a.c.reserved_balance - pending_sum) > 0.005)
                .limit(ROW_LIMIT)
            )
        ]
        return BankSnapshot(
            service=service,
            out_of_bounds=out_of_bounds,
            pending_mismatches=mismatches,
            outbox=_outbox(conn, e, service),
            missing_outbox=_missing_outbox(conn, o, e, TOPIC_INITIATED, service),
            stale=_stale(conn, o, service, stale_cutoff, "from_account_number")
            + _stale(conn, i, service, stale_cutoff, "to_account_number"),
            outgoing_status=_statuses(conn, o, outgoing_ids, created),
            incoming_status=_statuses(conn, i, incoming_ids, created),
            created_at=created,
        )


def read_clearing_db(
    engine: Engine,
    ids: Sequence[uuid.UUID],
    bankgood_numbers: Iterable[str],
    stale_cutoff: datetime,
    statement_timeout_ms: int,
    service: str = "clearing",
) -> ClearingSnapshot:
    """Everything the checks need from the clearing's database, in one snapshot;
    ``mappings`` covers ``bankgood_numbers`` and the payees of stale rows."""
    o, e, m = (schema.clearing_outgoing_transactions, schema.clearing_outbox_events,
               schema.bank_mappings)
    created: dict[uuid.UUID, datetime] = {}
    with engine.connect() as conn, conn.begin():
        _readonly_transaction(conn, statement_timeout_ms)
        stale = _stale(conn, o, service, stale_cutoff, "from_account_number")
        wanted = sorted(set(bankgood_numbers) | {r.bankgood_number for r in stale
                                                 if r.bankgood_number is not None})
        mappings: dict[str, tuple[str | None, str | None] | None] = {b: None for b in wanted}
        for start in range(0, len(wanted), ID_CHUNK):
            for row in conn.execute(
                sa.select(m.c.bankgood_number, m.c.clearing_number, m.c.account_number)
                .where(m.c.bankgood_number.in_(wanted[start:start + ID_CHUNK]))
            ):
                mappings[row.bankgood_number] = (row.clearing_number, row.account_number)
        return ClearingSnapshot(
            service=service,
            outbox=_outbox(conn, e, service),
            missing_outbox=_missing_outbox(conn, o, e, TOPIC_FORWARDED, service),
            stale=stale,
            status=_statuses(conn, o, ids, created),
            created_at=created,
            mappings=mappings,
        )
