"""The sender: payments leave on their schedule, not when the previous one returns.

One event loop (``loop_thread``: asyncio, uvloop where available) holds every active
run (simulations and the background canary) in a heap ordered by intended send time
(open model: the schedule is computed ahead from the profile, never from answers).
``PLAN_AHEAD_SECONDS`` before a payment is due the pacer *plans* it: builds it,
gives it its unique triple and registers it, which writes its row to the ledger's
write-behind buffer and asks the writer to store what it holds. At the due time a
timer on the loop sends it once its row is stored: planned ahead, it is by then,
and only a payment planned at its due time (a run's first) or a writer running
behind waits for the database (while the ledger is available: a ledger down does not
stop the load). So a twin killed after any send finds that payment's row; one
killed between the two leaves a planned row without an answer, which the
re-matching of a restarted twin (``rematch``) finds at the bank or rejects as not
sent, and a Kafka payment with no step seen is produced again.

At most ``max_in_flight`` REST payments (and ``max_in_flight_kafka`` Kafka-channel
ones, whose produce does not wait for its delivery report) are planned or being sent
at once; a payment due while every slot of its channel is taken is *dropped and
counted* (``bgmock_payments_dropped_total``), never queued without limit. Latency
is measured from the intended time, and the gap between intended and actual send is
exported (``bgmock_payment_send_lag_seconds``), so a slow system neither slows the
load down nor hides its own slowness (no coordinated omission, k6 arrival-rate style).

Channels: ``rest`` posts to the source bank on one pooled keep-alive aiohttp client
(``clients.rest_async``; a rejection is seen by the status poller's look-up when no
event follows); a REST payment gets an amount whose (payer, bankgood, amount) triple
no other payment in flight holds (``rematch.InFlightKeys``), so one whose 202 never
comes back (a read timeout, or a kill) can be found at the bank again without
ambiguity (``rematch.Rematcher``); ``kafka`` writes an OutgoingTransactionEvent with a
fresh id straight to ``transactions.initiated`` (key = source clearing number),
which bypasses the source bank, each message with its own delivery report and no
flush per send.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol

from bgmock_twin import metrics
from bgmock_twin.bus.base import EventBus
from bgmock_twin.clients.bgmock import BGMockClients, StoredTransaction
from bgmock_twin.clients.rest import ServiceError
from bgmock_twin.clients.rest_async import AsyncBanks
from bgmock_twin.logs import get_logger
from bgmock_twin.tracking import mix
from bgmock_twin.tracking.kafka_channel import KafkaChannel
from bgmock_twin.tracking.lifecycle import Channel, Payment
from bgmock_twin.tracking.load import FixturesUnavailable, Run, build_payment
from bgmock_twin.tracking.loop_thread import LoopThread
from bgmock_twin.tracking.poller import (
    ACCEPT_CHECK_DELAY,
    Purpose,
    Result,
    StatusChecker,
    StatusPoller,
)
from bgmock_twin.tracking.provisioning import Provisioner
from bgmock_twin.tracking.refusals import refusal_of
from bgmock_twin.tracking.rematch import NOT_SENT, InFlightKeys, Rematcher
from bgmock_twin.tracking.testhooks import PauseHook
from bgmock_twin.tracking.tracker import Tracker

log = get_logger(__name__)

# How long before its due time a payment is planned and its row handed to the
# ledger: the ledger's writer stores it meanwhile (asked to at once), so a twin
# killed at the send finds it. Also the longest a stopping twin keeps sending.
PLAN_AHEAD_SECONDS = 0.1
# How often the pacer asks the ledger's writer to store the rows it planned (well
# within PLAN_AHEAD_SECONDS; asked on every pass, the writer woke for a few rows at
# a time and spent its CPU on commits)
FLUSH_ASK_SECONDS = 0.02
DELIVERY_POLL_SECONDS = 0.05  # how often Kafka delivery reports are served
# how often a send waiting for its row to be stored looks again (a writer commits in
# milliseconds; only sends whose row is not stored yet wait at all)
STORE_POLL_SECONDS = 0.002
IDLE_WAIT_SECONDS = 0.5
STOP_TIMEOUT_SECONDS = 5.0
# test pauses only: the row stored, as the pause point promises (``testhooks``)
PAUSE_FLUSH_SECONDS = 5.0


class LedgerPort(Protocol):
    """What the sender needs of the ledger: to ask its writer to store the rows
    buffered so far (``flush(0)`` asks without waiting), and to know up to which
    write every whole payment row is stored."""

    @property
    def available(self) -> bool: ...

    @property
    def last_seq(self) -> int: ...

    @property
    def rows_durable_seq(self) -> int: ...

    def flush(self, timeout: float) -> bool: ...


Planned = tuple[asyncio.TimerHandle, Payment, Run, int]  # ..., the row's write seq


class Slots:
    """One channel's bound on payments planned or being sent (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy = 0
        self._lock = threading.Lock()

    def take(self, ahead: bool = False) -> bool:
        """Take a slot; one ``ahead`` of its payment's due time only from the first
        half (a payment due now is never dropped for slots that planned ones hold)."""
        with self._lock:
            if self.busy >= ((self.limit + 1) // 2 if ahead else self.limit):
                return False
            self.busy += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.busy -= 1


class Sender:
    """The pacer and every send, on one event loop."""

    def __init__(
        self,
        tracker: Tracker,
        clients: BGMockClients,
        bus: EventBus | None,
        provisioner: Provisioner,
        checker: StatusChecker,
        poller: StatusPoller,
        max_in_flight: int,
        max_in_flight_kafka: int,
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
        self.banks = AsyncBanks.like(clients, max_in_flight)
        self.provisioner = provisioner
        self.checker = checker
        self.poller = poller
        self.instance_id = instance_id
        self.join_timeout = STOP_TIMEOUT_SECONDS
        self._loop = LoopThread("sender")
        self._heap: list[tuple[float, int, Run]] = []
        self._counter = 0
        self._heap_lock = threading.Lock()
        self._pending_of: Counter[str] = Counter()  # run id -> payments planned, not sent
        self._exhausted: set[str] = set()  # runs with nothing left to plan, some not sent
        self._slots = {Channel.REST: Slots(max_in_flight),
                       Channel.KAFKA: Slots(max_in_flight_kafka)}
        self._waiting_slot = False
        # on the loop only
        self._planned: dict[str, Planned] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake: asyncio.Event | None = None
        self._produced: asyncio.Event | None = None  # a Kafka payment went: reports due
        self._stopping = False
        self._stop_deadline = 0.0
        self._unstored = False  # planned rows the writer was not asked to store yet
        self._flush_asked = 0.0
        # sends waiting for their rows to be stored: (write seq, order, future)
        self._store_waits: list[tuple[int, int, asyncio.Future[None]]] = []
        self._store_order = itertools.count()
        self._store_watch: asyncio.Task[None] | None = None
        # the writer was asked to store every write up to this one (its next batch
        # takes them all): a waiting send asks again only for a later write
        self._store_asked = 0
        self.kafka = KafkaChannel(bus, tracker)
        self.dropped = 0

    # --- runs -------------------------------------------------------------------------------
    def add_run(self, run: Run, start_mono: float | None = None,
                start_utc: datetime | None = None) -> None:
        run.start_mono = time.monotonic() if start_mono is None else start_mono
        run.start_utc = self.tracker.clock.now() if start_utc is None else start_utc
        self._push_next(run)
        self.wake()

    def _push_next(self, run: Run) -> None:
        if run.stopped:
            self._finish(run)
            return
        offset = next(run.offsets, None)
        if offset is None:
            self._finish(run)
            return
        with self._heap_lock:
            self._counter += 1
            heapq.heappush(self._heap, (run.start_mono + offset, self._counter, run))

    def _finish(self, run: Run) -> None:
        """Nothing more of ``run`` is planned: it is done once its planned ones went."""
        with self._heap_lock:
            if self._pending_of[run.run_id]:
                self._exhausted.add(run.run_id)
                return
            self._pending_of.pop(run.run_id, None)
        run.finish()

    def _went(self, run: Run) -> None:
        """A planned payment of ``run`` was sent (or given up)."""
        with self._heap_lock:
            self._pending_of[run.run_id] -= 1
            done = self._pending_of[run.run_id] <= 0 and run.run_id in self._exhausted
            if done:
                self._exhausted.discard(run.run_id)
                self._pending_of.pop(run.run_id, None)
        if done:
            run.finish()

    def stop_run(self, run: Run) -> None:
        """No more payments of ``run`` are planned (the planned ones still go)."""
        run.stopped = True
        self.wake()

    def wake(self) -> None:
        self._loop.call_soon(self._set_wake)

    def _set_wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # --- the loop ---------------------------------------------------------------------------
    def start(self) -> None:
        self._loop.start(self._main)

    @property
    def alive(self) -> bool:
        return self._loop.alive

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        self._produced = asyncio.Event()
        deliveries = asyncio.create_task(self._serve_deliveries())
        try:
            await self._pace()
        finally:
            deliveries.cancel()
            await self._wind_down()

    async def _pace(self) -> None:
        """Plan every payment whose plan time came, then sleep until the next one's
        (or until woken: a new run, a stopped run, a slot freed)."""
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while not self._stopping:
            self._wake.clear()
            try:
                wake_at, planned = self._plan_due(loop)
            except Exception as exc:  # pacing never stops on one payment's error
                log.error("dispatch_failed", error=repr(exc))
                wake_at, planned = time.monotonic() + 0.01, 0
            self._unstored = self._unstored or planned > 0
            now = time.monotonic()
            if self._unstored and now - self._flush_asked >= FLUSH_ASK_SECONDS:
                self._unstored, self._flush_asked = False, now
                if self.ledger.available:
                    self._ask_store()  # the writer stores the planned rows now
            if self._stopping:
                break
            delay = IDLE_WAIT_SECONDS if wake_at is None else \
                min(IDLE_WAIT_SECONDS, max(0.0, wake_at - time.monotonic()))
            timer = loop.call_later(delay, self._wake.set)
            await self._wake.wait()
            timer.cancel()

    def _plan_due(self, loop: asyncio.AbstractEventLoop) -> tuple[float | None, int]:
        """Plan (or drop) what is due for planning; when to look again, and how many
        were planned."""
        planned = 0
        while not self._stopping:
            now = time.monotonic()
            with self._heap_lock:
                if not self._heap:
                    return None, planned
                due, _, run = self._heap[0]
                if run.stopped:
                    heapq.heappop(self._heap)
                    action = "stopped"
                elif due - PLAN_AHEAD_SECONDS > now:
                    return due - PLAN_AHEAD_SECONDS, planned
                elif self._acquire(run.profile.channel, ahead=due > now):
                    heapq.heappop(self._heap)
                    action = "plan"
                elif due > now:  # no slot to plan it ahead: wait for one until it is due
                    self._waiting_slot = True
                    return due, planned
                else:
                    heapq.heappop(self._heap)
                    action = "drop"
            if action == "stopped":
                self._finish(run)
                continue
            try:
                index = run.take_index()
                if action == "drop":
                    self._drop(run, "concurrency bound reached")
                elif self._plan_one(loop, run, index, due):
                    planned += 1
            finally:  # an error is logged by ``_pace``; the run goes on to its next one
                self._push_next(run)
            if planned >= 512:  # let the sends due meanwhile go first
                return now, planned
        return None, planned

    def _plan_one(self, loop: asyncio.AbstractEventLoop, run: Run, index: int,
                  due: float) -> bool:
        """Build and register one payment (its slot taken) and set its send timer."""
        try:
            payment = self._build(run, index, due)
        except FixturesUnavailable as exc:
            self._release(run.profile.channel)
            self._drop(run, str(exc))
            return False
        try:
            seq = self._register(payment, _amounts(run.profile.amount_min,
                                                   run.profile.amount_max, payment.amount))
        except Exception:
            self._release(payment.channel)
            raise
        with self._heap_lock:
            self._pending_of[run.run_id] += 1
        timer = loop.call_later(max(0.0, due - time.monotonic()), self._launch,
                                payment.payment_id)
        self._planned[payment.payment_id] = (timer, payment, run, seq)
        return True

    def _build(self, run: Run, index: int, due: float) -> Payment:
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

    def _register(self, payment: Payment, amounts: tuple[Decimal, Decimal] | None) -> int:
        """From now on the payment is submitted and followed, its row in the ledger's
        buffer; returns a write sequence number its row is stored by. ``amounts``: the
        range a REST payment's amount may be nudged within to keep its triple unique
        (None: the amount is fixed)."""
        if payment.channel is Channel.KAFKA:
            self.tracker.register(payment)
        else:
            low, high = amounts or (payment.amount, payment.amount)
            self.keys.claim(payment, low, high, self.tracker.register)
        return self.ledger.last_seq

    def _launch(self, payment_id: str) -> None:
        """A planned payment's due time: it leaves now (once its row is stored)."""
        item = self._planned.pop(payment_id, None)
        if item is None:
            return
        _, payment, run, seq = item
        run.dispatched += 1
        run.note_sent()
        task = asyncio.get_running_loop().create_task(self._send_planned(payment, run, seq))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_planned(self, payment: Payment, run: Run, seq: int) -> None:
        try:
            await self._until_stored(seq)
            lag = max(0.0, time.monotonic() - payment.intended_mono)
            metrics.SEND_LAG.observe(lag)
            run.record_lag(lag)
            await self._send(payment, schedule_check=True)
        except Exception as exc:  # one payment never takes the sender down
            log.error("send_failed", error=repr(exc), payment_id=payment.payment_id)
        finally:
            run.mark_sent()
            self._release(payment.channel)
            self._went(run)

    def _drop(self, run: Run, reason: str) -> None:
        self.dropped += 1
        metrics.PAYMENTS_DROPPED.inc()
        run.note_drop(reason)  # one log line per burst, with its count

    # --- slots ------------------------------------------------------------------------------
    def _acquire(self, channel: Channel, ahead: bool = False) -> bool:
        return self._slots[channel].take(ahead)

    def _release(self, channel: Channel) -> None:
        self._slots[channel].give_back()
        if self._waiting_slot:  # a payment waits for a slot
            self._waiting_slot = False
            self.wake()

    @property
    def busy(self) -> int:
        return sum(slots.busy for slots in self._slots.values())

    # --- a payment's row stored before it leaves ---------------------------------------------
    async def _until_stored(self, seq: int) -> None:
        """Return once the ledger stored every whole row written up to ``seq`` (at
        once when it has, and when the ledger is unavailable: its rows wait in the
        buffer)."""
        ledger = self.ledger
        if ledger.rows_durable_seq >= seq or not ledger.available:
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._store_waits, (seq, next(self._store_order), future))
        if self._store_watch is None or self._store_watch.done():
            self._store_watch = asyncio.get_running_loop().create_task(self._watch_store())
        if seq > self._store_asked:
            self._ask_store()
        await future

    def _ask_store(self) -> None:
        """Ask the writer, without waiting, to store every write so far (its next
        batch takes them all)."""
        self._store_asked = self.ledger.last_seq
        self.ledger.flush(0)

    async def _watch_store(self) -> None:
        """Release the sends whose rows got stored, while any waits."""
        waits = self._store_waits
        while waits:
            await asyncio.sleep(STORE_POLL_SECONDS)
            durable = self.ledger.rows_durable_seq
            released = not self.ledger.available
            while waits and (released or waits[0][0] <= durable):
                future = heapq.heappop(waits)[2]
                if not future.done():
                    future.set_result(None)

    # --- sending ----------------------------------------------------------------------------
    async def _send(self, payment: Payment, schedule_check: bool) -> bool:
        """Send a registered payment on its channel; whether a REST payment's 202 came."""
        if payment.channel is Channel.KAFKA:
            if self.pause.hit("before_produce"):
                await self._pause("before_produce", payment, stored=True)
            self._produce(payment)
            return False
        return await self._send_rest(payment, schedule_check)

    async def _send_rest(self, payment: Payment, schedule_check: bool) -> bool:
        if self.pause.hit("before_post"):
            await self._pause("before_post", payment, stored=True)
        self.tracker.begin_submit()
        try:
            try:
                transaction_id = await self.banks.submit_payment(
                    payment.from_clearing, payment.from_account, payment.to_bankgood,
                    payment.amount)
            except ServiceError as exc:
                if exc.maybe_processed:
                    # the bank got the request but its answer never came (a read
                    # timeout): it may well have stored and reserved the payment, so
                    # it is not "rejected". It is looked for at the bank by its
                    # unique triple (its initiated event, the bank's table).
                    log.warning("payment_unconfirmed", payment_id=payment.payment_id,
                                service=exc.service, reason=exc.reason)
                    self.rematcher.add(payment)
                    return False
                refused = refusal_of(exc)
                self.tracker.reject(payment.payment_id, refused.message, refused.ambiguous)
                return False
            if self.pause.hit("after_post"):
                await self._pause("after_post", payment, stored=True)
            self.tracker.accepted(payment.payment_id, transaction_id)
        finally:
            self.tracker.end_submit()
        if self.pause.hit("after_accept"):
            await self._pause("after_accept", payment, stored=False)
        if schedule_check:
            self.poller.schedule(payment.payment_id, Purpose.ACCEPT, ACCEPT_CHECK_DELAY)
        return True

    async def _pause(self, point: str, payment: Payment, stored: bool) -> None:
        """Test only (``TWIN_TEST_PAUSE_AT``): this payment's send waits for good."""
        if stored and self.ledger.available:
            await asyncio.get_running_loop().run_in_executor(
                None, self.ledger.flush, PAUSE_FLUSH_SECONDS)
        self.pause.announce(point, payment.payment_id)
        await asyncio.Event().wait()

    def resend_kafka(self, payments: list[Payment]) -> None:
        """Produce again, in the background, the events of Kafka payments a killed
        twin had registered but maybe never produced (none of their steps seen). The
        same transaction id: the clearing skips an id it has handled, so a payment
        that did go out is not paid twice, and one that did not goes out now."""
        for payment in payments:
            log.info("kafka_payment_resent", payment_id=payment.payment_id,
                     transaction_id=str(payment.transaction_id))
            self._loop.call_soon(self._produce, payment, True)

    def _produce(self, payment: Payment, again: bool = False) -> None:
        self.kafka.produce(payment, again)
        if self._produced is not None:
            self._produced.set()

    async def _serve_deliveries(self) -> None:
        """Serve the Kafka delivery reports every ``DELIVERY_POLL_SECONDS`` while some
        are due; with none due, sleep until the next produce (an idle twin, or one on
        REST alone, does not wake for them)."""
        assert self._produced is not None
        while True:
            if self.kafka.awaiting_reports <= 0:
                self._produced.clear()
                await self._produced.wait()
            await asyncio.sleep(DELIVERY_POLL_SECONDS)
            self.kafka.serve()

    def get_outgoing(self, clearing: str,
                     transaction_id: uuid.UUID) -> StoredTransaction | None:
        """The status checker's look-up, run on the loop's pooled client (from the
        checker's thread; on ``clients`` while the loop does not run)."""
        if not self._stopping:
            try:
                return self._loop.run(self.banks.get_outgoing(clearing, transaction_id),
                                      (self.banks.bank_a.timeout.total or 10.0) + 1.0)
            except RuntimeError:  # the loop is not running (yet, or any more)
                pass
        return self.clients.bank(clearing).get_outgoing(transaction_id)

    # --- one payment from another thread ----------------------------------------------------
    def submit_now(self, payment: Payment,
                   amounts: tuple[Decimal, Decimal] | None = None) -> bool:
        """Send one payment built by the caller on a slot, from the caller's thread
        (blocking); False if every slot is busy (or the sender stopped). A REST
        payment's status is read back at once, so a rejection is known before this
        returns. ``amounts`` as for ``_register``."""
        if self._stopping or not self.alive or not self._acquire(payment.channel):
            self._drop_single()
            return False
        try:
            seq = self._register(payment, amounts)
            accepted = self._loop.run(self._send_stored(payment, seq))
        finally:
            self._release(payment.channel)
        if accepted and \
                self.checker.check(payment.payment_id, Purpose.ACCEPT_NOW) is Result.RETRY:
            self.poller.schedule(payment.payment_id, Purpose.ACCEPT, ACCEPT_CHECK_DELAY)
        return True

    async def _send_stored(self, payment: Payment, seq: int) -> bool:
        await self._until_stored(seq)
        metrics.SEND_LAG.observe(max(0.0, time.monotonic() - payment.intended_mono))
        return await self._send(payment, schedule_check=False)

    def _drop_single(self) -> None:
        self.dropped += 1
        metrics.PAYMENTS_DROPPED.inc()

    # --- shutdown ---------------------------------------------------------------------------
    def stop(self, timeout: float | None = None) -> None:
        """Stop planning; the planned payments still go at their due time and the
        sends in progress finish, within ``timeout``."""
        budget = self.join_timeout if timeout is None else timeout
        self._stop_deadline = time.monotonic() + budget
        self._stopping = True
        self.wake()
        self._loop.join(max(0.1, budget) + 1.0)

    async def _wind_down(self) -> None:
        with self._heap_lock:
            stranded = [run for _, _, run in self._heap]
            self._heap = []
        for run in stranded:
            run.stopped = True
            self._finish(run)
        deadline = max(self._stop_deadline, time.monotonic())
        while (self._planned or self._tasks) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for payment_id, (timer, payment, run, _) in list(self._planned.items()):
            timer.cancel()  # planned, never sent: nothing reached BGMock
            del self._planned[payment_id]
            self.tracker.reject(payment_id, NOT_SENT, False)
            run.dispatched += 1
            run.mark_sent()
            self._release(payment.channel)
            self._went(run)
        if self._tasks:
            log.warning("sender_stopped_with_busy_workers", busy=len(self._tasks))
            for task in list(self._tasks):
                task.cancel()
        self.kafka.close(max(0.1, deadline - time.monotonic()))
        await self.banks.close()


def _amounts(low: Decimal, high: Decimal, amount: Decimal) -> tuple[Decimal, Decimal]:
    """The range a planned payment's amount may move in: the profile's, or upwards
    only for an amount above it (an insufficient-funds payment stays insufficient)."""
    if amount > high:
        return amount, amount + (high - low)
    return low, high
