"""Wiring: builds every component from the settings, owns start-up and shutdown.

Order of start-up: logging → control API (``/healthz`` live, ``/readyz`` not ready,
saying what is still starting) → event bus → (embedded) emulator → REST clients →
health probes → tracking → books → the components' routes → scheduler. The API
comes first because the rest can take a while (a broker to reach, consumer groups
to rebalance after a SIGKILL), and a kubelet must not kill a twin that is starting.

The mode: embedded (the emulator, over Kafka or the in-process bus) or external;
external without ``KAFKA_BOOTSTRAP_SERVERS`` has no bus, so tracking follows its
payments by REST polling (``tracking.rest_follower``). Which way it follows, and
what it cannot see that way, is said once at start-up (``twin_mode``), in
``/api/v1/status`` and in ``bgmock_twin_info{following}``.

Shutdown runs the other way round and is bounded by ``TWIN_SHUTDOWN_GRACE_SECONDS``:
stop scheduling, stop sending, let in-flight work finish or give up, close clients.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine

from bgmock_twin import __version__, metrics
from bgmock_twin.api.books_routes import build_books_router
from bgmock_twin.api.server import (
    ApiServer,
    ConnectionLimits,
    LimitSettings,
    add_routers,
    create_api,
)
from bgmock_twin.api.tracking_routes import build_router as tracking_router
from bgmock_twin.api.twin import Fault, FaultResult, OutboxDrop, TwinStatus
from bgmock_twin.books.lag import lag_source_for
from bgmock_twin.books.model import AccountKey
from bgmock_twin.books.service import Books
from bgmock_twin.books.sources import LedgerReader, bank_of
from bgmock_twin.bus.base import BusError, EventBus
from bgmock_twin.clients.bgmock import BGMockClients
from bgmock_twin.clients.databases import readonly_engine
from bgmock_twin.contract import BANK_A, BANK_B, CLEARING, SERVICES
from bgmock_twin.emulator import EmbeddedBGMock, EmulatorConfig, FaultError
from bgmock_twin.errors import InvalidRequest, NotInThisMode
from bgmock_twin.logs import configure_logging, get_logger
from bgmock_twin.probes import build_checks, probe_jobs, registry_for
from bgmock_twin.scheduler import JobScheduler
from bgmock_twin.settings import Settings, mask_url
from bgmock_twin.tracking.rest_follower import Following
from bgmock_twin.tracking.service import Tracking
from bgmock_twin.workers import tune_gc

log = get_logger(__name__)


def build_bus(settings: Settings) -> EventBus | None:
    """Kafka when configured; in embedded mode without Kafka, the in-process bus."""
    if settings.kafka_bootstrap_servers:
        from bgmock_twin.bus.kafka import KafkaBus

        kafka: EventBus = KafkaBus(
            settings.kafka_bootstrap_servers,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            client_id=f"bgmock-twin-{settings.instance_id}",
        )
        return kafka
    if settings.embedded:
        from bgmock_twin.bus.memory import InMemoryBus

        memory: EventBus = InMemoryBus()
        return memory
    return None


class Twin:
    """The running daemon."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.mode = "embedded" if settings.embedded else "external"
        self.following = Following.KAFKA if settings.kafka_bootstrap_servers or \
            settings.embedded else Following.REST_POLLING
        self.started_at = datetime.now(UTC)
        self.bus: EventBus | None = None
        self.emulator: EmbeddedBGMock | None = None
        self.clients: BGMockClients | None = None
        self.databases: dict[str, Engine] = {}
        self.health = registry_for(settings.probes)
        self.scheduler = JobScheduler()
        self.tracking: Tracking | None = None
        self.books: Books | None = None
        self.api: ApiServer | None = None
        self._stopping = threading.Event()
        self._starting: str | None = "starting"

    # --- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        """Start every part; a broker that cannot be reached is named in the error."""
        began = time.monotonic()
        try:
            self._start_parts()
        except BusError as exc:
            servers = self.settings.kafka_bootstrap_servers
            raise RuntimeError(
                f"Kafka broker {servers} unreachable ({self._starting}; tried for "
                f"{time.monotonic() - began:.1f} s): {exc}") from None

    def _start_parts(self) -> None:
        settings = self.settings
        metrics.TWIN_INFO.info({"version": __version__, "mode": self.mode,
                                "instance_id": settings.instance_id,
                                "following": self.following.value})
        self._export_slo_targets()
        app = self._start_api()
        self._starting = "connecting the event bus"
        self.bus = build_bus(settings)
        self._starting = "starting the embedded BGMock" if settings.embedded else \
            "connecting to BGMock"
        urls = self._start_bgmock()
        self.clients = BGMockClients.build(
            urls, settings.rest_timeout_seconds, pool_size=settings.max_in_flight_requests + 8
        )
        self.databases = self._database_engines()
        for service, check in build_checks(self.clients, self.bus, self.databases).items():
            self.health.register(service, check)
        self.scheduler.add(probe_jobs(self.health, settings.probes))
        tracking = self.tracking = Tracking(settings.tracking, self.clients, self.bus,
                                            bank_databases=self.databases)
        self._log_mode(tracking)
        books = self.books = self._build_books()
        add_routers(app, [tracking_router(tracking, settings.api.heavy_reads),
                          build_books_router(books)])
        self._starting = "starting the scheduler"
        self.scheduler.start()
        self._starting = "joining the Kafka consumer groups" if self.bus is not None else \
            "starting the REST follower"
        tracking.start()
        self.scheduler.add(tracking.jobs())
        self.scheduler.add(books.jobs())
        self._starting = "starting the books"
        books.start()
        self._starting = None
        metrics.TWIN_READY.set(1)
        log.info("twin_started", mode=self.mode, instance=settings.instance_id,
                 urls=urls, services=self.health.services)

    def _start_api(self) -> Any:
        """Listen before anything slow starts; the control routes open later."""
        api = self.settings.api
        app = create_api(self, api.token, LimitSettings(
            max_request_bytes=api.max_request_bytes,
            mutate_rate=api.api_rate_limit_per_second,
            read_rate=api.api_read_rate_limit_per_second,
        ), docs=api.docs)
        self.api = ApiServer(app, api.listen_host, api.listen_port, ConnectionLimits(
            read_timeout=api.api_read_timeout_seconds,
            max_connections=api.api_max_connections,
        ))
        self.api.start()
        log.info("control_api_listening", host=api.listen_host, port=self.api.port)
        return app

    def _log_mode(self, tracking: Tracking) -> None:
        """One line that says how this twin follows payments and what it cannot see."""
        status = tracking.status()
        if self.following is Following.REST_POLLING:
            log.warning(
                "twin_mode", mode=self.mode, following=self.following.value,
                not_observed=list(status.not_observed), channels=list(status.channels),
                poll_budget_per_second=self.settings.rest_poll_budget_per_second,
                reason="KAFKA_BOOTSTRAP_SERVERS is not set: payments are sent over REST "
                       "and followed by polling the source bank and the clearing; the "
                       "kafka channel is refused and consumer lag is not exported")
        else:
            log.info("twin_mode", mode=self.mode, following=self.following.value,
                     not_observed=[], channels=list(status.channels))

    def _start_bgmock(self) -> dict[str, str]:
        settings = self.settings
        if not settings.embedded:
            assert settings.bank_a_url and settings.bank_b_url and settings.clearing_url
            return {BANK_A.name: settings.bank_a_url, BANK_B.name: settings.bank_b_url,
                    CLEARING.name: settings.clearing_url}
        assert self.bus is not None

        def secret(value: Any) -> str | None:
            return value.get_secret_value() if value is not None else None

        self.emulator = EmbeddedBGMock(EmulatorConfig(
            host=settings.emulator_host,
            bus=self.bus,
            db_urls={
                BANK_A.name: secret(settings.emulator_db_bank_a),
                BANK_B.name: secret(settings.emulator_db_bank_b),
                CLEARING.name: secret(settings.emulator_db_switch),
            },
            outbox_interval_seconds=settings.emulator_outbox_interval_seconds,
            flush_window_seconds=settings.emulator_flush_window_seconds,
        ))
        self.emulator.start()
        log.info("embedded_bgmock_started", urls=self.emulator.urls)
        return dict(self.emulator.urls)

    def _database_engines(self) -> dict[str, Engine]:
        """Read-only engines for DB_*; in embedded mode the emulator's own databases
        stand in for any that are not configured."""
        settings = self.settings
        configured = settings.database_urls()
        engines: dict[str, Engine] = {}
        for service in SERVICES:
            url = configured[service.database]
            if url is not None:
                engines[service.database] = readonly_engine(
                    url.get_secret_value(), settings.db_statement_timeout_ms,
                    connect_timeout_s=max(1, int(settings.probe_timeout_seconds)),
                )
                log.info("database_configured", service=service.database,
                         url=mask_url(url.get_secret_value()))
            elif self.emulator is not None:
                engines[service.database] = self.emulator.engines[service.name]
        return engines

    def _build_books(self) -> Books:
        settings = self.settings.books
        ledger = None
        lease = None
        if self.tracking is not None:
            from bgmock_twin.tracking.ledger import deposits, payments
            from bgmock_twin.tracking.singletons import BOOKS_LEASE, BOOKS_LEASE_INTERVALS, FleetJob

            tracked = self.tracking.ledger
            ledger = LedgerReader(tracked.engine, payments, deposits, flush=tracked.flush,
                                  unwritten=lambda: tracked.buffered,
                                  failing=lambda: not tracked.available)
            lease = FleetJob(self.tracking.leases, BOOKS_LEASE,
                             BOOKS_LEASE_INTERVALS * settings.reconcile_interval_seconds) \
                if self.tracking.in_fleet else None
        lag_source = lag_source_for(
            self.bus, settings.kafka_bootstrap_servers,
            timeout=max(1.0, min(5.0, settings.lag_interval_seconds / 2)))
        return Books(settings, ledger=ledger, clients=self.clients, engines=self.databases,
                     lag_source=lag_source, twin_accounts=self._twin_accounts, lease=lease)

    def _twin_accounts(self) -> list[AccountKey]:
        """The accounts the twin provisioned (none before it has)."""
        fixtures = self.tracking.provisioner.fixtures if self.tracking is not None else None
        if fixtures is None:
            return []
        numbers = [(clearing, number) for clearing, listed in fixtures.payers.items()
                   for number in listed]
        numbers += list(fixtures.low_accounts.items())
        return [AccountKey(bank_of(clearing), number) for clearing, number in numbers]

    def _export_slo_targets(self) -> None:
        s = self.settings
        for slo, value in {
            "success_ratio": s.slo_success_ratio,
            "p95_seconds": s.slo_p95_seconds,
            "outbox_pending": s.slo_outbox_pending,
            "outbox_age_seconds": s.slo_outbox_age_seconds,
            "consumer_lag": s.slo_consumer_lag,
            "step_deadline_seconds": s.step_deadline_seconds,
            "sla_seconds": s.payment_sla_seconds,
            "reconciliation_max_age_seconds": 3 * s.reconcile_interval_seconds + 60,
        }.items():
            metrics.SLO_TARGET.labels(slo).set(value)

    def stop(self) -> None:
        """Stop everything within the shutdown grace; safe to call twice."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        grace = self.settings.shutdown_grace_seconds
        deadline = time.monotonic() + grace
        metrics.TWIN_READY.set(0)
        log.info("twin_stopping", grace_seconds=grace)

        def remaining() -> float:
            return max(0.1, deadline - time.monotonic())

        steps: list[tuple[str, Callable[[], None]]] = [
            ("scheduler", lambda: self.scheduler.shutdown(wait=False)),
            ("tracking", lambda: self.tracking.stop(remaining() * 0.5) if self.tracking else None),
            ("books", lambda: self.books.stop() if self.books else None),
            ("api", lambda: self.api.stop(min(3.0, remaining())) if self.api else None),
            ("probes", self.health.close),
            ("clients", lambda: self.clients.close() if self.clients else None),
            ("emulator", lambda: self.emulator.stop() if self.emulator else None),
            ("bus", lambda: self.bus.close() if self.bus else None),
            ("databases", self._dispose_databases),
        ]
        for name, step in steps:
            try:
                step()
            except Exception as exc:  # shutdown goes on whatever one part does
                log.warning("shutdown_step_failed", step=name, error=repr(exc))
        log.info("twin_stopped")

    def _dispose_databases(self) -> None:
        """Dispose the engines the twin made (the emulator disposes its own)."""
        emulated = set(map(id, self.emulator.engines.values())) if self.emulator else set()
        for engine in self.databases.values():
            if id(engine) not in emulated:
                engine.dispose()

    # --- what the API reads -----------------------------------------------------------
    def is_ready(self) -> tuple[bool, list[str]]:
        reasons = []
        if self._starting is not None:
            reasons.append(f"starting: {self._starting}")
        elif not self.scheduler.running:
            reasons.append("scheduler not running")
        if self._stopping.is_set():
            reasons.append("shutting down")
        if self.tracking is not None and not self.tracking.ready():
            reasons.append("tracking not ready")
        return not reasons, reasons

    def status(self) -> TwinStatus:
        return TwinStatus(
            mode=self.mode,
            following=self.following.value,
            instance=self.settings.instance_id,
            version=__version__,
            started_at=self.started_at,
            services=self.health.snapshot(),
            payments=self.tracking.status() if self.tracking is not None else None,
            books=self.books.status() if self.books is not None else None,
        )

    def apply_fault(self, fault: Fault) -> FaultResult:
        if self.emulator is None:
            raise NotInThisMode("faults apply to the embedded emulator only")
        faults = self.emulator.faults
        service = fault.service
        try:
            corrupt = fault.corrupt_balance
            new_balance = None if corrupt is None else faults.corrupt_balance(
                service, corrupt.account_number, corrupt.delta)
            outbox_drop = None
            if fault.drop_outbox_row:
                dropped = faults.drop_outbox_row(service)
                outbox_drop = OutboxDrop(None if dropped is None else {
                    k: str(v) for k, v in dropped.items()})
            applied = faults.apply(service, fault.switches) if fault.switches else None
        except (FaultError, KeyError) as exc:
            raise InvalidRequest(f"invalid fault: {exc}") from None
        return FaultResult(service, new_balance, outbox_drop, applied)


def run(settings: Settings) -> int:
    """Run the daemon until SIGTERM or SIGINT; exit 0 after a clean shutdown."""
    configure_logging(settings.log_level, settings.log_format.value)
    tune_gc()
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal_received", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    twin = Twin(settings)
    try:
        twin.start()
    except Exception as exc:
        log.error("start_failed", error=str(exc)[:500])
        twin.stop()
        return 1
    while not stop.wait(5.0):  # the signal handler sets it (and interrupts the wait)
        pass
    twin.stop()
    return 0
