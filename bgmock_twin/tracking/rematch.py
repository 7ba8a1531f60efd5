"""Payments whose 202 never reached the twin, found again at the bank.

A REST payment whose POST reached the source bank but whose answer the twin never
stored (a read timeout, or the twin killed between the POST and the ledger write)
has no transaction id: neither its events nor ``GET /bank/transaction/outgoing/{id}``
can be tied to it, while BGMock moves its money. What the twin does know is the
payer account, the bankgood number, the amount and when it was sent. The sender
makes that triple unique among the payments in flight (``InFlightKeys``: a generated
amount is nudged by a cent while another unfinished payment holds the same triple),
so a match on it is unambiguous by construction.

Two witnesses are searched (``Rematcher``):

- the ``transactions.initiated`` events the tracker cannot place: it asks
  ``match_event`` before it calls such an event foreign;
- the source bank's ``outgoing_transactions`` table when ``DB_BANK_*`` is configured
  (``sweep``, run by the deadline job). It also proves the opposite: a payment left
  unconfirmed by a twin that was killed, which the bank still does not hold
  ``settle_seconds`` after the restart, never reached it; it is rejected as not
  sent (nothing moved) instead of waiting forever.

A match is taken only when exactly one payment waits for the triple and exactly one
transaction the twin does not know carries it; the ledger records how
(``matched_by``, shown in the transaction view).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bgmock_twin import metrics
from bgmock_twin.contract import CENT, OutgoingTransactionEvent
from bgmock_twin.contract.tables import bank_outgoing_transactions
from bgmock_twin.logs import get_logger
from bgmock_twin.tracking.lifecycle import Channel, Payment

log = get_logger(__name__)

MATCHED_BY_EVENT = "initiated_event"
MATCHED_BY_DATABASE = "bank_database"
NOT_SENT = "not sent: the twin stopped before the source bank stored the payment"
# How far a bank's created_at may lie from the intended send time (send lag, clock
# skew): a bank transaction outside it is never taken for the payment.
MATCH_WINDOW = timedelta(seconds=120)
NUDGE_LIMIT = 500  # cents tried either way before a triple is left shared
SWEEP_INTERVAL_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Triple:
    """What the twin knows of a payment without its id (plus the source clearing)."""

    clearing: str
    account: str
    bankgood: str
    amount: Decimal

    @classmethod
    def of(cls, payment: Payment, amount: Decimal | None = None) -> Triple:
        return cls(payment.from_clearing, payment.from_account, payment.to_bankgood,
                   payment.amount if amount is None else amount)


def nudged_amounts(amount: Decimal, low: Decimal, high: Decimal,
                   limit: int = NUDGE_LIMIT) -> Iterator[Decimal]:
    """``amount`` first, then a cent up, a cent down, two up... within [low, high]."""
    yield amount
    for step in range(1, limit + 1):
        for candidate in (amount + step * CENT, amount - step * CENT):
            if low <= candidate <= high:
                yield candidate


class InFlightKeys:
    """Which triple each unfinished REST payment holds. ``live(payment_id)`` says
    whether a holder is still unfinished (the tracker's answer), so finished
    payments free their triple without being told."""

    def __init__(self, live: Callable[[str], bool]) -> None:
        self._live = live
        self._holders: dict[Triple, str] = {}
        self._lock = threading.Lock()
        self._sweep_at = 1024

    def claim(self, payment: Payment, low: Decimal, high: Decimal,
              register: Callable[[Payment], None]) -> bool:
        """Give ``payment`` an amount in [low, high] (its own first) whose triple no
        other payment in flight holds, then ``register`` it, both under one lock (a
        claim never sees a holder that is not registered yet). False when no such
        amount exists (an amount the caller fixed): it is registered sharing."""
        with self._lock:
            unique = False
            for amount in nudged_amounts(payment.amount, low, high):
                holder = self._holders.get(Triple.of(payment, amount))
                if holder is None or holder == payment.payment_id or not self._live(holder):
                    payment.amount = amount
                    unique = True
                    break
            if unique:
                self._holders[Triple.of(payment)] = payment.payment_id
            self._forget_finished()
            register(payment)
            if not unique:
                metrics.PAYMENT_TRIPLES_SHARED.inc()
                log.warning("payment_triple_shared", payment_id=payment.payment_id,
                            reason="no amount in range is free; re-matching it would be "
                                   "ambiguous")
            return unique

    def hold(self, payments: Iterable[Payment]) -> None:
        """The unfinished payments a restarted twin resumed keep their triples."""
        with self._lock:
            for payment in payments:
                if payment.channel is Channel.REST:
                    self._holders.setdefault(Triple.of(payment), payment.payment_id)

    def _forget_finished(self) -> None:
        if len(self._holders) < self._sweep_at:
            return
        self._holders = {t: p for t, p in self._holders.items() if self._live(p)}
        self._sweep_at = max(1024, 2 * len(self._holders))


@dataclass(slots=True)
class Unconfirmed:
    payment_id: str
    triple: Triple
    intended_at: datetime
    since: float  # monotonic: when it became unconfirmed here
    sender_gone: bool  # sent by a process that is dead (resumed after a restart)


class TrackerPort(Protocol):
    """What the matcher needs of the tracker (``Tracker`` has these)."""

    def accepted(self, payment_id: str, transaction_id: uuid.UUID,
                 matched_by: str | None = None) -> None: ...

    def reject(self, payment_id: str, reason: str, ambiguous: bool = False) -> None: ...

    def knows_transaction(self, transaction_id: str) -> bool: ...


class Rematcher:
    def __init__(
        self,
        tracker: TrackerPort,
        databases: Mapping[str, Engine],  # the source banks' engines by clearing number
        known: Callable[[list[str]], set[str]],  # ids some ledger row already holds
        settle_seconds: float,
        on_matched: Callable[[str], None],
    ) -> None:
        self.tracker = tracker
        self.databases = dict(databases)
        self.known = known
        self.settle_seconds = settle_seconds
        self.on_matched = on_matched
        self._lock = threading.Lock()
        self._pending: dict[str, Unconfirmed] = {}
        self._by_triple: dict[Triple, set[str]] = {}
        self._last_sweep = -1e9
        self._failing: set[str] = set()

    # --- what waits ----------------------------------------------------------------------
    def add(self, payment: Payment, sender_gone: bool = False) -> None:
        if payment.channel is not Channel.REST or payment.transaction_id is not None:
            return
        item = Unconfirmed(payment.payment_id, Triple.of(payment), payment.intended_at,
                           time.monotonic(), sender_gone)
        with self._lock:
            if payment.payment_id in self._pending:
                return
            self._pending[payment.payment_id] = item
            self._by_triple.setdefault(item.triple, set()).add(payment.payment_id)
            metrics.PAYMENTS_UNCONFIRMED.set(len(self._pending))

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def _take(self, payment_id: str) -> bool:
        with self._lock:
            item = self._pending.pop(payment_id, None)
            if item is not None:
                holders = self._by_triple[item.triple]
                holders.discard(payment_id)
                if not holders:
                    del self._by_triple[item.triple]
            metrics.PAYMENTS_UNCONFIRMED.set(len(self._pending))
            return item is not None

    # --- witness 1: an initiated event nobody claims ----------------------------------------
    def match_event(self, event: OutgoingTransactionEvent) -> str | None:
        """The one payment waiting for this event's triple (no longer waiting), or
        None. The tracker calls it under its lock: in memory, but for one ledger
        look-up when a payment waits for exactly this triple."""
        if event.amount is None or not event.from_account_number \
                or not event.to_bankgood_number or not event.from_clearing_number:
            return None
        triple = Triple(event.from_clearing_number, event.from_account_number,
                        event.to_bankgood_number, event.amount)
        with self._lock:
            waiting = list(self._by_triple.get(triple, ()))
        if len(waiting) != 1:
            return None
        # an event of a payment the ledger holds (another replica's, sharing the
        # accounts, or an old one of this twin redelivered) is not this one's: asked
        # only on this rare path, so the tracker's lock waits for the ledger seldom
        try:
            if self.known([str(event.transaction_id)]):
                return None
        except Exception as exc:
            log.warning("rematch_ledger_unavailable", error=str(exc)[:200])
            return None
        if not self._take(waiting[0]):
            return None
        metrics.PAYMENTS_REMATCHED.labels(MATCHED_BY_EVENT).inc()
        log.info("payment_rematched", payment_id=waiting[0],
                 transaction_id=str(event.transaction_id), matched_by=MATCHED_BY_EVENT)
        return waiting[0]

    # --- witness 2: the source bank's table -------------------------------------------------
    def sweep(self, force: bool = False) -> None:
        """Look the waiting payments up in the source banks' databases (at most every
        ``SWEEP_INTERVAL_SECONDS`` unless ``force``)."""
        now = time.monotonic()
        if not force and now - self._last_sweep < SWEEP_INTERVAL_SECONDS:
            return
        self._last_sweep = now
        with self._lock:
            waiting = list(self._pending.values())
        for clearing in sorted({u.triple.clearing for u in waiting}):
            engine = self.databases.get(clearing)
            if engine is not None:
                self._sweep_bank(clearing, engine,
                                 [u for u in waiting if u.triple.clearing == clearing], now)

    def _sweep_bank(self, clearing: str, engine: Engine, waiting: list[Unconfirmed],
                    now: float) -> None:
        try:
            rows = _outgoing_rows(engine, waiting)
            known = self.known([tx for tx, _, _ in rows])
        except Exception as exc:
            if clearing not in self._failing:
                log.warning("rematch_lookup_failed", clearing=clearing, error=str(exc)[:200])
            self._failing.add(clearing)
            return
        if clearing in self._failing:
            log.info("rematch_lookup_recovered", clearing=clearing)
            self._failing.discard(clearing)
        unknown = [(tx, triple, at) for tx, triple, at in rows
                   if tx not in known and not self.tracker.knows_transaction(tx)]
        for item in waiting:
            candidates = [tx for tx, triple, at in unknown if triple == item.triple
                          and abs(at - _naive_utc(item.intended_at)) <= MATCH_WINDOW]
            with self._lock:
                alone = len(self._by_triple.get(item.triple, ())) == 1
            if len(candidates) == 1 and alone:
                if self._take(item.payment_id):
                    self._matched(item.payment_id, candidates[0])
            elif not candidates and item.sender_gone \
                    and now - item.since >= self.settle_seconds and self._take(item.payment_id):
                metrics.PAYMENTS_REMATCHED.labels("not_sent").inc()
                log.info("payment_not_sent", payment_id=item.payment_id)
                self.tracker.reject(item.payment_id, NOT_SENT, False)

    def _matched(self, payment_id: str, transaction_id: str) -> None:
        metrics.PAYMENTS_REMATCHED.labels(MATCHED_BY_DATABASE).inc()
        log.info("payment_rematched", payment_id=payment_id, transaction_id=transaction_id,
                 matched_by=MATCHED_BY_DATABASE)
        self.tracker.accepted(payment_id, uuid.UUID(transaction_id), MATCHED_BY_DATABASE)
        self.on_matched(payment_id)


def _naive_utc(at: datetime) -> datetime:
    """BGMock's columns are naive UTC (the JVM's local time in its images)."""
    return at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo is not None else at


def _outgoing_rows(engine: Engine,
                   waiting: list[Unconfirmed]) -> list[tuple[str, Triple, datetime]]:
    """The bank's outgoing transactions of these payers within the send window."""
    o = bank_outgoing_transactions.c
    since = min(_naive_utc(u.intended_at) for u in waiting) - MATCH_WINDOW
    until = max(_naive_utc(u.intended_at) for u in waiting) + MATCH_WINDOW
    accounts = sorted({u.triple.account for u in waiting})
    statement = sa.select(o.transaction_id, o.from_clearing_number, o.from_account_number,
                          o.to_bankgood_number, o.amount, o.created_at).where(
        o.from_account_number.in_(accounts), o.created_at >= since, o.created_at <= until)
    clearing = waiting[0].triple.clearing
    with engine.connect() as conn:
        return [
            (str(row.transaction_id),
             Triple(clearing, row.from_account_number, row.to_bankgood_number,
                    Decimal(str(row.amount))),
             _naive_utc(row.created_at))
            for row in conn.execute(statement)
            if row.amount is not None and row.created_at is not None
        ]
