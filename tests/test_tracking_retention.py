"""Retention and opening balances keep the books right, on SQLite and PostgreSQL.

The books derive every expected balance from the ledger (deposits plus the effect of
each payment), so pruning payments must carry their effect forward, and a fresh
ledger must start from what the banks hold. Each test compares the books' own model
(``LedgerReader`` + ``expect``, the code the reconciliation runs) before and after,
or against the real balances of the embedded emulator.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

from bgmock_twin.books import checks as c
from bgmock_twin.books.checks import AccountReading, CheckStatus
from bgmock_twin.books.model import AccountKey, Expectations, Progress, expect
from bgmock_twin.books.reconcile import ReconcileConfig, Reconciler
from bgmock_twin.books.rest import read_rest_accounts
from bgmock_twin.books.sources import LedgerReader, bank_of, progress_of
from bgmock_twin.bus.base import BusError
from bgmock_twin.clients.rest import ServiceError
from bgmock_twin.contract import Status
from bgmock_twin.scheduler import JobScheduler
from bgmock_twin.settings import load_settings
from bgmock_twin.tracking.ledger import (
    CARRY_FORWARD,
    Ledger,
    LedgerUnavailable,
    PaymentQuery,
    deposits,
    payments,
)
from bgmock_twin.tracking.ledger.upgrade import LEGACY_AMBIGUOUS_MARKERS
from bgmock_twin.tracking.lifecycle import (
    Channel,
    Kind,
    Payment,
    Route,
    Step,
    check_deadline,
    observe_step,
    reject,
)
from bgmock_twin.tracking.provisioning import Fixtures, Provisioner, new_deposit_row
from bgmock_twin.tracking.refusals import (
    REFUSED_STATES,
    certain_rejection_clause,
    refusal_of,
    rejection_is_certain,
)
from bgmock_twin.tracking.service import Tracking
from tests.support.ledgers import running_ledger
from tests.support.ports import wait_for
from tests.support.twins import MemoryBGMock as Bank
from tests.support.twins import await_tracking, memory_bgmock, stop_tracking

NOW = datetime(2025, 11, 20, 10, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=30)
RECENT = NOW - timedelta(hours=1)
D = Decimal
A1, A2, B1, B2 = ("01", "TWIN-A-001"), ("01", "TWIN-A-002"), ("02", "TWIN-B-001"), \
    ("02", "TWIN-B-002")
ACCOUNTS = (A1, A2, B1, B2)
READ_ORDER = ("bank_a", "bank_b")


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with running_ledger(ledger_url, buffer_size=10_000, flush_interval=0.02) as book:
        yield book


# --- building realistic rows with the lifecycle rules ----------------------------------------
def payment(src: tuple[str, str], dst: tuple[str, str], amount: str,
            channel: Channel = Channel.REST, intended_at: datetime = OLD) -> Payment:
    return Payment(
        payment_id=str(uuid.uuid4()), channel=channel,
        route=Route.A_TO_B if src[0] == "01" else Route.B_TO_A, kind=Kind.NORMAL,
        from_clearing=src[0], from_account=src[1], to_bankgood=f"BG-{dst[1]}",
        to_clearing=dst[0], to_account=dst[1], amount=D(amount), intended_at=intended_at,
        intended_mono=1000.0, instance_id="test",
        transaction_id=uuid.uuid4(),
    )


def walk(p: Payment, steps: Iterable[Step], status: Status | None = None) -> Payment:
    """Observe ``steps`` in order; the final ones carry ``status``."""
    t = p.intended_mono
    for step in steps:
        t += 0.5
        final = step in (Step.PROCESSED, Step.COMPLETED, Step.SETTLED)
        observe_step(p, step, t, p.intended_at, status if final else None)
    return p


REST_FLOW = (Step.ACCEPTED, Step.INITIATED, Step.FORWARDED, Step.PROCESSED, Step.COMPLETED,
             Step.SETTLED)
KAFKA_FLOW = (Step.INITIATED, Step.FORWARDED, Step.PROCESSED, Step.COMPLETED)


def flow(channel: Channel) -> tuple[Step, ...]:
    return REST_FLOW if channel is Channel.REST else KAFKA_FLOW


def succeed(p: Payment) -> Payment:
    return walk(p, flow(p.channel), Status.SUCCESS)


def fail(p: Payment) -> Payment:
    return walk(p, flow(p.channel), Status.FAILED)


def refuse(p: Payment, message: str, accepted: bool, ambiguous: bool = False) -> Payment:
    """Rejected by the source: after its 202 (stored FAILED) or without any answer;
    ``ambiguous`` when the request may have arrived after all."""
    if accepted:
        walk(p, (Step.ACCEPTED,))
    else:
        p.transaction_id = None
    reject(p, message, p.intended_at, ambiguous)
    return p


def deposit_row(account: tuple[str, str], amount: str, reason: str = "initial",
                at: datetime = OLD - timedelta(days=1)) -> dict[str, object]:
    return {"deposit_id": str(uuid.uuid4()), "instance_id": "test",
            "clearing_number": account[0], "account_number": account[1],
            "amount": D(amount), "reason": reason, "at": at}


def store(ledger: Ledger, rows: Iterable[Payment], written: datetime) -> None:
    for p in rows:
        ledger.write_payment(p, written)
    assert ledger.flush(5)


# --- the books' view --------------------------------------------------------------------------
def key(account: tuple[str, str]) -> AccountKey:
    return AccountKey(bank_of(account[0]), account[1])


def books_model(ledger: Ledger, accounts: Iterable[tuple[str, str]] = ACCOUNTS) -> Expectations:
    """Exactly what a reconciliation derives from this ledger (read well after every
    row was written: nothing is "recent")."""
    reader = LedgerReader(ledger.engine, payments, deposits, flush=ledger.flush)
    snapshot = reader.snapshot(datetime.now(UTC))
    return expect({key(a) for a in accounts} | snapshot.accounts, snapshot.deposits,
                  snapshot.payments, READ_ORDER)


def balances(model: Expectations) -> dict[AccountKey, tuple[object, object]]:
    """Per account the expected balance and reserved ranges (ids of summed payments
    are positional, so in-flight lists are left out)."""
    return {a: (e.balance, e.reserved) for a, e in model.accounts.items()}


def readings(real: dict[tuple[str, str], str]) -> dict[AccountKey, AccountReading | None]:
    return {key(a): AccountReading(key(a), D(v), D("0"), "sql") for a, v in real.items()}


def carried(ledger: Ledger) -> dict[tuple[str, str], Decimal]:
    rows = [r for r in ledger.load_deposits() if r["reason"] == CARRY_FORWARD]
    result: dict[tuple[str, str], Decimal] = {}
    for r in rows:
        account = (r["clearing_number"], r["account_number"])
        assert account not in result, "one carry-forward row per account"
        result[account] = r["amount"]
    return result


# --- retention --------------------------------------------------------------------------------
@dataclass
class Scenario:
    pruned_by_age: list[Payment]
    kept: list[Payment]  # never prunable: unfinished, or their effect is uncertain
    recent: list[Payment]


def scenario(ledger: Ledger) -> Scenario:
    for account in ACCOUNTS:
        ledger.write("deposit", deposit_row(account, "1000.00"))
    stuck_then_done = payment(A2, B2, "12.34")
    walk(stuck_then_done, (Step.ACCEPTED, Step.INITIATED))
    check_deadline(stuck_then_done, stuck_then_done.intended_mono + 500, 10, 30)
    assert stuck_then_done.counted is not None and stuck_then_done.counted.value == "stuck"
    walk(stuck_then_done, (Step.FORWARDED, Step.PROCESSED, Step.COMPLETED, Step.SETTLED),
         Status.SUCCESS)  # finished after all: its real outcome decides its effect
    pruned = [
        succeed(payment(A1, B1, "100.00")),
        succeed(payment(B1, A2, "30.50")),
        succeed(payment(A1, B2, "7.25", Channel.KAFKA)),  # money from outside
        fail(payment(A2, B1, "50.00")),
        fail(payment(B2, A1, "9.00", Channel.KAFKA)),
        refuse(payment(A1, B1, "5000.00"), "rejected by the source bank", accepted=True),
        refuse(payment(A1, B1, "6.00"), "not accepted by bank_a: http_400", accepted=False),
        stuck_then_done,
    ]
    ambiguous_then_events = refuse(payment(B1, A1, "4.00"), "not accepted by bank_b: timeout",
                                   accepted=False, ambiguous=True)
    ambiguous_then_events.transaction_id = uuid.uuid4()
    walk(ambiguous_then_events, (Step.INITIATED, Step.COMPLETED), Status.SUCCESS)
    stuck_open = walk(payment(A1, B2, "3.00"), (Step.ACCEPTED, Step.INITIATED))
    check_deadline(stuck_open, stuck_open.intended_mono + 500, 10, 30)
    kept = [
        refuse(payment(A2, B1, "8.00"), "not accepted by bank_a: timeout", accepted=False,
               ambiguous=True),
        refuse(payment(B2, A2, "2.00", Channel.KAFKA), "not produced: broker down",
               accepted=False, ambiguous=True),
        ambiguous_then_events,
        stuck_open,
        walk(payment(B2, A1, "1.00", Channel.KAFKA), (Step.INITIATED,)),
        payment(B1, A2, "11.00"),  # sent, no answer yet
    ]
    recent = [succeed(payment(B2, A1, "20.00", intended_at=RECENT)),
              succeed(payment(A2, B1, "1.00", intended_at=RECENT + timedelta(seconds=1)))]
    store(ledger, pruned + kept, OLD + timedelta(days=1))
    store(ledger, recent, RECENT + timedelta(minutes=10))
    return Scenario(pruned, kept, recent)


SCENARIO_BALANCES = {A1: "924.00", A2: "1017.16", B1: "1070.50", B2: "999.59"}


def test_pruning_carries_the_effect_forward_and_the_books_see_no_difference(
    ledger: Ledger,
) -> None:
    s = scenario(ledger)
    before = books_model(ledger)
    assert not before.accounts[key(A1)].balance.exact  # in-flight payments leave ranges
    # what the banks hold: deposits, the settled payments, and each in-flight one where
    # it stands (only the rejected-then-credited one has credited A1 so far)
    real = readings(SCENARIO_BALANCES)
    banks = list(READ_ORDER)
    assert c.balance_drift(before, real, banks).status is CheckStatus.OK
    assert c.conservation(before, real).status is CheckStatus.OK

    assert ledger.prune(timedelta(days=7), 1_000_000, NOW) == len(s.pruned_by_age)
    after_age = books_model(ledger)
    assert balances(after_age) == balances(before)
    assert after_age.total == before.total
    # REST success: source -amount, destination +amount; Kafka success: destination
    # only; failures and certain rejections: nothing. Negative where money went out.
    assert carried(ledger) == {A1: D("-100.00"), B1: D("69.50"), A2: D("18.16"),
                               B2: D("19.59")}

    # the count limit takes the oldest settled payments, never the kept ones
    assert ledger.prune(timedelta(days=7), 1, NOW) == len(s.recent)
    after_count = books_model(ledger)
    assert balances(after_count) == balances(before)
    assert after_count.total == before.total
    assert {r.payment_id for r in ledger.query(PaymentQuery(limit=100))} == \
        {p.payment_id for p in s.kept}
    assert carried(ledger) == {A1: D("-80.00"), B1: D("70.50"), A2: D("17.16"),
                               B2: D("-0.41")}
    assert ledger.prune(timedelta(days=7), 1, NOW) == 0
    assert len(ledger.load_deposits()) == len(ACCOUNTS) * 2  # merged, not one per run

    # the same real balances pass before and after; a drifted account fails both ways
    drifted = readings({**SCENARIO_BALANCES, A1: "1024.00"})
    for model in (before, after_age, after_count):
        assert c.balance_drift(model, real, banks).status is CheckStatus.OK
        assert c.conservation(model, real).status is CheckStatus.OK
        assert c.balance_drift(model, drifted, banks).status is CheckStatus.VIOLATED
        assert c.conservation(model, drifted).status is CheckStatus.VIOLATED


def test_a_reconciliation_torn_by_a_prune_sees_no_drift(ledger: Ledger) -> None:
    """A ledger read that is not one snapshot (READ COMMITTED on PostgreSQL) may see
    the payments before a prune and the deposits after it: the deleted payments and
    their carry both. The carry is new to that run (written after it read the banks),
    so it counts as a range and the double count cannot show as drift."""
    scenario(ledger)
    reader = LedgerReader(ledger.engine, payments, deposits, flush=ledger.flush)
    balances_read = datetime.now(UTC)
    payments_before = reader.snapshot(balances_read + timedelta(seconds=1)).payments
    assert ledger.prune(timedelta(days=7), 1, NOW) > 0
    deposits_after = reader.snapshot(balances_read - timedelta(seconds=1)).deposits
    assert any(not d.confirmed for d in deposits_after)
    torn = expect({key(a) for a in ACCOUNTS}, deposits_after, payments_before, READ_ORDER)
    real = readings(SCENARIO_BALANCES)
    assert c.balance_drift(torn, real, list(READ_ORDER)).status is CheckStatus.OK
    assert c.conservation(torn, real).status is CheckStatus.OK


def test_followed_and_just_written_payments_are_kept(ledger: Ledger) -> None:
    followed = succeed(payment(A1, B1, "5.00"))
    just_written = succeed(payment(A1, B1, "6.00"))
    old = succeed(payment(A1, B1, "7.00"))
    store(ledger, [followed, old], OLD + timedelta(days=1))
    store(ledger, [just_written], NOW - timedelta(minutes=5))  # within the quiet margin
    assert ledger.prune(timedelta(days=7), 1_000_000, NOW,
                        followed=lambda: {followed.payment_id}) == 1
    assert {r.payment_id for r in ledger.query(PaymentQuery())} == \
        {followed.payment_id, just_written.payment_id}
    assert carried(ledger) == {A1: D("-7.00"), B1: D("7.00")}
    # once no longer followed (and quiet) they go, and the carry grows in place
    assert ledger.prune(timedelta(days=7), 1_000_000, NOW + timedelta(minutes=10)) == 2
    assert carried(ledger) == {A1: D("-18.00"), B1: D("18.00")}


def test_the_carry_forward_is_written_in_the_same_transaction_as_the_delete(
    ledger: Ledger,
) -> None:
    rows = [succeed(payment(A1, B1, "5.00")), succeed(payment(B2, A2, "6.00"))]
    store(ledger, rows, OLD)
    with ledger.engine.begin() as conn:  # make the deposit write fail
        conn.execute(sa.text("ALTER TABLE twin_deposits RENAME TO twin_deposits_away"))
    with pytest.raises(sa.exc.SQLAlchemyError):
        ledger.prune(timedelta(days=7), 1_000_000, NOW)
    assert len(ledger.query(PaymentQuery())) == 2  # nothing deleted without its carry
    with ledger.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE twin_deposits_away RENAME TO twin_deposits"))
    assert ledger.prune(timedelta(days=7), 1_000_000, NOW) == 2
    assert carried(ledger) == {A1: D("-5.00"), B1: D("5.00"), B2: D("-6.00"), A2: D("6.00")}


def test_without_delete_returning_the_rows_are_locked_read_then_deleted(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The path for databases without DELETE ... RETURNING gives the same result."""
    rows = [succeed(payment(A1, B1, "5.00")), succeed(payment(B2, A2, "6.00", Channel.KAFKA)),
            walk(payment(A2, B2, "7.00"), (Step.ACCEPTED,))]
    store(ledger, rows, OLD)
    monkeypatch.setattr(ledger.engine.dialect, "delete_returning", False)
    assert ledger.prune(timedelta(days=7), 1_000_000, NOW) == 2
    assert [r.payment_id for r in ledger.query(PaymentQuery())] == [rows[2].payment_id]
    assert carried(ledger) == {A1: D("-5.00"), B1: D("5.00"), A2: D("6.00")}


def test_prune_refuses_while_buffered_rows_cannot_be_stored(tmp_path: Path) -> None:
    """An older snapshot stored after the delete would bring a payment back, counted
    twice: so nothing is pruned before the buffer is stored."""
    book = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    assert book.open()
    try:
        book.write_payment(succeed(payment(A1, B1, "5.00")), OLD)  # no writer thread
        with pytest.raises(LedgerUnavailable):
            book.prune(timedelta(days=7), 1_000_000, NOW, flush_timeout=0.1)
    finally:
        book.close()


SEND_ERRORS = (
    ServiceError("bank_a", "timeout", "read timed out"),
    ServiceError("bank_a", "timeout", "connect timed out"),
    ServiceError("bank_a", "connection", "ConnectionError"),
    ServiceError("bank_a", "bad_body", "202 without transactionId"),
    ServiceError("bank_a", "http_400", "bad request"),
    ServiceError("bank_a", "http_503", "unavailable"),
    BusError("broker down"),
)


def test_every_rejection_the_books_find_ambiguous_is_kept(ledger: Ledger) -> None:
    """Whatever the refusal, a REST payment the bank stored FAILED after its 202 is a
    certain rejection; without a 202 (or on Kafka) an ambiguous one leaves it open.
    Which refusals are ambiguous is what the old text rule said of their messages."""
    open_, certain = [], []
    for error in SEND_ERRORS:
        refused = refusal_of(error)
        assert refused.ambiguous == any(marker in refused.message
                                        for marker in LEGACY_AMBIGUOUS_MARKERS), refused
        for channel in Channel:
            p = refuse(payment(A1, B1, "5.00", channel), refused.message, accepted=False,
                       ambiguous=refused.ambiguous)
            (open_ if refused.ambiguous else certain).append(p)
        certain.append(refuse(payment(A1, B1, "5.00"), refused.message, accepted=True,
                              ambiguous=refused.ambiguous))
    assert len(open_) == 2 * 5  # four ambiguous send errors and the Kafka one, both channels
    store(ledger, open_ + certain, OLD)
    before = books_model(ledger)
    assert ledger.prune(timedelta(days=7), 1, NOW) == len(certain)
    assert {r.payment_id for r in ledger.query(PaymentQuery(limit=100))} == \
        {p.payment_id for p in open_}
    assert balances(books_model(ledger)) == balances(before)


def test_retention_and_the_books_apply_one_rejection_rule(ledger: Ledger) -> None:
    """``rejection_is_certain`` decides for the books (Python) and retention (SQL):
    on every combination of its inputs the SQL clause picks exactly the rows the
    function calls certain, and those are the rejections the books take as exact."""
    combos = list(itertools.product(Channel, REFUSED_STATES, (True, False), (True, False)))
    rows: dict[str, tuple[Channel, str, bool, bool]] = {}
    for channel, state, has_id, ambiguous in combos:
        p = payment(A1, B1, "1.00", channel)
        if state == "accepted":
            walk(p, (Step.ACCEPTED,))  # a Kafka payment has no such step: stays submitted
        reject(p, "refused", p.intended_at, ambiguous)
        p.transaction_id = uuid.uuid4() if has_id else None
        ledger.write_payment(p, OLD)
        rows[p.payment_id] = (channel, p.state, has_id, ambiguous)
    assert ledger.flush(5)
    t = payments.c
    with ledger.engine.connect() as conn:
        picked = {pid for (pid,) in conn.execute(sa.select(t.payment_id).where(
            certain_rejection_clause(t.channel, t.state, t.transaction_id,
                                     t.refusal_ambiguous)))}
    certain = {pid for pid, args in rows.items() if rejection_is_certain(*args)}
    assert picked == certain and 0 < len(certain) < len(rows)
    for pid, (channel, state, has_id, ambiguous) in rows.items():
        exact = progress_of(channel.value, "rejected", state, "FAILED", has_id, ambiguous)
        assert (exact is Progress.REJECTED) == (pid in certain), rows[pid]


# --- the same, for any mix of payment stories (SQLite in memory, many examples) ---------------
STORIES = ("success", "failed", "refused", "refused_after_202", "ambiguous",
           "ambiguous_then_events", "refused_then_events", "stuck_then_success", "open_0",
           "open_1", "open_2")


def tell(story: str, p: Payment) -> Payment:
    steps = flow(p.channel)
    if story == "success":
        return succeed(p)
    if story == "failed":
        return fail(p)
    if story == "refused":
        return refuse(p, "not accepted by bank_a: http_400", accepted=False)
    if story == "refused_after_202":
        return refuse(p, "rejected by the source bank", accepted=p.channel is Channel.REST)
    if story == "ambiguous":
        return refuse(p, "not produced: down" if p.channel is Channel.KAFKA
                      else "not accepted by bank_a: connection", accepted=False,
                      ambiguous=True)
    if story in ("ambiguous_then_events", "refused_then_events"):
        refuse(p, "not accepted by bank_a: timeout" if story == "ambiguous_then_events"
               else "rejected by the source bank", accepted=False,
               ambiguous=story == "ambiguous_then_events")
        p.transaction_id = uuid.uuid4()  # events seen after all
        return walk(p, steps[-3:], Status.SUCCESS)
    if story == "stuck_then_success":
        check_deadline(p, p.intended_mono + 500, 10, 30)
        return succeed(p)
    return walk(p, steps[:int(story[-1])])


story_payments = st.lists(st.tuples(
    st.sampled_from(STORIES), st.sampled_from(list(Channel)),
    st.sampled_from([(A1, B1), (A2, B2), (B1, A1), (B2, A2), (A1, B2), (B1, A2)]),
    st.integers(1, 100_000), st.integers(0, 20)), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stories=story_payments, max_payments=st.integers(1, 30))
def test_any_prune_leaves_the_books_model_unchanged(
    stories: list[tuple[str, Channel, tuple[tuple[str, str], tuple[str, str]], int, int]],
    max_payments: int,
) -> None:
    book = Ledger("sqlite://", flush_interval=0.01)
    assert book.open()
    book.start()
    try:
        for account in ACCOUNTS:
            book.write("deposit", deposit_row(account, "500.00"))
        rows = [tell(story, payment(src, dst, str(D(cents) / 100), channel,
                                    OLD + timedelta(days=days)))
                for story, channel, (src, dst), cents, days in stories]
        store(book, rows, NOW - timedelta(days=1))
        before = books_model(book)
        deleted = book.prune(timedelta(days=20), max_payments, NOW)
        after = books_model(book)
        assert balances(after) == balances(before)
        assert after.total == before.total
        left = {r.payment_id: r for r in book.query(PaymentQuery(limit=100))}
        assert len(left) == len(rows) - deleted
        assert all(p.finished for p in rows if p.payment_id not in left)
        assert {p.payment_id for p in rows if not p.finished} <= set(left)
        target(float(deleted))  # steer towards examples that prune much
    finally:
        book.stop(1)
        book.close()


# --- opening balances of adopted accounts (the embedded emulator) ----------------------------
@pytest.fixture(scope="module")
def bgmock() -> Iterator[Bank]:
    with memory_bgmock(0.05, pool_size=8) as world:
        yield world


def provisioner(bank: Bank, prefix: str, ledger: Ledger | None, **options: float) -> Provisioner:
    """A twin's provisioner; without a ledger it stands for an earlier life whose
    ledger was lost."""
    if ledger is None:
        return Provisioner(bank.clients, prefix, 2, D("1000.00"))

    def record(clearing: str, account: str, amount: Decimal, reason: str) -> None:
        ledger.write("deposit", new_deposit_row("test", clearing, account, amount, reason))

    return Provisioner(bank.clients, prefix, 2, D("1000.00"), record_deposit=record,
                       has_history=ledger.has_history, **options)


def pay(bank: Bank, p: Provisioner, source: str, n: int, payee: int, amount: str) -> uuid.UUID:
    """A payment the twin made in an earlier life (no ledger has it)."""
    destination = "02" if source == "01" else "01"
    return bank.clients.bank(source).submit_payment(
        p.account_name(source, n), p.bankgood_name(destination, payee), D(amount))


def settled(bank: Bank, source: str, transaction_id: uuid.UUID) -> bool:
    stored = bank.clients.bank(source).get_outgoing(transaction_id)
    return stored is not None and stored.status is not Status.PENDING


def twin_accounts(fixtures: Fixtures) -> set[AccountKey]:
    """The accounts the books check (as ``Books`` lists them)."""
    accounts = {AccountKey(bank_of(c), n) for c, ns in fixtures.payers.items() for n in ns}
    return accounts | {AccountKey(bank_of(c), n) for c, n in fixtures.low_accounts.items()}


def books_check(bank: Bank, ledger: Ledger, fixtures: Fixtures) -> tuple[CheckStatus,
                                                                         CheckStatus]:
    """balance_drift and conservation as a reconciliation over REST sees them."""
    accounts = twin_accounts(fixtures)
    rest = read_rest_accounts(bank.clients, accounts, READ_ORDER, timeout=5)
    assert rest.banks_read == list(READ_ORDER), rest.errors
    reader = LedgerReader(ledger.engine, payments, deposits, flush=ledger.flush)
    snapshot = reader.snapshot(datetime.now(UTC) + timedelta(seconds=5))  # all confirmed
    model = expect(accounts | snapshot.accounts, snapshot.deposits, snapshot.payments,
                   READ_ORDER)
    return (c.balance_drift(model, rest.readings, rest.banks_read).status,
            c.conservation(model, rest.readings).status)


def reasons(ledger: Ledger) -> dict[tuple[str, str], list[tuple[str, Decimal]]]:
    assert ledger.flush(5)
    result: dict[tuple[str, str], list[tuple[str, Decimal]]] = {}
    for row in ledger.load_deposits():
        result.setdefault((row["clearing_number"], row["account_number"]), []).append(
            (row["reason"], row["amount"]))
    return {k: sorted(v) for k, v in result.items()}


def test_a_fresh_ledger_opens_adopted_accounts_once_their_old_payments_settled(
    bgmock: Bank, ledger: Ledger,
) -> None:
    prefix = "OP" + uuid.uuid4().hex[:6].upper()
    earlier = provisioner(bgmock, prefix, None)
    assert earlier.provision().complete()
    # the earlier life's payments, settled...
    done = [("01", pay(bgmock, earlier, "01", 1, 1, "600.00")),
            ("02", pay(bgmock, earlier, "02", 2, 2, "40.00"))]
    wait_for(lambda: all(settled(bgmock, s, tx) for s, tx in done), timeout=10)
    # ... and one still in flight when the twin comes back with a fresh ledger
    bgmock.emulator.faults.pause_consumers("clearing")
    try:
        in_flight = pay(bgmock, earlier, "02", 1, 1, "70.00")
        account = bgmock.clients.bank_b.get_account(f"{prefix}-B-001")
        assert account is not None and account.reserved_balance == D("70.00")
        twin = provisioner(bgmock, prefix, ledger, quiet_wait_seconds=0.3,
                           stuck_after_seconds=60)
        held = twin.provision()
        assert not held.complete() and held.payers == {"01": [], "02": []}
        assert held.awaiting_opening == {"01": [f"{prefix}-A-001", f"{prefix}-A-002",
                                                f"{prefix}-A-LOW"],
                                         "02": [f"{prefix}-B-001", f"{prefix}-B-002",
                                                f"{prefix}-B-LOW"]}
        assert reasons(ledger) == {}  # nothing recorded, nothing topped up
    finally:
        bgmock.emulator.faults.resume_consumers("clearing")
    # the next pass waits until that payment settled, then opens at the real balances
    fixtures = twin.provision()
    assert settled(bgmock, "02", in_flight) and fixtures.complete()
    assert fixtures.awaiting_opening == {}
    a1, a2 = ("01", f"{prefix}-A-001"), ("01", f"{prefix}-A-002")
    b1, b2 = ("02", f"{prefix}-B-001"), ("02", f"{prefix}-B-002")
    assert reasons(ledger) == {
        a1: [("opening", D("470.00")), ("top_up", D("530.00"))],  # 1000 - 600 + 70
        a2: [("opening", D("1040.00"))],
        b1: [("opening", D("1530.00"))],  # 1000 + 600 - 70
        b2: [("opening", D("960.00"))],
    }  # the empty LOW accounts need no opening
    assert books_check(bgmock, ledger, fixtures) == (CheckStatus.OK, CheckStatus.OK)

    # the books start from the opening, not blind: a transfer behind the twin's back
    # (in no ledger) is drift on both accounts, though it conserves the total
    tx = pay(bgmock, twin, "01", 2, 1, "15.00")
    wait_for(lambda: settled(bgmock, "01", tx), timeout=10)
    assert books_check(bgmock, ledger, fixtures) == (CheckStatus.VIOLATED, CheckStatus.OK)

    # restarted with this ledger: everything is known, nothing is recorded again
    before = reasons(ledger)
    again = provisioner(bgmock, prefix, ledger).provision()
    assert again.complete() and reasons(ledger) == before


def test_a_reservation_that_outlasts_the_sla_is_taken_as_stuck(
    bgmock: Bank, ledger: Ledger,
) -> None:
    """BGMock never times a payment out: a reservation still there after the SLA stays
    where it is, and the account is opened at its balance rather than held forever."""
    prefix = "OS" + uuid.uuid4().hex[:6].upper()
    earlier = provisioner(bgmock, prefix, None)
    assert earlier.provision().complete()
    bgmock.emulator.faults.pause_consumers("clearing")
    try:
        pay(bgmock, earlier, "01", 2, 2, "25.00")
        twin = provisioner(bgmock, prefix, ledger, quiet_wait_seconds=0.2,
                           stuck_after_seconds=0.3)
        assert not twin.provision().complete()
        time.sleep(0.3)
        fixtures = twin.provision()
        assert fixtures.complete()
        opening = reasons(ledger)[("01", f"{prefix}-A-002")]
        assert opening == [("opening", D("1000.00"))]  # the balance, 25.00 still reserved
        assert books_check(bgmock, ledger, fixtures) == (CheckStatus.OK, CheckStatus.OK)
    finally:
        bgmock.emulator.faults.resume_consumers("clearing")


def test_a_restarted_twin_with_a_fresh_ledger_reconciles_clean_also_after_pruning(
    bgmock: Bank, tmp_path: Path,
) -> None:
    """The whole daemon's tracking: a twin pays and dies with its ledger; the next
    one, on a fresh SQLite file, adopts the accounts, pays, prunes everything it may,
    and a reconciliation over REST finds nothing wrong before and after."""
    prefix = "RS" + uuid.uuid4().hex[:6].upper()
    started: list[tuple[Tracking, JobScheduler]] = []

    def start(life: int) -> Tracking:
        scheduler = JobScheduler()
        scheduler.start()
        tracking = Tracking(load_settings(
            instance_id=f"{prefix.lower()}-{life}", account_prefix=prefix,
            twin_database_url=f"sqlite:///{tmp_path / f'life{life}.db'}",
            accounts_per_bank=2, account_initial_deposit="1000.00",
            kafka_group_id="twin-retention", load_rate_per_second=0,
            step_deadline_seconds=5, payment_sla_seconds=120, rest_timeout_seconds=5,
        ).tracking, bgmock.clients, bgmock.bus)
        started.append((tracking, scheduler))
        tracking.start()
        scheduler.add(tracking.jobs())
        return await_tracking(tracking, timeout=15)

    def pay_and_settle(tracking: Tracking, kinds: list[tuple[Channel, Kind]]) -> None:
        done = sum(tracking.tracker.counted.values())
        for channel, kind in kinds:
            tracking.submit_one(channel=channel, kind=kind)
        wait_for(lambda: sum(tracking.tracker.counted.values()) == done + len(kinds),
                 timeout=20, message="payments finished")

    def reconcile(tracking: Tracking) -> dict[str, CheckStatus]:
        fixtures = tracking.provisioner.fixtures
        assert fixtures is not None
        ledger = tracking.ledger
        report = Reconciler(
            ReconcileConfig(budget_seconds=10, rest_timeout_seconds=5,
                            statement_timeout_ms=1000, sla_seconds=120,
                            outbox_max_pending=100, outbox_max_age_seconds=30),
            ledger=LedgerReader(ledger.engine, payments, deposits, flush=ledger.flush),
            clients=bgmock.clients, engines={}, twin_accounts=lambda: twin_accounts(fixtures),
        ).run()
        return {name: report.results[name].status for name in (c.BALANCE_DRIFT,
                                                                c.CONSERVATION)}

    mix = [(Channel.REST, Kind.NORMAL)] * 3 + [(Channel.KAFKA, Kind.NORMAL),
                                               (Channel.REST, Kind.UNKNOWN_BANKGOOD)]
    clean = {c.BALANCE_DRIFT: CheckStatus.OK, c.CONSERVATION: CheckStatus.OK}
    try:
        first = start(1)
        pay_and_settle(first, mix)
        first.stop(5)
        second = start(2)  # a fresh ledger: the earlier deposits and payments are gone
        assert second.ledger.flush(5)
        assert {r["reason"] for r in second.ledger.load_deposits()} == {"opening"}
        pay_and_settle(second, mix)
        assert reconcile(second) == clean
        # everything is settled and old enough (quiet margin and age both zero here)
        deleted = second.ledger.prune(timedelta(0), 1_000_000, datetime.now(UTC),
                                      quiet=timedelta(0))
        assert deleted == len(mix) and second.ledger.query(PaymentQuery()) == []
        assert {r["reason"] for r in second.ledger.load_deposits()} == {"opening",
                                                                        CARRY_FORWARD}
        assert reconcile(second) == clean
    finally:
        for tracking, scheduler in started:
            stop_tracking(tracking, scheduler)
