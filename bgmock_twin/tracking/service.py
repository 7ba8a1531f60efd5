"""The tracking facade the daemon wires in: one object that owns the ledger, the
tracker, the sender, the Kafka follower (or, without a bus, the REST follower),
the status poller and the simulations, with a small public surface (``start``,
``jobs``, ``stop``, ``submit_one``, ``status``, ``ready``).

Given no event bus (external mode without ``KAFKA_BOOTSTRAP_SERVERS``) it follows
payments by REST polling (``rest_follower``): the canary and simulations still run,
the Kafka channel is refused with the reason, and the steps it cannot see are
reported as not observed. Its HTTP routes live in ``api/``; its
scheduled jobs are described by ``jobs()`` and registered by the wiring.

Scheduled jobs (names as seen in ``bgmock_scheduler_*`` metrics):
``tracking_provision`` (provision/top up, every 60 s, first run at start; retried
the same way while BGMock is unreachable), ``tracking_load`` (the background
canary at ``TWIN_LOAD_RATE``), ``tracking_deadlines`` (stuck marks, SLA counting,
status polls of stuck payments, simulation progress, the bank-table search for
payments whose 202 never came back (``rematch``); every second) and
``tracking_retention`` (ledger pruning).

In a fleet (replicas on one shared ledger) the background canary runs on one
replica only, the holder of the ``canary`` lease (``singletons``); each replica
pays from its own accounts (``provisioning.replica_account_prefix``), and a
provisioning pass holds its account set's lease (``accounts:<prefix>``) so that
replicas sharing one set never adopt what another just created.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy.engine import Engine

from bgmock_twin.bus.base import EventBus
from bgmock_twin.clients.bgmock import BGMockClients
from bgmock_twin.clients.rest import ServiceError
from bgmock_twin.contract import BANK_A, BANKS, Bank, bank_by_letter
from bgmock_twin.errors import InvalidRequest, NotInThisMode, Unavailable
from bgmock_twin.logs import get_logger
from bgmock_twin.scheduler import Job
from bgmock_twin.settings import FleetMode, TrackingSettings
from bgmock_twin.tracking import mix
from bgmock_twin.tracking.budget import RequestBudget
from bgmock_twin.tracking.clock import Clock
from bgmock_twin.tracking.fleet import Fleet
from bgmock_twin.tracking.follower import Follower
from bgmock_twin.tracking.ledger import Ledger, LedgerUnavailable
from bgmock_twin.tracking.ledger.fleet_store import FleetStore
from bgmock_twin.tracking.ledger.leases import Leases
from bgmock_twin.tracking.ledger.schema import make_engine
from bgmock_twin.tracking.lifecycle import ALL_STEPS, Channel, Kind, Payment, Route, Step
from bgmock_twin.tracking.load import FixturesUnavailable, LoadProfile, Run, build_payment
from bgmock_twin.tracking.poller import Purpose, StatusChecker, StatusPoller
from bgmock_twin.tracking.provisioning import (
    Fixtures,
    Provisioner,
    new_deposit_row,
    replica_account_prefix,
)
from bgmock_twin.tracking.rematch import Rematcher
from bgmock_twin.tracking.rest_follower import (
    KAFKA_CHANNEL_REFUSED,
    NOT_OBSERVED_WITHOUT_KAFKA,
    Following,
    RestFollower,
    channels,
    not_observed,
)
from bgmock_twin.tracking.sender import Sender
from bgmock_twin.tracking.simulations import SimulationManager
from bgmock_twin.tracking.singletons import CANARY_LEASE, FleetJob, exclusive_pass
from bgmock_twin.tracking.status import LedgerStatus, TrackingStatus
from bgmock_twin.tracking.testhooks import PauseHook
from bgmock_twin.tracking.tracker import Tracker
from bgmock_twin.workers import release_freed_memory

log = get_logger(__name__)

PROVISION_INTERVAL_SECONDS = 60.0
DEADLINE_INTERVAL_SECONDS = 1.0
RETENTION_INTERVAL_SECONDS = 600.0
LEDGER_BUFFER_SIZE = 100_000
CANARY_LEASE_MIN_SECONDS = 10.0  # the canary's lease: this, or 5 of its ticks if longer
ACCOUNTS_LEASE_SECONDS = 120.0  # longer than a provisioning pass (its quiet wait included)
QUIET_WAIT_SECONDS = 10.0
ACCOUNTS_FLUSH_SECONDS = 5.0


class SenderBusy(Unavailable):
    """Every sender slot is taken; the payment was dropped and counted."""


class InvalidPayment(InvalidRequest):
    """A payment asked of ``submit_one`` that the twin's accounts cannot make."""


class ChannelUnavailable(NotInThisMode):
    """The Kafka channel, asked of a twin that runs without Kafka (409)."""


class Tracking:
    def __init__(
        self,
        settings: TrackingSettings,
        clients: BGMockClients,
        bus: EventBus | None,
        clock: Clock | None = None,
        bank_databases: Mapping[str, Engine] | None = None,  # by name: db_bank_a ...
    ) -> None:
        self.settings = settings
        self.following_by = Following.KAFKA if bus is not None else Following.REST_POLLING
        polling = self.following_by is Following.REST_POLLING
        spill_dir = None if settings.ledger_spill_dir == "auto" \
            else Path(settings.ledger_spill_dir)
        self.ledger = Ledger(settings.twin_database_url.get_secret_value(),
                             buffer_size=LEDGER_BUFFER_SIZE, spill_dir=spill_dir,
                             instance_id=settings.instance_id)
        self.tracker = Tracker(
            self.ledger, step_deadline=settings.step_deadline_seconds,
            sla=settings.payment_sla_seconds, clock=clock,
            park_seconds=settings.rest_timeout_seconds + 2,
            hidden_rest_steps=NOT_OBSERVED_WITHOUT_KAFKA if polling else frozenset(),
        )
        self.leases = Leases(self.ledger.engine, settings.instance_id)
        # Replicas on one PostgreSQL ledger are a fleet; an SQLite ledger is one
        # process's own, so that twin is alone: its own account names, canary and books.
        self.in_fleet = settings.fleet_mode is FleetMode.AUTO and \
            self.ledger.engine.dialect.name == "postgresql"
        prefix = replica_account_prefix(settings.account_prefix, settings.instance_id) \
            if self.in_fleet else settings.account_prefix
        self.provisioner = Provisioner(
            clients, prefix,
            settings.accounts_per_bank,
            settings.account_initial_deposit, record_deposit=self._record_deposit,
            has_history=self.ledger.has_history, quiet_wait_seconds=QUIET_WAIT_SECONDS,
            stuck_after_seconds=settings.payment_sla_seconds,
            exclusive=self._one_provisioner if self.in_fleet else None,
        )
        self.canary = FleetJob(
            self.leases, CANARY_LEASE,
            max(CANARY_LEASE_MIN_SECONDS,
                5 * self._load_interval(settings.load_rate_per_second or 1.0))) \
            if self.in_fleet else None
        self.budget = RequestBudget(settings.rest_poll_budget_per_second) if polling else None
        self.checker = StatusChecker(clients, self.tracker, budget=self.budget,
                                     sla=settings.payment_sla_seconds,
                                     ask_clearing_when_stuck=polling)
        self.poller = StatusPoller(self.checker.check)
        self.tracker.subscribe(self.poller.on_step)
        self.rest_follower = RestFollower(self.tracker, self.poller) if polling else None
        if self.rest_follower is not None:
            self.tracker.subscribe(self.rest_follower.on_step)
        databases = bank_databases or {}
        self.rematcher = Rematcher(
            self.tracker,
            {bank.clearing_number: databases[bank.database] for bank in BANKS
             if bank.database in databases},
            self.ledger.known_transactions,
            settle_seconds=settings.rest_timeout_seconds + 2,
            on_matched=lambda payment_id: self.poller.schedule(payment_id, Purpose.ACCEPT, 0.0),
        )
        self.tracker.matcher = self.rematcher.match_event
        self.sender = Sender(
            self.tracker, clients, bus, self.provisioner, self.checker, self.poller,
            settings.max_in_flight_requests, settings.max_in_flight_kafka_payments,
            settings.instance_id, ledger=self.ledger, rematcher=self.rematcher,
            pause=PauseHook(settings.test_pause_at),
        )
        self.checker.get_outgoing = self.sender.get_outgoing
        self.follower = Follower(bus, settings.consumer_group, self.tracker, self.ledger) \
            if bus is not None else None
        self.fleet = self._fleet() if self.in_fleet else None
        self.simulations = SimulationManager(
            self.sender, self.tracker, self.ledger, settings.instance_id, fleet=self.fleet)
        self.background = LoadProfile(
            amount_min=settings.load_amount_min, amount_max=settings.load_amount_max,
            channel=Channel.REST, direction="both",
        )
        self._background_index = 0
        self._background_carry = 0.0
        self._rng = random.Random()
        self._started = False
        self._stopping = False
        self._resumed = threading.Event()
        self._last_provision_error: str | None = None

    def _fleet(self) -> Fleet:
        """Replicas on one PostgreSQL ledger run simulations together (an SQLite
        ledger is one process's own: that replica runs them alone, as always)."""
        engine = make_engine(self.settings.twin_database_url.get_secret_value(), reader=True)
        leases = Leases(engine, self.settings.instance_id)
        return Fleet(FleetStore(engine, self.settings.instance_id), leases, self.sender,
                     self.ledger, self.settings, self.tracker.clock, on_payments=self._take_over,
                     ready=lambda: self._resumed.is_set())

    def _take_over(self, rows: list[dict[str, object]]) -> None:
        """Follow the payments of a replica that is gone (the fleet moved them to this
        one in the ledger): as after a restart, and their status is asked at once,
        since their events went past while nobody followed them."""
        following = self.tracker.resume(rows)
        if self.rest_follower is not None:
            self.rest_follower.resume()
        self._rematch_resumed(rows)
        for row in rows:
            if row["channel"] == Channel.REST.value and row["transaction_id"] is not None:
                self.poller.schedule(str(row["payment_id"]), Purpose.SETTLE, 0.0)
        log.info("tracking_took_over", payments_in_flight=following)

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Start following and sending; never fails because BGMock, Kafka or the
        ledger database is unreachable (each is retried in the background)."""
        if self.ledger.open():
            self._resume()
        else:
            self.ledger.on_available(self._resume)
        self.ledger.start()
        self.poller.start()
        self.sender.start()
        if self.follower is not None:
            self.follower.start()
        if self.fleet is not None:
            self.fleet.start()
        self._started = True
        log.info("tracking_started", following=self.following_by.value,
                 group=self.settings.consumer_group if self.follower is not None else None,
                 background_rate=self.settings.load_rate_per_second)

    def jobs(self) -> list[Job]:
        """What the wiring schedules once ``start`` returned: provisioning (first run at
        once), deadlines, retention, and the background canary when its rate is above 0.
        After ``stop`` a run of any of them does nothing."""
        jobs = [
            Job("tracking_provision", self._unless_stopping(self._provision_job),
                PROVISION_INTERVAL_SECONDS, misfire_grace_seconds=PROVISION_INTERVAL_SECONDS,
                run_now=True),
            Job("tracking_deadlines", self._unless_stopping(self._deadline_job),
                DEADLINE_INTERVAL_SECONDS, misfire_grace_seconds=5),
            Job("tracking_retention", self._unless_stopping(self._retention_job),
                RETENTION_INTERVAL_SECONDS, misfire_grace_seconds=RETENTION_INTERVAL_SECONDS,
                run_now=True),
        ]
        rate = self.settings.load_rate_per_second
        if rate > 0:
            interval = self._load_interval(rate)
            jobs.append(Job("tracking_load", self._unless_stopping(self._load_tick), interval,
                            misfire_grace_seconds=interval))
        return jobs

    def _unless_stopping(self, job: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            if not self._stopping:
                job()

        return run

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sending (in-flight submissions finish within the budget), persist
        simulation progress, commit what is recorded, flush the ledger."""
        if not self._started or self._stopping:
            return
        self._stopping = True  # from here on a scheduled run does nothing (see ``jobs``)
        budget = max(timeout, 0.5)
        if self.fleet is not None:  # no more claims; its lease released for the others
            self.fleet.stop(budget * 0.1)
        self.sender.stop(budget * 0.4)
        self.simulations.shutdown()
        if self.canary is not None:
            self.canary.release()
        self.checker.stop_event.set()  # a check waiting for the polling budget gives up
        self.poller.stop(budget * 0.1)
        if self.follower is not None:
            self.follower.stop(budget * 0.2)
        self.ledger.stop(budget * 0.3)
        self.ledger.close()
        if self.fleet is not None:
            self.fleet.leave()
        log.info("tracking_stopped")

    def _resume(self) -> None:
        """Follow again what the ledger holds in flight for this instance, read back
        a chunk at a time (``Ledger.unfinished_chunks``), never all rows at once; the
        tracker skips what a retry after a failure midway reads again."""
        if self._resumed.is_set():
            return
        instance = self.settings.instance_id
        following = 0
        try:
            for rows in self.ledger.unfinished_chunks(instance):
                following += self.tracker.resume(rows)
                self._rematch_resumed(rows)
            for rows in self.ledger.recent_finished_chunks(instance,
                                                           self.tracker.recent_horizon):
                self.tracker.resume(rows)
        except LedgerUnavailable as exc:
            log.warning("tracking_resume_failed", error=str(exc))
            return
        self._resumed.set()
        if self.rest_follower is not None:
            self.rest_follower.resume()
        self.simulations.load()
        if following:
            log.info("tracking_resumed", payments_in_flight=following)
            release_freed_memory()

    def _rematch_resumed(self, rows: list[dict[str, object]]) -> None:
        """The resumed payments keep their triples; the REST ones the killed process
        never got an id for are looked for at the bank (``rematch``), the Kafka ones
        with no step seen are produced again (``Sender.resend_kafka``)."""
        resumed = [p for row in rows if not row["finished"]
                   if (p := self.tracker.get(str(row["payment_id"]))) is not None]
        self.sender.keys.hold(resumed)
        for payment in resumed:
            if payment.channel is Channel.REST and payment.transaction_id is None:
                self.rematcher.add(payment, sender_gone=True)
        # a Kafka payment with no step seen may have died before its event left
        self.sender.resend_kafka([p for p in resumed
                                  if p.channel is Channel.KAFKA and not p.steps])
        if self.rematcher.pending:
            log.info("tracking_rematching", payments=self.rematcher.pending)

    # --- jobs -------------------------------------------------------------------------------
    def _provision_job(self) -> None:
        try:
            self.provisioner.provision()
        except ServiceError as exc:
            message = f"{exc.service}: {exc.reason}"
            self.provisioner.last_error = message
            if message != self._last_provision_error:
                log.warning("provisioning_failed", service=exc.service, reason=exc.reason)
            self._last_provision_error = message
            return
        if self._last_provision_error is not None:
            log.info("provisioning_recovered")
        self._last_provision_error = None
        self.simulations.resume_pending()

    def ensure_provisioned(self) -> Fixtures:
        """The fixtures, provisioning now if that has not succeeded yet."""
        fixtures = self.provisioner.fixtures
        if fixtures is not None and fixtures.complete():
            return fixtures
        try:
            fixtures = self.provisioner.provision()
        except ServiceError as exc:
            raise FixturesUnavailable(
                f"twin accounts not provisioned: {exc.service} {exc.reason}") from None
        if not fixtures.complete():
            if fixtures.awaiting_opening:
                raise FixturesUnavailable(
                    "twin accounts incomplete: adopted accounts still reserve money of "
                    "payments from before the ledger, retried at the next provisioning")
            raise FixturesUnavailable("twin accounts incomplete: names taken by others")
        self.simulations.resume_pending()
        return fixtures

    @staticmethod
    def _load_interval(rate: float) -> float:
        return 1 / rate if rate <= 1 else 1.0

    def _load_tick(self) -> None:
        """Hand the pacer this tick's share of the background canary, on the one
        replica of the fleet that holds the canary's lease."""
        if self.provisioner.fixtures is None:
            return
        if self.canary is not None and not self.canary.claim():
            self._background_carry = 0.0
            return
        rate = self.settings.load_rate_per_second
        interval = self._load_interval(rate)
        due = rate * interval + self._background_carry
        count = math.floor(due + 1e-9)
        self._background_carry = due - count
        if count <= 0:
            return
        step = interval / count
        run = Run(profile=self.background, offsets=iter([i * step for i in range(count)]),
                  planned=count, first_index=self._background_index, keep_lags=False)
        self._background_index += count
        self.sender.add_run(run)

    def _deadline_job(self) -> None:
        for payment_id in self.tracker.check_deadlines():
            self.poller.schedule(payment_id, Purpose.STUCK, 0.0)
        self.rematcher.sweep()
        self.simulations.refresh()

    def _retention_job(self) -> None:
        if not self._resumed.is_set():
            return  # the payments resumed from the ledger must be followed before any prune
        s = self.settings
        try:
            deleted = self.ledger.prune(timedelta(days=s.retention_days), s.retention_max_payments,
                                        self.tracker.clock.now(),
                                        followed=self.tracker.followed_ids,
                                        instance_id=s.instance_id)
        except Exception as exc:
            log.warning("retention_failed", error=str(exc)[:200])
            return
        if deleted:
            log.info("ledger_pruned", payments=deleted)

    def _one_provisioner(self) -> AbstractContextManager[None]:
        """One provisioning pass at a time on this replica's account set across the
        fleet, its deposits stored before the next (``Provisioner.exclusive``)."""
        return exclusive_pass(self.leases, f"accounts:{self.provisioner.prefix}",
                              ACCOUNTS_LEASE_SECONDS, QUIET_WAIT_SECONDS + 5,
                              lambda: self.ledger.flush(ACCOUNTS_FLUSH_SECONDS))

    def _record_deposit(self, clearing: str, account: str, amount: Decimal, reason: str) -> None:
        self.ledger.write("deposit", new_deposit_row(
            self.settings.instance_id, clearing, account, amount, reason))

    # --- one payment ------------------------------------------------------------------------
    def submit_one(
        self,
        *,
        from_bank: str | None = None,
        to_bank: str | None = None,
        from_account: str | None = None,
        to_account: str | None = None,
        amount: Decimal | None = None,
        channel: Channel = Channel.REST,
        kind: Kind = Kind.NORMAL,
    ) -> Payment:
        """Send one payment now and return it as followed (with its transaction id
        once the source accepted it). Banks are letters (``a``, ``b``). Raises
        ``FixturesUnavailable`` (BGMock unreachable), ``InvalidPayment`` (accounts
        that are not the twin's, or both on one bank) or ``SenderBusy``."""
        self.require_channel(channel)
        if channel is Channel.KAFKA and kind is Kind.INSUFFICIENT_FUNDS:
            raise InvalidPayment(
                "insufficient_funds needs the rest channel (kafka bypasses the bank)")
        fixtures = self.ensure_provisioned()
        source = bank_by_letter(from_bank) or _bank_of(fixtures, from_account, payer=True)
        destination = bank_by_letter(to_bank) or _bank_of(fixtures, to_account, payer=False)
        if source is None and destination is None:
            source = self._rng.choice(BANKS)
        if source is None:
            assert destination is not None
            source = destination.other
        if destination is None:
            destination = source.other
        if source is destination:
            raise InvalidPayment("from and to must be different banks")
        if from_account is not None and from_account not in _payers(fixtures, source):
            raise InvalidPayment(f"from_account is not a twin account of bank {source.letter}")
        if to_account is not None and to_account not in _payees(fixtures, destination):
            raise InvalidPayment(f"to_account is not a twin payee of bank {destination.letter}")
        route = Route.A_TO_B if source is BANK_A else Route.B_TO_A
        amounts = None
        if amount is None:
            amounts = (self.settings.load_amount_min, self.settings.load_amount_max)
            try:
                amount = mix.random_amount(self._rng, self.settings.load_amount_min,
                                           self.settings.load_amount_max)
            except ValueError as exc:
                raise InvalidPayment(str(exc)) from None
        clock = self.tracker.clock
        payment = build_payment(
            fixtures, route, kind, channel, amount, self._rng, clock.now(), clock.monotonic(),
            None, self.settings.instance_id, from_account=from_account, to_account=to_account,
        )
        if not self.sender.submit_now(payment, amounts):
            raise SenderBusy("every sender slot is busy; the payment was dropped")
        followed = self.tracker.get(payment.payment_id)
        return followed if followed is not None else payment

    def require_channel(self, channel: Channel) -> None:
        """Refuse, with the reason, a channel this twin cannot send on (Kafka without
        Kafka): for one payment and for simulations."""
        if channel not in channels(self.following_by):
            raise ChannelUnavailable(KAFKA_CHANNEL_REFUSED)

    def not_observed(self, channel: Channel) -> frozenset[Step]:
        """The steps of a payment on ``channel`` this twin cannot see in its mode."""
        return not_observed(self.following_by, channel)

    # --- views ------------------------------------------------------------------------------
    def ready(self) -> bool:
        """Started, not stopping, and the threads that follow payments are alive (the
        Kafka follower, or without Kafka the status poller that polls them).
        Deliberately not tied to Kafka or BGMock being reachable: the twin's job is
        to report them."""
        if not self._started or self._stopping:
            return False
        if self.follower is not None:
            return self.follower.alive
        return self.poller.alive and self.sender.alive

    def following(self) -> bool:
        """Payments are being followed: the Kafka follower is positioned on every
        partition (events will be seen), or without Kafka the REST polling runs."""
        if self.follower is not None:
            return self.follower.ready()
        return self.ready()

    def status(self) -> TrackingStatus:
        fixtures = self.provisioner.fixtures
        counts = self.tracker.counts()
        return TrackingStatus(
            in_flight=counts.in_flight,
            stuck=counts.stuck,
            submitted=counts.submitted,
            outcomes=counts.outcomes,
            parked_events=counts.parked_events,
            dropped=self.sender.dropped,
            sender_busy=self.sender.busy,
            simulations_active=self.simulations.active(),
            provisioned=fixtures is not None and fixtures.complete(),
            provision_error=self.provisioner.last_error,
            following=self.following(),
            kafka_connected=self.follower is not None and self.follower.connected,
            ledger=LedgerStatus(available=self.ledger.available, buffered=self.ledger.buffered),
            background_rate=self.settings.load_rate_per_second,
            consumer_group=self.settings.consumer_group,
            following_by=self.following_by.value,
            not_observed=self._not_observed_names(),
            channels=tuple(c.value for c in channels(self.following_by)),
            poll_requests=self.budget.spent if self.budget is not None else 0,
            canary_by=self.canary.holder() if self.canary is not None else None,
        )

    def _not_observed_names(self) -> tuple[str, ...]:
        hidden = self.not_observed(Channel.REST)
        return tuple(step.value for step in ALL_STEPS if step in hidden)


def _payers(fixtures: Fixtures, bank: Bank) -> list[str]:
    return fixtures.payers.get(bank.clearing_number, [])


def _payees(fixtures: Fixtures, bank: Bank) -> list[str]:
    return [p.account_number for p in fixtures.payees.get(bank.clearing_number, [])]


def _bank_of(fixtures: Fixtures, account: str | None, payer: bool) -> Bank | None:
    if account is None:
        return None
    for bank in BANKS:
        if account in (_payers(fixtures, bank) if payer else _payees(fixtures, bank)):
            return bank
    raise InvalidPayment(f"{'from' if payer else 'to'}_account is not a twin account")
