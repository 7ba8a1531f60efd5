"""The sender: payments leave on their schedule, not when the previous one returns.

One pacing thread holds every active run (simulations and the background canary)
in a queue ordered by intended send time. At each intended time it builds the
payment and hands it to a bounded pool of workers; if every worker is busy the
payment is *dropped and counted* (``bgmock_payments_dropped_total``), never queued
without limit. Latency is measured from the intended time, and the gap between
intended and actual send is exported (``bgmock_payment_send_lag_seconds``), so a
slow system neither slows the load down nor hides its own slowness (no
coordinated omission, k6 arrival-rate style).

Channels: ``rest`` posts to the source bank (then looks the transaction up once,
which is how a rejection is seen); a REST payment gets an amount whose (payer,
bankgood, amount) triple no other payment in flight holds (``rematch.InFlightKeys``),
so one whose 202 never comes back (a read timeout, or a kill) can be found at the
bank again without ambiguity (``rematch.Rematcher``); ``kafka`` writes an OutgoingTransactionEvent
with a fresh id straight to ``transactions.initiated`` (key = source clearing
number), which bypasses the source bank.
"""

from __future__ import annotations

import heapq
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol

from bgmock_twin import metrics
from bgmock_twin.bus.base import BusError, EventBus, EventProducer
from bgmock_twin.clients.bgmock import BGMockClients
from bgmock_twin.clients.rest import ServiceError
from bgmock_twin.contract import TOPIC_INITIATED, OutgoingTransactionEvent, Status, encode_event
from bgmock_twin.logs import get_logger
from bgmock_twin.tracking import mix
from bgmock_twin.tracking.lifecycle import Channel, Payment
from bgmock_twin.tracking.load import FixturesUnavailable, Run, build_payment
from bgmock_twin.tracking.poller import (
    ACCEPT_CHECK_DELAY,
    Purpose,
    Result,
    StatusChecker,
    StatusPoller,
)
from bgmock_twin.tracking.provisioning import Provisioner
from bgmock_twin.tracking.refusals import refusal_of
from bgmock_twin.tracking.rematch import InFlightKeys, Rematcher
from bgmock_twin.tracking.testhooks import PauseHook
from bgmock_twin.tracking.tracker import Tracker
from bgmock_twin.workers import Worker

log = get_logger(__name__)

PRODUCE_TIMEOUT_SECONDS = 5.0
# How long a send waits for the ledger to store the payment's row before it goes on
# regardless (an unavailable ledger is not waited for at all: the load goes on and the
# rows are buffered). Long enough for a slow flush on a loaded machine: a payment that
# leaves before its row is stored and is then killed would be at the bank and nowhere
# in the ledger, the one loss nothing can repair (0.5 s was not enough at load 16).
# Bounded well below what fills the sender's slots at the rates tests and canaries
# use (64 slots at 20/s hold 3.2 s each): 5 s made a reader flood on a PostgreSQL
# ledger drop payments. Writing planned rows ahead of their due time (issue 12)
# removes the wait altogether.
LEDGER_WAIT_SECONDS = 2.0


class LedgerPort(Protocol):
    """What the sender needs of the ledger: to wait, before a request goes out,
    until the payment's row is stored."""

    @property
    def available(self) -> bool: ...

    def flush(self, timeout: float) -> bool: ...


class Sender(Worker):
    """The pacer thread (a ``Worker``) and the bounded pool of sending workers."""

    def __init__(
        self,
        tracker: Tracker,
        clients: BGMockClients,
        bus: EventBus | None,
        provisioner: Provisioner,
        checker: StatusChecker,
        poller: StatusPoller,
        max_in_flight: int,
        instance_id: str,
        ledger: LedgerPort,
        rematcher: Rematcher,
        pause: PauseHook | None = None,
    ) -> None:
        self.tracker = tracker
        self.rematcher = rematcher
        self.keys = InFlightKeys(tracker.unfinished)
        self.pause = pause or PauseHook(None)
        self.ledger = ledger
        self.clients = clients
        self.bus = bus
        self.provisioner = provisioner
        self.checker = checker
        self.poller = poller
        self.max_in_flight = max_in_flight
        self.instance_id = instance_id
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="sender")
        self._busy = 0
        self._busy_cond = threading.Condition()
        self._heap: list[tuple[float, int, Run]] = []
        self._counter = 0
        self._cond = threading.Condition()
        super().__init__("pacer", error_event="dispatch_failed")  # pacing never backs off
        self._producer: EventProducer | None = None
        self._producer_lock = threading.Lock()
        self.dropped = 0

    # --- runs -------------------------------------------------------------------------------
    def add_run(self, run: Run, start_mono: float | None = None,
                start_utc: datetime | None = None) -> None:
        run.start_mono = time.monotonic() if start_mono is None else start_mono
        run.start_utc = self.tracker.clock.now() if start_utc is None else start_utc
        self._push_next(run)

    def _push_next(self, run: Run) -> None:
        if run.stopped:
            run.finish()
            return
        offset = next(run.offsets, None)
        if offset is None:
            run.finish()
            return
        with self._cond:
            self._counter += 1
            heapq.heappush(self._heap, (run.start_mono + offset, self._counter, run))
            self._cond.notify()

    def stop_run(self, run: Run) -> None:
        run.stopped = True
        with self._cond:
            self._cond.notify()

    # --- the pacer thread ------------------------------------------------------------------
    def step(self) -> None:
        """Wait for the next payment due and dispatch it (an error is logged by the
        worker as ``dispatch_failed``; the run still goes on to its next payment)."""
        item = self._next_due()
        if item is None:
            return
        due, run = item
        try:
            self._dispatch(run, due)
        finally:
            self._push_next(run)

    def _next_due(self) -> tuple[float, Run] | None:
        with self._cond:
            while not self.stopping:
                if not self._heap:
                    self._cond.wait(0.5)
                    continue
                due, _, run = self._heap[0]
                if run.stopped:
                    heapq.heappop(self._heap)
                    run.finish()
                    continue
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(min(wait, 0.5))
                    continue
                heapq.heappop(self._heap)
                return due, run
        return None

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def on_stop(self) -> None:
        with self._cond:
            stranded = [run for _, _, run in self._heap]
            self._heap = []
        for run in stranded:
            run.stopped = True
            run.finish()

    def _dispatch(self, run: Run, due: float) -> None:
        index = run.take_index()
        if not self._acquire():
            self._drop(run, "concurrency bound reached")
            return
        try:
            payment = self._plan(run, index, due)
        except FixturesUnavailable as exc:
            self._release()
            self._drop(run, str(exc))
            return
        run.dispatched += 1
        run.note_sent()
        self._pool.submit(self._work, payment, run, due, _amounts(run.profile.amount_min,
                                                                 run.profile.amount_max,
                                                                 payment.amount))

    def _drop(self, run: Run, reason: str) -> None:
        self.dropped += 1
        metrics.PAYMENTS_DROPPED.inc()
        run.note_drop(reason)  # one log line per burst, with its count

    def _plan(self, run: Run, index: int, due: float) -> Payment:
        fixtures = self.provisioner.fixtures
        if fixtures is None:
            raise FixturesUnavailable("twin accounts not provisioned")
        profile = run.profile
        route, kind = mix.plan(index, profile.direction, profile.failure_share, profile.kinds)
        amount = mix.random_amount(run.rng, profile.amount_min, profile.amount_max)
        assert run.start_utc is not None
        intended_at = run.start_utc + timedelta(seconds=due - run.start_mono)
        return build_payment(fixtures, route, kind, profile.channel, amount, run.rng,
                             intended_at, due, run.simulation_id, self.instance_id)

    def _work(self, payment: Payment, run: Run | None, due: float,
              amounts: tuple[Decimal, Decimal]) -> None:
        try:
            lag = max(0.0, time.monotonic() - due)
            metrics.SEND_LAG.observe(lag)
            if run is not None:
                run.record_lag(lag)
            self.send(payment, amounts=amounts)
        except Exception as exc:  # one payment never takes a worker down
            log.error("send_failed", error=repr(exc), payment_id=payment.payment_id)
        finally:
            if run is not None:
                run.mark_sent()
            self._release()

    # --- slots ------------------------------------------------------------------------------
    def _acquire(self) -> bool:
        with self._busy_cond:
            if self._busy >= self.max_in_flight:
                return False
            self._busy += 1
            return True

    def _release(self) -> None:
        with self._busy_cond:
            self._busy -= 1
            self._busy_cond.notify_all()

    @property
    def busy(self) -> int:
        with self._busy_cond:
            return self._busy

    # --- sending ----------------------------------------------------------------------------
    def send(self, payment: Payment, check_now: bool = False,
             amounts: tuple[Decimal, Decimal] | None = None) -> None:
        """Send one payment now on its channel and follow it (blocking). With
        ``check_now`` a REST payment's status is read back at once, so a rejection
        is known before this returns. ``amounts``: the range a REST payment's amount
        may be nudged within to keep its triple unique (None: the amount is fixed)."""
        if payment.channel is Channel.KAFKA:
            self._send_kafka(payment)
        else:
            low, high = amounts or (payment.amount, payment.amount)
            self.keys.claim(payment, low, high, self.tracker.register)
            self._send_rest(payment, check_now)

    def _stored(self) -> None:
        """Wait until the ledger holds every row written so far (bounded, and only
        while it is available). A twin killed during the call that follows then
        still knows the payment and its transaction id after its restart; without
        this, up to one flush interval of payments - already in BGMock - were
        unknown to the restarted twin, and a resumed simulation sent them again."""
        if self.ledger.available:
            self.ledger.flush(LEDGER_WAIT_SECONDS)

    def _send_rest(self, payment: Payment, check_now: bool) -> None:
        """POST a registered REST payment (``send`` registered it)."""
        self._stored()
        self.pause.reached("before_post", payment.payment_id)
        bank = self.clients.bank(payment.from_clearing)
        self.tracker.begin_submit()
        try:
            try:
                transaction_id = bank.submit_payment(
                    payment.from_account, payment.to_bankgood, payment.amount)
            except ServiceError as exc:
                if exc.maybe_processed:
                    # the bank got the request but its answer never came (a read
                    # timeout): it may well have stored and reserved the payment, so
                    # it is not "rejected". It is looked for at the bank by its
                    # unique triple (its initiated event, the bank's table).
                    log.warning("payment_unconfirmed", payment_id=payment.payment_id,
                                service=exc.service, reason=exc.reason)
                    self.rematcher.add(payment)
                    return
                refused = refusal_of(exc)
                self.tracker.reject(payment.payment_id, refused.message, refused.ambiguous)
                return
            self.pause.reached("after_post", payment.payment_id)
            self.tracker.accepted(payment.payment_id, transaction_id)
        finally:
            self.tracker.end_submit()
        self.pause.reached("after_accept", payment.payment_id)
        self._stored()
        if not check_now or \
                self.checker.check(payment.payment_id, Purpose.ACCEPT_NOW) is Result.RETRY:
            self.poller.schedule(payment.payment_id, Purpose.ACCEPT, ACCEPT_CHECK_DELAY)

    def _send_kafka(self, payment: Payment) -> None:
        self.tracker.register(payment)
        self._stored()
        self.pause.reached("before_produce", payment.payment_id)
        self._produce(payment)

    def resend_kafka(self, payments: list[Payment]) -> None:
        """Produce again, in the background, the events of Kafka payments a killed
        twin had registered but maybe never produced (none of their steps seen). The
        same transaction id: the clearing skips an id it has handled, so a payment
        that did go out is not paid twice, and one that did not goes out now."""
        for payment in payments:
            log.info("kafka_payment_resent", payment_id=payment.payment_id,
                     transaction_id=str(payment.transaction_id))
            self._pool.submit(self._produce, payment, True)

    def _produce(self, payment: Payment, again: bool = False) -> None:
        assert payment.transaction_id is not None
        value, headers = encode_event(OutgoingTransactionEvent(
            transaction_id=payment.transaction_id,
            from_clearing_number=payment.from_clearing,
            from_account_number=payment.from_account,
            to_bankgood_number=payment.to_bankgood,
            amount=payment.amount,
            status=Status.PENDING,
        ))
        try:
            producer = self._get_producer()
            producer.produce(TOPIC_INITIATED, payment.from_clearing, value, headers)
        except BusError as exc:  # not even queued: it can never reach the clearing
            metrics.KAFKA_CLIENT_ERRORS.labels("sender", "produce").inc()
            if again:  # the first attempt may have gone out: no refusal is certain
                log.warning("kafka_payment_resend_failed", payment_id=payment.payment_id,
                            error=str(exc)[:200])
                return
            refused = refusal_of(exc)
            self.tracker.reject(payment.payment_id, refused.message, refused.ambiguous)
            return
        try:
            producer.flush(PRODUCE_TIMEOUT_SECONDS)
        except BusError as exc:
            # queued but not confirmed in time: the producer keeps trying, so it may
            # still arrive (a broker back within the message timeout). Not rejected:
            # it stays in flight, and its events or its step deadline tell.
            metrics.KAFKA_CLIENT_ERRORS.labels("sender", "unconfirmed").inc()
            log.warning("kafka_payment_unconfirmed", payment_id=payment.payment_id,
                        error=str(exc)[:200])

    def _get_producer(self) -> EventProducer:
        with self._producer_lock:
            if self._producer is None:
                if self.bus is None:  # no Kafka: tracking refuses the channel before this
                    raise BusError("no Kafka configured (KAFKA_BOOTSTRAP_SERVERS unset)")
                self._producer = self.bus.producer()
            return self._producer

    def submit_now(self, payment: Payment,
                   amounts: tuple[Decimal, Decimal] | None = None) -> bool:
        """Send one payment built by the caller on a worker slot (blocking); False if
        every slot is busy. ``amounts`` as for ``send``."""
        if not self._acquire():
            self._drop_single()
            return False
        try:
            metrics.SEND_LAG.observe(max(0.0, time.monotonic() - payment.intended_mono))
            self.send(payment, check_now=True, amounts=amounts)
        finally:
            self._release()
        return True

    def _drop_single(self) -> None:
        self.dropped += 1
        metrics.PAYMENTS_DROPPED.inc()

    # --- shutdown ---------------------------------------------------------------------------
    def stop(self, timeout: float | None = None) -> None:
        """Stop pacing, let submissions in progress finish within ``timeout``."""
        deadline = time.monotonic() + (self.join_timeout if timeout is None else timeout)
        super().stop(max(0.1, deadline - time.monotonic()))
        with self._busy_cond:
            while self._busy > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("sender_stopped_with_busy_workers", busy=self._busy)
                    break
                self._busy_cond.wait(min(remaining, 0.1))
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._producer_lock:
            if self._producer is not None:
                try:
                    self._producer.flush(max(0.1, deadline - time.monotonic()))
                    self._producer.close()
                except BusError as exc:
                    log.warning("producer_close_failed", error=str(exc)[:200])
                self._producer = None


def _amounts(low: Decimal, high: Decimal, amount: Decimal) -> tuple[Decimal, Decimal]:
    """The range a planned payment's amount may move in: the profile's, or upwards
    only for an amount above it (an insufficient-funds payment stays insufficient)."""
    if amount > high:
        return amount, amount + (high - low)
    return low, high
