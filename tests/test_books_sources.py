"""The readers: the contract's tables on a real PostgreSQL, and the tracking ledger
on SQLite and PostgreSQL, read exactly (Decimal money, one snapshot) and never
written."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from bgmock_twin.books.model import AccountKey, DepositFact, Progress
from bgmock_twin.books.sources import LedgerBehind, LedgerReader, progress_of
from bgmock_twin.books.sql import read_bank_books, read_bank_db, read_clearing_db
from bgmock_twin.clients.databases import readonly_engine
from bgmock_twin.contract import Channel
from bgmock_twin.contract import tables as schema
from bgmock_twin.tracking import ledger as ledger_tables
from bgmock_twin.tracking.ledger import Ledger
from tests.support.ledgers import running_ledger
from tests.support.postgres import writable_engine

D = Decimal
NOW = datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def _tx(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


@pytest.fixture
def bank_db(pg_database: str) -> Iterator[tuple[str, sa.Engine]]:
    """A bank database in the contract layout with a few rows of every kind."""
    writer = writable_engine(pg_database)
    schema.bank_metadata.create_all(writer)
    acc, out, inc, box = (schema.accounts, schema.bank_outgoing_transactions,
                          schema.incoming_transactions, schema.bank_outbox_events)
    with writer.begin() as conn:
        conn.execute(sa.insert(acc), [
            {"account_id": uuid.uuid4(), "account_number": "TWIN-A-001", "balance": D("100.10"),
             "reserved_balance": D("30.00")},
            {"account_id": uuid.uuid4(), "account_number": "TWIN-A-002", "balance": D("5.00"),
             "reserved_balance": D("0")},
            {"account_id": uuid.uuid4(), "account_number": "OTHER", "balance": D("1.00"),
             "reserved_balance": D("2.00")},
        ])
        conn.execute(sa.insert(out), [
            # pending 10 + 20 = reserved 30: consistent
            {"transaction_id": _tx(1), "from_account_number": "TWIN-A-001", "amount": D("10"),
             "status": "PENDING", "created_at": NOW - timedelta(seconds=5)},
            {"transaction_id": _tx(2), "from_account_number": "TWIN-A-001", "amount": D("20"),
             "status": "PENDING", "created_at": NOW - timedelta(seconds=300)},
            {"transaction_id": _tx(3), "from_account_number": "TWIN-A-002", "amount": D("7"),
             "status": "SUCCESS", "created_at": NOW - timedelta(seconds=300)},
        ])
        conn.execute(sa.insert(inc), [
            {"transaction_id": _tx(4), "to_account_number": "TWIN-A-002", "amount": D("3"),
             "status": "SUCCESS", "created_at": NOW},
        ])
        conn.execute(sa.insert(box), [
            # tx 2 has lost its outbox row; tx 1's row waits to be published
            {"transaction_id": _tx(1), "topic": "transactions.initiated", "message_key": "01",
             "payload": "{}", "published": False, "created_at": NOW - timedelta(seconds=5)},
            {"transaction_id": _tx(3), "topic": "transactions.initiated", "message_key": "01",
             "payload": "{}", "published": True, "created_at": NOW - timedelta(seconds=300)},
        ])
    writer.dispose()
    engine = readonly_engine(pg_database, 1000)
    try:
        yield pg_database, engine
    finally:
        engine.dispose()


def test_bank_snapshot_reads_every_invariant_input(bank_db: tuple[str, sa.Engine]) -> None:
    _, engine = bank_db
    snapshot = read_bank_db(engine, "bank_a", [_tx(1), _tx(3), _tx(9)], [_tx(4)],
                            NOW - timedelta(seconds=30), 1000)
    assert [(r.account.number, r.balance, r.reserved) for r in snapshot.out_of_bounds] == \
        [("OTHER", D("1.00"), D("2.00"))]
    assert [(m.account.number, m.reserved, m.pending) for m in snapshot.pending_mismatches] == \
        [("OTHER", D("2.00"), D("0.00"))]
    assert snapshot.outbox.unpublished == 1
    assert snapshot.outbox.oldest_created_at == NOW - timedelta(seconds=5)
    assert [r.transaction_id for r in snapshot.missing_outbox] == [_tx(2)]
    assert [(r.transaction_id, r.amount) for r in snapshot.stale] == [(_tx(2), D("20.00"))]
    assert snapshot.outgoing_status == {_tx(1): "PENDING", _tx(3): "SUCCESS"}
    assert snapshot.incoming_status == {_tx(4): "SUCCESS"}
    books = read_bank_books(engine, "bank_a", ["TWIN-A-001", "TWIN-A-002", "TWIN-A-404"],
                            NOW - timedelta(seconds=60), 1000)
    assert books.accounts[AccountKey("bank_a", "TWIN-A-404")] is None
    reading = books.accounts[AccountKey("bank_a", "TWIN-A-001")]
    assert reading is not None and (reading.balance, reading.reserved, reading.source) == \
        (D("100.10"), D("30.00"), "sql")
    # the journal of the twin's accounts: PENDING whatever its age, the rest if recent
    assert books.outgoing == {
        _tx(1): ("PENDING", "TWIN-A-001", NOW - timedelta(seconds=5)),
        _tx(2): ("PENDING", "TWIN-A-001", NOW - timedelta(seconds=300))}
    assert books.incoming == {_tx(4): ("SUCCESS", "TWIN-A-002", NOW)}
    assert snapshot.created_at[_tx(3)] == NOW - timedelta(seconds=300)
    assert books.complete


def test_reads_are_read_only_even_on_a_writable_engine(bank_db: tuple[str, sa.Engine]) -> None:
    """The embedded emulator hands over its own (writable) engines: the reader's
    transaction is still read-only and bounded by the statement timeout."""
    url, _ = bank_db
    writable = writable_engine(url)
    locker = writable_engine(url)
    try:
        with locker.connect() as conn:
            conn.execute(sa.text("BEGIN"))
            conn.execute(sa.text("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE"))
            started = datetime.now(UTC)
            with pytest.raises(sa.exc.OperationalError, match="statement timeout"):
                read_bank_books(writable, "bank_a", ["TWIN-A-001"], NOW, 300)
            assert (datetime.now(UTC) - started).total_seconds() < 5
            conn.execute(sa.text("ROLLBACK"))
        from bgmock_twin.books import sql

        with writable.connect() as conn, conn.begin():
            sql._readonly_transaction(conn, 1000)
            with pytest.raises(sa.exc.InternalError, match="read-only"):
                conn.execute(sa.text("DELETE FROM accounts"))
    finally:
        writable.dispose()
        locker.dispose()


def test_clearing_snapshot(pg_database: str) -> None:
    writer = writable_engine(pg_database)
    schema.clearing_metadata.create_all(writer)
    out, box, maps = (schema.clearing_outgoing_transactions, schema.clearing_outbox_events,
                      schema.bank_mappings)
    with writer.begin() as conn:
        conn.execute(sa.insert(maps), [{"bankgood_number": "TWIN-BG-B-001",
                                        "clearing_number": "02", "account_number": "TWIN-B-001",
                                        "bank_name": "Bank B"}])
        conn.execute(sa.insert(out), [
            {"transaction_id": _tx(1), "from_account_number": "TWIN-A-001", "amount": D("1"),
             "status": "PENDING", "created_at": NOW - timedelta(seconds=100),
             "to_bankgood_number": "TWIN-BG-X"},
            {"transaction_id": _tx(2), "from_account_number": "TWIN-A-001", "amount": D("1"),
             "status": "FAILED", "created_at": NOW, "to_bankgood_number": "TWIN-BG-B-001"},
        ])
        conn.execute(sa.insert(box), [
            {"transaction_id": _tx(1), "topic": "transactions.forwarded", "message_key": "02",
             "payload": "{}", "published": True, "created_at": NOW - timedelta(seconds=100)},
            {"transaction_id": _tx(2), "topic": "transactions.completed", "message_key": "01",
             "payload": "{}", "published": False, "created_at": NOW - timedelta(seconds=1)},
        ])
    writer.dispose()
    engine = readonly_engine(pg_database, 1000)
    try:
        snap = read_clearing_db(engine, [_tx(1), _tx(2)], ["TWIN-BG-B-001", "NONE"],
                                NOW - timedelta(seconds=30), 1000)
    finally:
        engine.dispose()
    assert snap.status == {_tx(1): "PENDING", _tx(2): "FAILED"}
    assert snap.missing_outbox == []
    assert [r.transaction_id for r in snap.stale] == [_tx(1)]
    assert snap.outbox.unpublished == 1
    assert snap.mappings == {"TWIN-BG-B-001": ("02", "TWIN-B-001"), "NONE": None,
                             "TWIN-BG-X": None}


# --- ledger ----------------------------------------------------------------------------------
def _payment_row(pid: str, amount: str, *, channel: str = "rest", outcome: str | None,
                 state: str, final_status: str | None = None, updated: datetime,
                 tx: uuid.UUID | None = None, message: str | None = None,
                 ambiguous: bool = False, src: tuple[str, str] = ("01", "TWIN-A-001"),
                 dst: tuple[str, str] = ("02", "TWIN-B-001")) -> dict[str, object]:
    row: dict[str, object] = {c.name: None for c in ledger_tables.payments.columns}
    row.update({
        "payment_id": pid, "transaction_id": str(tx) if tx else None, "instance_id": "t",
        "channel": channel, "route": "a_to_b", "kind": "normal", "from_clearing": src[0],
        "from_account": src[1], "to_bankgood": "BG", "to_clearing": dst[0],
        "to_account": dst[1], "amount": D(amount), "intended_at": updated,
        "status": outcome or "in_flight", "state": state, "finished": outcome is not None,
        "outcome": outcome, "final_status": final_status, "message": message,
        "refusal_ambiguous": ambiguous,
        "finished_at": updated if outcome else None, "updated_at": updated,
    })
    return row


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with running_ledger(ledger_url) as led:
        yield led


def test_ledger_snapshot_sums_old_rows_and_details_recent_ones(ledger: Ledger) -> None:
    old = datetime.now(UTC) - timedelta(minutes=5)
    recent = datetime.now(UTC)
    rows = [
        # 3 settled successes A-001 -> B-001: summed into one exact fact
        *[_payment_row(f"s{i}", "0.10", outcome="success", state="settled",
                       final_status="SUCCESS", updated=old) for i in range(3)],
        _payment_row("f1", "5.55", outcome="failed", state="settled", final_status="FAILED",
                     updated=old),
        _payment_row("r1", "9.99", outcome="rejected", state="submitted", updated=old,
                     message="not accepted by bank_a: timeout", ambiguous=True),
        _payment_row("u1", "1.00", outcome=None, state="completed", final_status="SUCCESS",
                     updated=old, tx=uuid.uuid4()),
        _payment_row("n1", "2.00", outcome="success", state="settled", final_status="SUCCESS",
                     updated=recent),
        _payment_row("k1", "4.00", channel="kafka", outcome="success", state="completed",
                     final_status="SUCCESS", updated=old, dst=("02", "TWIN-B-002"), tx=uuid.uuid4()),
    ]
    for row in rows:
        ledger.write("payment", row)
    ledger.write("deposit", {"deposit_id": "d1", "instance_id": "t", "clearing_number": "01",
                             "account_number": "TWIN-A-001", "amount": D("1000.00"),
                             "reason": "initial", "at": old})
    ledger.write("deposit", {"deposit_id": "d2", "instance_id": "t", "clearing_number": "02",
                             "account_number": "TWIN-B-001", "amount": D("50.00"),
                             "reason": "top_up", "at": recent})
    assert ledger.flush(5)
    reader = LedgerReader(ledger.engine, ledger_tables.payments, ledger_tables.deposits,
                          flush=ledger.flush)
    snap = reader.snapshot(recent - timedelta(seconds=1))
    facts = sorted((p.progress.value, p.amount, p.channel.value, str(p.destination),
                    p.payment_id.startswith("settled#")) for p in snap.payments)
    assert facts == sorted([
        ("succeeded", D("0.30"), "rest", "bank_b/TWIN-B-001", True),
        ("failed", D("5.55"), "rest", "bank_b/TWIN-B-001", True),
        ("succeeded", D("4.00"), "kafka", "bank_b/TWIN-B-002", True),
        ("submitted", D("9.99"), "rest", "bank_b/TWIN-B-001", False),  # ambiguous rejection
        ("credited", D("1.00"), "rest", "bank_b/TWIN-B-001", False),
        ("submitted", D("2.00"), "rest", "bank_b/TWIN-B-001", False),  # changed since reads
    ])
    assert sorted(snap.deposits, key=lambda d: d.amount) == [
        DepositFact(AccountKey("bank_b", "TWIN-B-001"), D("50.00"), confirmed=False),
        DepositFact(AccountKey("bank_a", "TWIN-A-001"), D("1000.00"), confirmed=True),
    ]
    assert reader.deposit_accounts() == {AccountKey("bank_a", "TWIN-A-001"),
                                         AccountKey("bank_b", "TWIN-B-001")}
    finished = reader.finished_between(old - timedelta(seconds=1), recent)
    ids = [p.payment_id for _, p in finished]
    assert "k1" in ids and "u1" not in ids and "r1" not in ids  # no transaction id: not asked
    assert snap.meta["u1"].transaction_id is not None
    assert abs((snap.meta["n1"].intended_at - recent).total_seconds()) < 0.001
    kafka = next(p for _, p in finished if p.payment_id == "k1")
    assert (kafka.channel, kafka.outcome, kafka.destination_service) == \
        ("kafka", "success", "bank_b")


@pytest.mark.parametrize(("args", "expected"), [
    (("rest", "success", "settled", "SUCCESS", True, None), Progress.SUCCEEDED),
    (("rest", "failed", "settled", "FAILED", True, None), Progress.FAILED),
    # the last argument: the refusal was ambiguous (``tracking.refusals``)
    (("rest", "success", "settled", "SUCCESS", True, False), Progress.SUCCEEDED),
    (("rest", "failed", "settled", "FAILED", True, False), Progress.FAILED),
    (("rest", "rejected", "accepted", "FAILED", True, False), Progress.REJECTED),
    (("rest", "rejected", "accepted", "FAILED", True, True), Progress.REJECTED),  # after its 202
    (("rest", "rejected", "submitted", "FAILED", False, False), Progress.REJECTED),
    (("rest", "rejected", "submitted", "FAILED", False, True), Progress.SUBMITTED),
    (("rest", None, "submitted", None, False, False), Progress.SUBMITTED),
    (("rest", None, "accepted", None, True, False), Progress.RESERVED),
    (("rest", None, "processed", None, True, False), Progress.RESERVED),
    (("rest", None, "completed", "SUCCESS", True, False), Progress.CREDITED),
    (("rest", None, "completed", "FAILED", True, False), Progress.NOT_CREDITED),
    (("kafka", None, "forwarded", None, True, False), Progress.SUBMITTED),
    (("kafka", "success", "completed", "SUCCESS", True, False), Progress.SUCCEEDED),
    (("kafka", "rejected", "submitted", "FAILED", True, True), Progress.SUBMITTED),
    # events after a rejection: the furthest step decides
    (("kafka", "rejected", "completed", "SUCCESS", True, True), Progress.SUCCEEDED),
])
def test_progress_of_ledger_rows(args: tuple[str, str | None, str, str | None, bool, bool],
                                 expected: Progress) -> None:
    assert progress_of(*args) is expected
    assert Channel(args[0])  # the ledger's channel names are the model's


class _Writer:
    """A ledger writer that stores what it holds after ``seconds`` (or never)."""

    def __init__(self, seconds: float | None, failing: bool = False) -> None:
        self.remaining = seconds
        self.is_failing = failing
        self.waited = 0.0

    def flush(self, timeout: float) -> bool:
        self.waited += timeout
        if self.remaining is None or self.remaining > timeout:
            if self.remaining is not None:
                self.remaining -= timeout
            return False
        return True

    def reader(self) -> LedgerReader:
        return LedgerReader(sa.create_engine("sqlite://"), ledger_tables.payments,
                            ledger_tables.deposits, flush=self.flush, unwritten=lambda: 7,
                            failing=lambda: self.is_failing, patience_seconds=3.0)


def test_a_slow_but_healthy_writer_gets_patience_a_failing_one_does_not() -> None:
    """A busy machine's writer that stores its rows within the patience is current;
    one that is failing (a full disk) makes the ledger behind at once: unknown, never
    a verdict on rows it holds."""
    slow = _Writer(2.5)
    slow.reader().ensure_current(1.0)
    assert slow.waited == 4.0
    failing = _Writer(2.5, failing=True)
    with pytest.raises(LedgerBehind, match="7 unwritten rows"):
        failing.reader().ensure_current(1.0)
    assert failing.waited == 1.0
    stuck = _Writer(None)
    with pytest.raises(LedgerBehind):
        stuck.reader().ensure_current(1.0)
    assert stuck.waited == 4.0
