"""Asking the source bank how a REST payment ended: the ``settled`` step, and the
only way to see a rejection (a 202 whose transaction is stored FAILED with no event).

``StatusChecker.check`` is one look-up with a decision:
- source bank says PENDING: nothing yet;
- source bank says FAILED and the twin saw neither ``initiated`` nor ``completed``:
  ask the clearing; if it never heard of the payment the bank rejected it
  (outcome ``rejected``). If it did, the payment failed on the way and is settled;
- otherwise the bank's final status is the ``settled`` step.

Why each check happens (``Purpose``), cheapest first:
- ``ACCEPT``: a while after the 202 (``ACCEPT_CHECK_DELAY``), only if the payment
  has shown no event yet - a rejected payment never will. Most payments have
  moved on by then and cost no request at all.
- ``SETTLE``: right after ``completed`` was seen; the bank applies it a moment
  later, so PENDING is retried with exponential backoff.
- ``STUCK``: a payment past its step deadline, at most every few seconds (the
  deadline job asks), in case its events were lost. Without Kafka it also asks
  the clearing, whose answer says where the payment is (``ClearingMark``).
- ``FOLLOW``: without Kafka (``rest_follower``), the only way to follow a payment:
  asked again with a jittered back-off until the bank's status is final or the
  payment is past its SLA (then ``STUCK`` checks, rarer, take over).

With a ``RequestBudget`` (REST polling) every GET takes a token first, so the
checks of thousands of payments in flight spread out instead of flooding BGMock.

``StatusPoller`` runs the checks on a few threads from a time-ordered queue, at
most one queued check per payment.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
import uuid
from collections.abc import Callable
from enum import Enum

from bgmock_twin.clients.bgmock import BGMockClients, StoredTransaction
from bgmock_twin.clients.rest import ServiceError
from bgmock_twin.contract import Status
from bgmock_twin.logs import get_logger
from bgmock_twin.tracking.budget import RequestBudget
from bgmock_twin.tracking.lifecycle import Channel, Step
from bgmock_twin.tracking.tracker import StepReached, Tracker
from bgmock_twin.workers import Worker

log = get_logger(__name__)

ACCEPT_CHECK_DELAY = 1.5


class Purpose(Enum):
    ACCEPT = "accept"
    ACCEPT_NOW = "accept_now"  # right after the 202 (single payments over the API)
    SETTLE = "settle"
    STUCK = "stuck"
    FOLLOW = "follow"  # no Kafka: poll until final or past the SLA


# Which purpose wins when two checks of one payment merge: an accept check gives up
# as soon as events flow, settle and follow checks retry until the status is final.
_STRENGTH = {Purpose.ACCEPT: 0, Purpose.ACCEPT_NOW: 1, Purpose.STUCK: 2, Purpose.SETTLE: 3,
             Purpose.FOLLOW: 4}
# How long a check waits for the request budget before it is retried later.
BUDGET_WAIT_SECONDS = 2.0


class Result(Enum):
    DONE = "done"    # nothing more to ask for this purpose
    RETRY = "retry"  # not final yet, or the bank could not be asked


class BudgetExhausted(Exception):
    """No request token came in time; the check is retried later."""


# (source clearing number, transaction id) -> the bank's copy, None if it has none
OutgoingLookup = Callable[[str, uuid.UUID], StoredTransaction | None]


class StatusChecker:
    def __init__(self, clients: BGMockClients, tracker: Tracker,
                 budget: RequestBudget | None = None, sla: float | None = None,
                 ask_clearing_when_stuck: bool = False) -> None:
        self.clients = clients
        self.tracker = tracker
        self.budget = budget
        self.sla = sla  # FOLLOW checks stop once a payment is past it
        # without Kafka: a stuck payment's check also asks the clearing where it is
        self.ask_clearing_when_stuck = ask_clearing_when_stuck
        self.stop_event = threading.Event()
        # how a source bank's copy is read: by default on ``clients``; the sender sets
        # its own (``Sender.get_outgoing``: the loop's pooled client, a fraction of
        # the CPU of requests for the look-up most payments get)
        self.get_outgoing: OutgoingLookup = \
            lambda clearing, tx: self.clients.bank(clearing).get_outgoing(tx)

    def _spend(self) -> None:
        if self.budget is not None and \
                not self.budget.take(BUDGET_WAIT_SECONDS, self.stop_event):
            raise BudgetExhausted

    def check(self, payment_id: str, purpose: Purpose) -> Result:
        view = self.tracker.poll_view(payment_id)
        if view is None or view.finished or view.channel is not Channel.REST \
                or view.transaction_id is None:
            return Result.DONE
        if purpose in (Purpose.ACCEPT, Purpose.ACCEPT_NOW) and \
                (view.initiated_seen or view.completed_seen):
            return Result.DONE  # events flow: it was not rejected
        if purpose is Purpose.FOLLOW and self.sla is not None and view.age > self.sla:
            return Result.DONE  # past its SLA: the deadline job's STUCK checks go on
        try:
            self._spend()
        except BudgetExhausted:
            return Result.RETRY
        self.tracker.mark_polled(payment_id)
        try:
            stored = self.get_outgoing(view.from_clearing, view.transaction_id)
            if stored is None or stored.status is Status.PENDING:
                if view.stuck and self.ask_clearing_when_stuck:
                    self._spend()
                    at_clearing = self.clients.clearing.get_transaction(view.transaction_id)
                    self.tracker.clearing_seen(
                        payment_id, at_clearing.status if at_clearing is not None else None)
                # PENDING after the 202 means reserved and on its way: not rejected
                return Result.RETRY if purpose in (Purpose.SETTLE, Purpose.FOLLOW) \
                    else Result.DONE
            if stored.status is Status.FAILED and not view.initiated_seen \
                    and not view.completed_seen:
                self._spend()
                at_clearing = self.clients.clearing.get_transaction(view.transaction_id)
                if at_clearing is None:
                    self.tracker.reject(payment_id, "rejected by the source bank")
                    return Result.DONE
        except ServiceError as exc:
            log.debug("status_check_failed", service=exc.service, reason=exc.reason)
            return Result.RETRY
        except BudgetExhausted:
            return Result.RETRY
        self.tracker.settle(payment_id, stored.status)
        return Result.DONE


class StatusPoller:
    """Scheduled status checks on a small pool of threads."""

    def __init__(
        self,
        check: Callable[[str, Purpose], Result],
        threads: int = 4,
        first_delay: float = 0.05,
        max_delay: float = 2.0,
        max_attempts: int = 12,
        follow_delay: Callable[[int], float] | None = None,
    ) -> None:
        self._check = check
        self.threads = threads
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.max_attempts = max_attempts
        # the delay before a FOLLOW check's next attempt (``rest_follower``); such
        # checks are bounded by the SLA, not by ``max_attempts``
        self.follow_delay = follow_delay or follow_backoff
        self._heap: list[tuple[float, int, str, Purpose, int]] = []
        self._queued: dict[str, tuple[float, Purpose]] = {}
        # a later request with a stronger purpose rides on an earlier queued check
        self._upgraded: dict[str, Purpose] = {}
        self._counter = 0
        self._cond = threading.Condition()
        self._workers: list[_CheckThread] = []

    def start(self) -> None:
        for i in range(self.threads):
            worker = _CheckThread(self, f"status-poller-{i}")
            worker.start()
            self._workers.append(worker)

    def stop(self, timeout: float = 2.0) -> None:
        for worker in self._workers:
            worker.signal_stop()
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self._workers = []

    @property
    def alive(self) -> bool:
        """Every check thread runs."""
        return bool(self._workers) and all(worker.alive for worker in self._workers)

    def wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def schedule(self, payment_id: str, purpose: Purpose = Purpose.SETTLE,
                 delay: float | None = None, attempt: int = 0) -> None:
        due = time.monotonic() + (self.first_delay if delay is None else delay)
        with self._cond:
            queued = self._queued.get(payment_id)
            if queued is not None and queued[0] <= due:
                self._upgrade(payment_id, purpose)
                return
            if queued is not None:  # this one goes first and keeps the stronger purpose
                self._upgrade(payment_id, queued[1])
            self._queued[payment_id] = (due, purpose)
            self._counter += 1
            heapq.heappush(self._heap, (due, self._counter, payment_id, purpose, attempt))
            if self._heap[0][1] == self._counter:  # the next due now: a sleeper must know
                self._cond.notify()

    def _upgrade(self, payment_id: str, purpose: Purpose) -> None:
        if _STRENGTH[purpose] > _STRENGTH[self._upgraded.get(payment_id, Purpose.ACCEPT)]:
            self._upgraded[payment_id] = purpose

    def settle_soon(self, payment_id: str) -> None:
        self.schedule(payment_id, Purpose.SETTLE)

    def on_step(self, event: StepReached) -> None:
        """The tracker's subscriber: once a REST payment completed, the source bank
        applies it a moment later; time to read its settled status."""
        if event.step is Step.COMPLETED and event.channel is Channel.REST \
                and not event.finished:
            self.settle_soon(event.payment_id)

    def _next(self, worker: Worker) -> tuple[str, Purpose, int] | None:
        with self._cond:
            while not worker.stopping:
                # no polling: ``schedule`` notifies when the next check due changes,
                # a taker hands the wait for the next one over, and a stop wakes all
                if not self._heap:
                    self._cond.wait()
                    continue
                due, _, payment_id, purpose, attempt = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                if self._heap:
                    self._cond.notify()  # another thread waits for the next one
                if self._queued.get(payment_id, (None,))[0] != due:
                    continue  # superseded by an earlier schedule
                del self._queued[payment_id]
                stronger = self._upgraded.pop(payment_id, None)
                if stronger is not None and _STRENGTH[stronger] > _STRENGTH[purpose]:
                    return payment_id, stronger, 0
                return payment_id, purpose, attempt
        return None

    def check_next(self, worker: Worker) -> None:
        """Run the next due check (waiting for it); reschedule it if it must retry."""
        item = self._next(worker)
        if item is None:
            return
        payment_id, purpose, attempt = item
        try:
            result = self._check(payment_id, purpose)
        except Exception as exc:  # a bad answer never kills the poller
            log.warning("status_check_crashed", error=repr(exc))
            result = Result.RETRY
        if result is Result.RETRY and purpose is Purpose.FOLLOW:
            self.schedule(payment_id, purpose, self.follow_delay(attempt + 1), attempt + 1)
        elif result is Result.RETRY and attempt + 1 < self.max_attempts:
            delay = min(self.max_delay, self.first_delay * 2 ** (attempt + 1))
            if purpose is not Purpose.SETTLE:
                delay = max(delay, 1.0)
            self.schedule(payment_id, purpose, delay, attempt + 1)


FOLLOW_FIRST_DELAY = 1.5  # BGMock's happy path takes 1-5 s (four outbox hops)
FOLLOW_FACTOR = 1.6
FOLLOW_MAX_DELAY = 8.0
FOLLOW_JITTER = 0.25


def follow_backoff(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds before FOLLOW attempt ``attempt`` (0 = the first, after the 202):
    growing geometrically to a cap, each spread by +-25 % so payments sent together
    are not asked about together."""
    base = min(FOLLOW_MAX_DELAY, FOLLOW_FIRST_DELAY * FOLLOW_FACTOR ** attempt)
    spread = (rng or random).uniform(1 - FOLLOW_JITTER, 1 + FOLLOW_JITTER)
    return base * spread


class _CheckThread(Worker):
    """One of the poller's threads: takes due checks off the shared queue."""

    def __init__(self, poller: StatusPoller, name: str) -> None:
        super().__init__(name, error_event="status_poller_error")
        self._poller = poller

    def step(self) -> None:
        self._poller.check_next(self)

    def wake(self) -> None:
        self._poller.wake_all()
