"""Re-matching a payment whose 202 never came back (``tracking.rematch``): unique
triples by construction, the initiated-event witness, the bank-table witness (a
real SQLite table in BGMock's layout) and the "never sent" proof, and the ledger
column of an older ledger added on open."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa

from bgmock_twin.contract import OutgoingTransactionEvent, Status
from bgmock_twin.contract.tables import bank_metadata, bank_outgoing_transactions
from bgmock_twin.tracking.lifecycle import Channel, Kind, Payment, Route
from bgmock_twin.tracking.rematch import (
    MATCHED_BY_DATABASE,
    NOT_SENT,
    InFlightKeys,
    Rematcher,
    nudged_amounts,
)

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def payment(amount: str, account: str = "TWIN-A-001", bankgood: str = "BG-B-1") -> Payment:
    return Payment(payment_id=str(uuid.uuid4()), channel=Channel.REST, route=Route.A_TO_B,
                   kind=Kind.NORMAL, from_clearing="01", from_account=account,
                   to_bankgood=bankgood, to_clearing="02", to_account="TWIN-B-001",
                   amount=Decimal(amount), intended_at=NOW, intended_mono=0.0)


class FakeTracker:
    """Records what the matcher decided (the tracker's own rules are tested elsewhere)."""

    def __init__(self) -> None:
        self.accepted_: dict[str, tuple[uuid.UUID, str | None]] = {}
        self.rejected: dict[str, str] = {}
        self.known: set[str] = set()

    def accepted(self, payment_id: str, transaction_id: uuid.UUID,
                 matched_by: str | None = None) -> None:
        self.accepted_[payment_id] = (transaction_id, matched_by)

    def reject(self, payment_id: str, reason: str, ambiguous: bool = False) -> None:
        self.rejected[payment_id] = reason

    def knows_transaction(self, transaction_id: str) -> bool:
        return transaction_id in self.known


def test_nudged_amounts_stay_in_range_nearest_first() -> None:
    assert list(nudged_amounts(Decimal("1.01"), Decimal("1.00"), Decimal("1.03"))) == [
        Decimal("1.01"), Decimal("1.02"), Decimal("1.00"), Decimal("1.03")]
    assert list(nudged_amounts(Decimal("5.00"), Decimal("5.00"), Decimal("5.00"))) == [
        Decimal("5.00")]


def test_no_two_unfinished_payments_share_a_triple() -> None:
    live: set[str] = set()
    keys = InFlightKeys(lambda pid: pid in live)
    first, second, third = payment("10.00"), payment("10.00"), payment("10.00")
    for p in (first, second):
        assert keys.claim(p, Decimal("9.99"), Decimal("10.01"), lambda p: live.add(p.payment_id))
    assert {first.amount, second.amount} == {Decimal("10.00"), Decimal("10.01")}
    # a fixed amount already held cannot be made unique: it is sent, and said to share
    assert not keys.claim(third, Decimal("10.00"), Decimal("10.00"),
                          lambda p: live.add(p.payment_id))
    # a finished holder frees its triple
    live.discard(first.payment_id)
    fourth = payment("10.00")
    assert keys.claim(fourth, Decimal("10.00"), Decimal("10.00"), lambda p: None)


def test_an_unclaimed_initiated_event_finds_its_one_payment() -> None:
    tracker = FakeTracker()
    theirs = uuid.uuid4()  # a transaction another payment of the (shared) ledger holds
    matcher = Rematcher(tracker, {}, lambda ids: {str(theirs)} & set(ids), 1.0,
                        lambda pid: None)
    waiting = payment("12.30")
    matcher.add(waiting)
    assert matcher.match_event(OutgoingTransactionEvent(
        theirs, "01", "TWIN-A-001", "BG-B-1", Decimal("12.30"), Status.PENDING)) is None
    event = OutgoingTransactionEvent(uuid.uuid4(), "01", "TWIN-A-001", "BG-B-1",
                                     Decimal("12.3"), Status.PENDING)
    other = OutgoingTransactionEvent(uuid.uuid4(), "01", "TWIN-A-001", "BG-B-1",
                                     Decimal("12.31"), Status.PENDING)
    assert matcher.match_event(other) is None
    assert matcher.match_event(event) == waiting.payment_id
    assert matcher.match_event(event) is None  # taken once
    # two payments waiting for one triple: ambiguous, neither is taken
    a, b = payment("7.00"), payment("7.00")
    matcher.add(a)
    matcher.add(b)
    assert matcher.match_event(OutgoingTransactionEvent(
        uuid.uuid4(), "01", "TWIN-A-001", "BG-B-1", Decimal("7.00"), Status.PENDING)) is None
    assert matcher.pending == 2


def test_the_bank_table_matches_lost_202s_and_proves_the_unsent(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path}/bank_a.db")
    bank_metadata.create_all(engine)
    sent, known, unsent = payment("20.00"), payment("21.00"), payment("22.00")
    stale = payment("23.00")
    tx_sent, tx_known, tx_old = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    naive = NOW.replace(tzinfo=None)
    with engine.begin() as conn:
        for tx, p, at in ((tx_sent, sent, naive + timedelta(seconds=1)),
                          (tx_known, known, naive + timedelta(seconds=1)),
                          (tx_old, stale, naive - timedelta(hours=1))):
            conn.execute(sa.insert(bank_outgoing_transactions).values(
                transaction_id=tx, from_clearing_number="01", from_account_number=p.from_account,
                to_bankgood_number=p.to_bankgood, amount=p.amount, status="PENDING",
                created_at=at, updated_at=at))
    tracker = FakeTracker()
    matched: list[str] = []
    matcher = Rematcher(tracker, {"01": engine}, lambda ids: {str(tx_known)} & set(ids),
                        settle_seconds=0.0, on_matched=matched.append)
    for p in (sent, known, unsent, stale):
        matcher.add(p, sender_gone=True)
    matcher.sweep(force=True)
    assert tracker.accepted_ == {sent.payment_id: (tx_sent, MATCHED_BY_DATABASE)}
    assert matched == [sent.payment_id]
    # the only row with known's triple belongs to another payment of the ledger, and
    # stale's row is outside the send window: neither was ever stored for them
    assert tracker.rejected == {unsent.payment_id: NOT_SENT, stale.payment_id: NOT_SENT,
                                known.payment_id: NOT_SENT}
    assert matcher.pending == 0


def test_an_older_ledger_gets_the_matched_by_column(tmp_path: Path) -> None:
    from bgmock_twin.tracking.ledger import Ledger
    from bgmock_twin.tracking.ledger.schema import payments

    url = f"sqlite:///{tmp_path}/old.db"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        columns = [c._copy() for c in payments.columns if c.name != "matched_by"]
        sa.Table(payments.name, sa.MetaData(), *columns).create(conn)
    ledger = Ledger(url, buffer_size=100)
    assert ledger.open()
    try:
        names = {c["name"] for c in sa.inspect(ledger.engine).get_columns(payments.name)}
        assert "matched_by" in names
    finally:
        ledger.close()
