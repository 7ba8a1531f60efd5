"""The live set of synthetic payments: one lock around the lifecycle rules, and the
only place that turns their changes into metrics and ledger rows.

The sender registers payments, the Kafka follower feeds events, the status checker
feeds what the source bank says, and a scheduled job checks deadlines; all go
through ``Tracker`` so each payment has exactly one story.

Events can overtake the source bank's 202: the outbox may publish
``transactions.initiated`` before the sender thread has recorded the id it got
back. An event with an unknown id is therefore *parked* while any REST submission
is still between "sent" and "id recorded"; when that id is recorded the parked
events are applied with their original observation time, and parked events whose
id never shows up are classified ``foreign`` after ``park_seconds`` (or as soon as
no submission is pending). Foreign events are counted, never tracked.
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from bgmock_twin import metrics
from bgmock_twin.bus.base import Record
from bgmock_twin.contract import (
    TOPIC_INITIATED,
    Event,
    OutgoingTransactionEvent,
    Status,
    TransactionResponseEvent,
)
from bgmock_twin.logs import get_logger
from bgmock_twin.tracking.clock import Clock, SystemClock
from bgmock_twin.tracking.event_log import Entry, EventLog, invalid_entry, public_entry
from bgmock_twin.tracking.ledger import Ledger, payment_from_row
from bgmock_twin.tracking.lifecycle import (
    STEP_NAME,
    TOPIC_STEP,
    Change,
    Channel,
    ClearingMark,
    Kind,
    Outcome,
    Payment,
    Route,
    Step,
    check_deadline,
    observe_step,
    only_furthest_step,
    reject,
    row_summary,
)
from bgmock_twin.tracking.parking import ParkedEvent, ParkedEvents
from bgmock_twin.tracking.tally import Tally

log = get_logger(__name__)

STUCK_POLL_SECONDS = 5.0
_STATUS_NAME: dict[Status, str] = {status: status.value for status in Status}
MAX_STUCK_POLLS_PER_CHECK = 200
DEADLINE_CHUNK = 256  # payments checked per hold of the tracker's lock


@dataclass(frozen=True, slots=True)
class PaymentCounts:
    """The tracker's figures at one moment (the payments part of the twin's status)."""

    in_flight: int
    stuck: dict[str, int]  # step waited for -> payments
    submitted: int
    outcomes: dict[str, int]  # counted outcome -> payments
    parked_events: int  # events that came before their payment's transaction id


class StepReached(NamedTuple):
    """A followed payment reached a new step: what the tracker tells its subscribers
    (the status poller reads the settled status of a REST payment once it completed).
    A named tuple: one is made for every step followed, and it is the cheapest to make."""

    payment_id: str
    channel: Channel
    step: Step
    finished: bool  # the payment had an outcome once this step was recorded


StepListener = Callable[[StepReached], None]


@dataclass(frozen=True, slots=True)
class PollView:
    transaction_id: uuid.UUID | None
    from_clearing: str
    channel: Channel
    finished: bool
    initiated_seen: bool
    completed_seen: bool
    age: float  # seconds since the intended send time (monotonic)
    stuck: bool  # past its step deadline


class Tracker:
    def __init__(
        self,
        ledger: Ledger,
        *,
        step_deadline: float,
        sla: float,
        clock: Clock | None = None,
        recent_limit: int = 10_000,
        park_seconds: float = 7.0,
        park_limit: int = 10_000,
        follow_horizon_seconds: float = 3600.0,
        events_limit: int = 1000,
        hidden_rest_steps: frozenset[Step] = frozenset(),
    ) -> None:
        self.ledger = ledger
        self.step_deadline = step_deadline
        self.sla = sla
        self.clock = clock or SystemClock()
        self.recent_limit = recent_limit
        self.park_seconds = park_seconds
        self.park_limit = park_limit
        self.follow_horizon = max(follow_horizon_seconds, sla * 2)
        # steps of a REST payment this twin cannot see (no Kafka): see ``rest_follower``
        self.hidden_rest_steps = hidden_rest_steps
        self._hidden_sets: dict[frozenset[Step], frozenset[Step]] = {}
        self._lock = threading.RLock()
        self._live: dict[str, Payment] = {}
        self._recent: OrderedDict[str, Payment] = OrderedDict()
        self._by_tx: dict[uuid.UUID, str] = {}
        self._parked = ParkedEvents(park_limit)
        self._submitting = 0
        self._sim_uncounted: Counter[str] = Counter()
        self._last_poll: dict[str, float] = {}
        self._events = EventLog(events_limit)
        self._subscribers: list[StepListener] = []
        # metrics counted here and added once per batch of events (``on_events``)
        self._tally = Tally()
        self._batching = 0
        # while a poll's events are applied: the (monotonic, UTC) time they were seen
        self._batch_now: tuple[float, datetime] | None = None
        # asked for the payment of an initiated event nobody claims (``tracking.rematch``)
        self.matcher: Callable[[OutgoingTransactionEvent], str | None] | None = None
        self.submitted: Counter[tuple[Channel, Route]] = Counter()
        self.counted: Counter[tuple[Channel, Route, Outcome]] = Counter()

    def subscribe(self, listener: StepListener) -> None:
        """``listener(StepReached)`` is called for every new step of every payment,
        on the thread that observed it and under the tracker's lock: it must be quick
        and must not call back into the tracker (queue the work instead)."""
        self._subscribers.append(listener)

    # --- registration (the sender) --------------------------------------------------------

    def register(self, payment: Payment) -> None:
        """A payment is about to leave: from now on it is submitted and followed."""
        with self._lock:
            self._hide_unseen(payment)
            self._live[payment.payment_id] = payment
            if payment.transaction_id is not None:
                self._by_tx[payment.transaction_id] = payment.payment_id
            if payment.simulation_id:
                self._sim_uncounted[payment.simulation_id] += 1
            self.submitted[(payment.channel, payment.route)] += 1
            metrics.PAYMENTS_SUBMITTED.labels(payment.channel.value, payment.route.value).inc()
            metrics.PAYMENTS_IN_FLIGHT.set(len(self._live))
            self.ledger.write_payment(payment, self.clock.now())

    def begin_submit(self) -> None:
        with self._lock:
            self._submitting += 1

    def end_submit(self) -> None:
        with self._lock:
            self._submitting -= 1
            if self._submitting == 0 and self._parked:
                self._expire_parked(force=True)

    def accepted(self, payment_id: str, transaction_id: uuid.UUID,
                 matched_by: str | None = None) -> None:
        """The source bank answered 202 with this id (or, ``matched_by``, the id was
        found without it: ``tracking.rematch``)."""
        with self._lock:
            payment = self._find(payment_id)
            if payment is None or payment.transaction_id not in (None, transaction_id):
                return
            payment.transaction_id = transaction_id
            payment.matched_by = matched_by if matched_by else payment.matched_by
            self._by_tx[transaction_id] = payment_id
            self._observe(payment, Step.ACCEPTED, self.clock.monotonic(), self.clock.now(),
                          changed=True)
            for parked in self._parked.claim(transaction_id):
                parked.entry.origin = "twin"
                self._count_message(parked.topic, parked.event, "twin")
                self._apply_event(payment, parked.topic, parked.event, parked.mono, parked.utc)

    def reject(self, payment_id: str, reason: str, ambiguous: bool = False) -> None:
        """The source refused the payment; ``ambiguous`` when it may have arrived
        after all (``tracking.refusals``)."""
        with self._lock:
            payment = self._find(payment_id)
            if payment is not None:
                self._apply(payment, reject(payment, reason, self.clock.now(), ambiguous))

    def clearing_seen(self, payment_id: str, status: Status | None) -> None:
        """The clearing's answer about a payment the source bank still holds PENDING
        (``None``: it has no such transaction); kept on the live payment."""
        with self._lock:
            payment = self._find(payment_id)
            if payment is not None and not payment.finished:
                now = self.clock.monotonic()
                payment.clearing = ClearingMark(
                    status.value if status is not None else "unknown", self.clock.now(),
                    max(0.0, now - payment.intended_mono))

    def settle(self, payment_id: str, bank_status: Status) -> None:
        """The source bank shows the payment with a final status."""
        with self._lock:
            payment = self._find(payment_id)
            if payment is not None:
                self._observe(payment, Step.SETTLED, self.clock.monotonic(), self.clock.now(),
                              bank_status)

    # --- events (the follower) --------------------------------------------------------------
    def on_event(self, record: Record, event: Event) -> None:
        batch = self._batch_now
        now_mono, now_utc = batch if batch is not None else \
            (self.clock.monotonic(), self.clock.now())
        entry = Entry(record, event, now_utc)
        transaction_id = event.transaction_id
        with self._lock:
            self._events.add(entry)
            payment_id = self._by_tx.get(transaction_id) if transaction_id else None
            payment = self._find(payment_id) if payment_id else None
            if payment is None:
                if transaction_id is not None and self._submitting > 0 and \
                        self._parked.park(transaction_id, ParkedEvent(
                            record.topic, event, now_mono, now_utc, entry)):
                    entry.origin = "pending"
                    return
                payment = self._rematch(record.topic, event)
            if payment is None:
                entry.origin = "foreign"
                self._count_message(record.topic, event, "foreign")
                return
            self._count_message(record.topic, event, "twin")
            self._apply_event(payment, record.topic, event, now_mono, now_utc)

    def on_events(self, items: list[tuple[Record, Event | str]]) -> None:
        """The events of one poll, in order (a str: the reason a record was not a
        valid event), under one hold of the lock, their metrics added once."""
        with self._lock:
            if not self._batching:
                # the records of one poll arrived together: one observation time
                self._batch_now = (self.clock.monotonic(), self.clock.now())
            self._batching += 1
            try:
                for record, event in items:
                    if isinstance(event, str):
                        self.record_invalid(record, event)
                    else:
                        self.on_event(record, event)
            finally:
                self._batching -= 1
                if not self._batching:
                    self._batch_now = None
                self._flush_tally()

    def _flush_tally(self) -> None:
        if not self._batching:
            self._tally.flush()

    def expire_parked(self) -> None:
        with self._lock:
            self._expire_parked(force=self._submitting == 0)

    def _expire_parked(self, force: bool) -> None:
        horizon = self.clock.monotonic() - self.park_seconds
        for parked in self._parked.expire(horizon, force):
            known = self._by_tx.get(parked.event.transaction_id) \
                if parked.event.transaction_id else None
            payment = self._find(known) or self._rematch(parked.topic, parked.event)
            origin = "twin" if payment is not None else "foreign"
            parked.entry.origin = origin
            self._count_message(parked.topic, parked.event, origin)
            if payment is not None:
                self._apply_event(payment, parked.topic, parked.event, parked.mono, parked.utc)

    def _rematch(self, topic: str, event: Event) -> Payment | None:
        """The unconfirmed payment an unclaimed initiated event belongs to, adopted
        (its id recorded as found by the event), or None."""
        if self.matcher is None or topic != TOPIC_INITIATED \
                or not isinstance(event, OutgoingTransactionEvent) \
                or event.transaction_id is None:
            return None
        payment = self._find(self.matcher(event))
        if payment is None or payment.transaction_id is not None:
            return None
        self.accepted(payment.payment_id, event.transaction_id, "initiated_event")
        return payment

    def _apply_event(
        self, payment: Payment, topic: str, event: Event, mono: float, utc: datetime
    ) -> None:
        step = TOPIC_STEP[topic]
        status = getattr(event, "status", None)
        message = event.message if isinstance(event, TransactionResponseEvent) else None
        if step is Step.INITIATED or step is Step.FORWARDED:
            status = None  # a PENDING on the way says nothing about the outcome
        self._observe(payment, step, mono, utc, status, message)

    def _count_message(self, topic: str, event: Event, origin: str) -> None:
        status = getattr(event, "status", None)
        self._tally.message(topic, _STATUS_NAME[status] if status else "none", origin)
        if not self._batching:
            self._tally.flush()

    # --- deadlines (a scheduled job) --------------------------------------------------------
    def check_deadlines(self) -> list[str]:
        """Update stuck marks and SLA counts; returns the REST payments whose source
        bank should be asked about them (stuck, not asked for a while)."""
        now_mono = self.clock.monotonic()
        to_poll: list[str] = []
        stuck: Counter[str] = Counter()
        with self._lock:
            live = list(self._live.values())
        # in chunks, the lock released between them: the sender's loop registers and
        # accepts payments under it, and a whole pass over thousands in flight held
        # it (and every due send) for tens of milliseconds
        for start in range(0, len(live), DEADLINE_CHUNK):
            with self._lock:
                self._check_chunk(live[start:start + DEADLINE_CHUNK], now_mono, to_poll, stuck)
        with self._lock:
            for step in Step:
                metrics.PAYMENTS_STUCK.labels(step.value).set(stuck[step.value])
            metrics.PAYMENTS_IN_FLIGHT.set(len(self._live))
        return to_poll

    def _check_chunk(self, payments: list[Payment], now_mono: float, to_poll: list[str],
                     stuck: Counter[str]) -> None:
        for payment in payments:
            if self._live.get(payment.payment_id) is not payment:
                continue  # finished (or forgotten) since the pass began
            change = check_deadline(payment, now_mono, self.step_deadline, self.sla)
            if change.changed:
                self._apply(payment, change)
            if payment.stuck_step is not None:
                stuck[payment.stuck_step.value] += 1
                # ask less often the longer it is stuck, and only so many per run
                age = now_mono - payment.intended_mono
                if payment.channel is Channel.REST and payment.transaction_id is not None \
                        and len(to_poll) < MAX_STUCK_POLLS_PER_CHECK \
                        and now_mono - self._last_poll.get(payment.payment_id, -1e9) \
                        > max(STUCK_POLL_SECONDS, age / 4):
                    to_poll.append(payment.payment_id)
                    self._last_poll[payment.payment_id] = now_mono
            if now_mono - payment.intended_mono > self.follow_horizon:
                self._forget(payment)

    def mark_polled(self, payment_id: str) -> None:
        with self._lock:
            self._last_poll[payment_id] = self.clock.monotonic()

    def _forget(self, payment: Payment) -> None:
        """Stop following a payment unfinished after the follow horizon; it was counted
        stuck long ago and stays in the ledger as it is."""
        log.warning("payment_abandoned", payment_id=payment.payment_id,
                    transaction_id=str(payment.transaction_id), waiting_for=str(payment.awaited))
        self._live.pop(payment.payment_id, None)
        self._last_poll.pop(payment.payment_id, None)
        if payment.transaction_id is not None:
            self._by_tx.pop(payment.transaction_id, None)

    # --- applying changes -------------------------------------------------------------------
    def _observe(
        self, payment: Payment, step: Step, mono: float, utc: datetime,
        status: Status | None = None, message: str | None = None, *, changed: bool = False,
    ) -> None:
        """``changed``: the caller changed columns of the payment's row already."""
        before = row_summary(payment)
        change = observe_step(payment, step, mono, utc, status, message)
        narrow = not changed and only_furthest_step(change, before, payment)
        self._apply(payment, change, narrow, transaction=changed)

    def _apply(self, payment: Payment, change: Change, narrow: bool = False,
               transaction: bool = False) -> None:
        """``transaction``: the payment's transaction id may have changed."""
        if change.repeat or not change.changed:
            return
        if change.new_step is not None and change.step_duration is not None:
            self._tally.step(STEP_NAME[change.new_step], change.step_duration)
            if self._subscribers:
                self._publish(StepReached(payment.payment_id, payment.channel,
                                          change.new_step, payment.finished))
        if change.counted is not None:
            self.counted[(payment.channel, payment.route, change.counted)] += 1
            self._tally.counted(payment.channel, payment.route, payment.kind, change.counted)
            if payment.simulation_id:
                self._sim_uncounted[payment.simulation_id] -= 1
                if self._sim_uncounted[payment.simulation_id] <= 0:
                    del self._sim_uncounted[payment.simulation_id]
        if change.finished is not None:
            if change.total_duration is not None and payment.kind is Kind.NORMAL:
                self._tally.duration(payment.channel, payment.route, change.total_duration)
            self._live.pop(payment.payment_id, None)
            self._last_poll.pop(payment.payment_id, None)
            self._recent[payment.payment_id] = payment
            while len(self._recent) > self.recent_limit:
                _, old = self._recent.popitem(last=False)
                if old.transaction_id is not None:
                    self._by_tx.pop(old.transaction_id, None)
            self._tally.in_flight = len(self._live)
        batch = self._batch_now
        self.ledger.write_change(payment, change.new_step,
                                 batch[1] if batch is not None else self.clock.now(), narrow,
                                 transaction)
        if not self._batching:
            self._tally.flush()

    def _publish(self, event: StepReached) -> None:
        for listener in self._subscribers:
            try:
                listener(event)
            except Exception as exc:  # a subscriber never breaks tracking
                log.warning("step_listener_failed", error=repr(exc))

    # --- restart ----------------------------------------------------------------------------
    def resume(self, rows: list[dict[str, Any]]) -> int:
        """Follow again the payments a previous run left in the ledger (and remember
        recently finished ones so their repeated events are recognised)."""
        now_mono, now_utc = self.clock.monotonic(), self.clock.now()
        added = 0
        with self._lock:
            for row in rows:
                if row["payment_id"] in self._live or row["payment_id"] in self._recent:
                    continue
                payment = payment_from_row(row, now_mono, now_utc)
                self._hide_unseen(payment)
                if payment.finished:
                    self._recent[payment.payment_id] = payment
                else:
                    self._live[payment.payment_id] = payment
                    if payment.simulation_id and payment.counted is None:
                        self._sim_uncounted[payment.simulation_id] += 1
                    added += 1
                if payment.transaction_id is not None:
                    self._by_tx[payment.transaction_id] = payment.payment_id
            metrics.PAYMENTS_IN_FLIGHT.set(len(self._live))
        return added

    def _hide_unseen(self, payment: Payment) -> None:
        """Mark the steps this twin cannot see on a REST payment (none with Kafka);
        a step already seen (in an earlier run with Kafka) stays part of its flow."""
        if payment.channel is Channel.REST and self.hidden_rest_steps:
            hidden = self.hidden_rest_steps.difference(payment.steps)
            # a handful of distinct sets: one of each shared (200 B per payment else)
            payment.hidden = self._hidden_sets.setdefault(hidden, hidden)

    def awaiting_settlement(self) -> list[str]:
        """REST payments in flight whose source bank has given an id: those a REST
        follower must ask about (after a restart, say)."""
        with self._lock:
            return [p.payment_id for p in self._live.values()
                    if p.channel is Channel.REST and p.transaction_id is not None]

    # --- reading ----------------------------------------------------------------------------
    def _find(self, payment_id: str | None) -> Payment | None:
        if payment_id is None:
            return None
        return self._live.get(payment_id) or self._recent.get(payment_id)

    def get(self, identifier: str) -> Payment | None:
        """A copy of a followed payment, by payment id or transaction id."""
        with self._lock:
            payment = self._find(identifier)
            if payment is None:
                try:
                    payment = self._find(self._by_tx.get(uuid.UUID(identifier)))
                except ValueError:
                    payment = None
            return copy.deepcopy(payment) if payment is not None else None

    def poll_view(self, payment_id: str) -> PollView | None:
        """What the status checker needs to know about a payment."""
        with self._lock:
            payment = self._find(payment_id)
            if payment is None:
                return None
            return PollView(
                payment.transaction_id, payment.from_clearing, payment.channel,
                payment.finished, Step.INITIATED in payment.steps,
                Step.COMPLETED in payment.steps,
                self.clock.monotonic() - payment.intended_mono,
                payment.stuck_step is not None,
            )

    def knows_transaction(self, transaction_id: str) -> bool:
        with self._lock:
            try:
                return uuid.UUID(transaction_id) in self._by_tx
            except ValueError:
                return False

    def unfinished(self, payment_id: str) -> bool:
        with self._lock:
            return payment_id in self._live

    def followed_ids(self) -> set[str]:
        """Payments still followed (in flight or recently finished): the only ones
        whose ledger rows may be written again."""
        with self._lock:
            return set(self._live) | set(self._recent)

    def sim_uncounted(self, simulation_id: str) -> int:
        with self._lock:
            return self._sim_uncounted.get(simulation_id, 0)

    def events(self, limit: int, topic: str | None = None,
               origin: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            items = self._events.select(limit, topic, origin)
        return [public_entry(item) for item in items]

    def record_invalid(self, record: Record, reason: str) -> None:
        with self._lock:
            self._events.add(invalid_entry(record, reason, self.clock.now()))

    def counts(self) -> PaymentCounts:
        with self._lock:
            stuck = Counter(p.stuck_step.value for p in self._live.values() if p.stuck_step)
            outcomes: Counter[Outcome] = Counter()
            for (_channel, _route, outcome), n in self.counted.items():
                outcomes[outcome] += n
            return PaymentCounts(
                in_flight=len(self._live),
                stuck=dict(stuck),
                submitted=sum(self.submitted.values()),
                outcomes={o.value: outcomes.get(o, 0) for o in Outcome},
                parked_events=self._parked.count,
            )

    @property
    def recent_horizon(self) -> datetime:
        return self.clock.now() - timedelta(seconds=self.follow_horizon)
