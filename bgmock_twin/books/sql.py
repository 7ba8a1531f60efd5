"""Everything the checks read from BGMock's three databases, in the contract's table
layout: one read-only transaction per database (a consistent snapshot on
PostgreSQL, with a statement timeout). Read-only, always."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from bgmock_twin.books.model import AccountKey
from bgmock_twin.books.readings import AccountReading, OutboxStats, PendingSum, StoredRow
from bgmock_twin.contract import CLEARING, TOPIC_FORWARDED, TOPIC_INITIATED
from bgmock_twin.contract import tables as schema

ROW_LIMIT = 1000  # offending rows fetched per query; counts beyond it are noted
ID_CHUNK = 500


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
    service: str = CLEARING.name,
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
