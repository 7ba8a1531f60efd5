"""The three emulated BGMock services in one process, wired to an event bus.

``EmbeddedBGMock`` owns, per service: a database, an HTTP endpoint on a real
loopback port, an outbox publisher thread and its Kafka listener threads; plus
the fault controller and an optional admin HTTP API. ``start`` returns once every
consumer is assigned, so a payment sent right after is never missed; ``stop``
is idempotent and releases every thread, socket, consumer and engine.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy.engine import Engine

from bgmock_twin.bus.base import (
    BusError,
    Delivery,
    EventBus,
    EventConsumer,
    EventProducer,
)
from bgmock_twin.contract import (
    BANK_A,
    BANK_B,
    BANKS,
    CLEARING,
    SERVICES,
    TOPIC_COMPLETED,
    TOPIC_FORWARDED,
    TOPIC_INITIATED,
    TOPIC_PROCESSED,
    TOPICS,
)
from bgmock_twin.contract.groups import CLEARING_GROUPS, bank_groups
from bgmock_twin.emulator.admin import admin_router
from bgmock_twin.emulator.bank import BankService
from bgmock_twin.emulator.clearing import ClearingService
from bgmock_twin.emulator.db import Database
from bgmock_twin.emulator.faults import FaultController
from bgmock_twin.emulator.listener import EventHandler, Listener
from bgmock_twin.emulator.outbox import OutboxPublisher, drop_oldest_unpublished
from bgmock_twin.emulator.web import FaultSource, HttpService
from bgmock_twin.logs import get_logger
from bgmock_twin.settings import mask_url

log = get_logger(__name__)


@dataclass
class EmulatorConfig:
    """How to run the emulator. Ports 0 pick free ports; ``admin_port`` None = no admin API."""

    bus: EventBus
    host: str = "127.0.0.1"
    db_urls: Mapping[str, str | None] = field(default_factory=dict)
    outbox_interval_seconds: float = 1.0
    # between a bank's load of an account and its versioned write (see bank.py)
    flush_window_seconds: float = 0.002
    admin_port: int | None = None
    ports: Mapping[str, int] = field(default_factory=dict)
    ready_timeout_seconds: float = 60.0


class _GuardedProducer:
    """The bus as the emulator sees it: down whenever the bus fault is on."""

    def __init__(self, inner: EventProducer, faults: FaultController) -> None:
        self._inner = inner
        self._faults = faults

    def produce(self, topic: str, key: str | None, value: bytes,
                headers: Mapping[str, bytes] | None = None,
                on_delivery: Delivery | None = None) -> None:
        if self._faults.bus_down:
            raise BusError("bus down (fault injected)")
        self._inner.produce(topic, key, value, headers, on_delivery)

    def poll(self, timeout: float) -> None:
        self._inner.poll(timeout)

    def flush(self, timeout: float) -> None:
        if self._faults.bus_down:
            raise BusError("bus down (fault injected)")
        self._inner.flush(timeout)

    def close(self) -> None:
        self._inner.close()


class EmbeddedBGMock:
    """Bank A (01), Bank B (02) and the clearing service, emulated."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.faults = FaultController()
        self._dbs: dict[str, Database] = {}
        self._services: dict[str, BankService | ClearingService] = {}
        self._http: dict[str, HttpService] = {}
        self._admin: HttpService | None = None
        self._publishers: list[OutboxPublisher] = []
        self._producers: list[EventProducer] = []
        self._listeners: list[Listener] = []
        self._started = False
        self._stopped = False

    # --- public API -------------------------------------------------------------------
    @property
    def urls(self) -> dict[str, str]:
        return {name: service.url for name, service in self._http.items()}

    @property
    def engines(self) -> dict[str, Engine]:
        return {name: db.engine for name, db in self._dbs.items()}

    @property
    def database_urls(self) -> dict[str, str | None]:
        return {name: db.url for name, db in self._dbs.items()}

    @property
    def admin_url(self) -> str | None:
        return self._admin.url if self._admin is not None else None

    @property
    def bank_a(self) -> BankService:
        service = self._services[BANK_A.name]
        assert isinstance(service, BankService)
        return service

    @property
    def bank_b(self) -> BankService:
        service = self._services[BANK_B.name]
        assert isinstance(service, BankService)
        return service

    @property
    def clearing(self) -> ClearingService:
        service = self._services[CLEARING.name]
        assert isinstance(service, ClearingService)
        return service

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        config = self.config
        bus = config.bus
        bus.ensure_topics(list(TOPICS), 3)
        for spec in SERVICES:
            url = config.db_urls.get(spec.name)
            metadata = ClearingService.metadata if spec is CLEARING else BankService.metadata
            self._dbs[spec.name] = Database(url, metadata, spec.name)
        self._services = {
            bank.name: BankService(bank.name, bank.clearing_number, self._dbs[bank.name],
                                   flush_window_seconds=config.flush_window_seconds)
            for bank in BANKS
        }
        self._services[CLEARING.name] = ClearingService(self._dbs[CLEARING.name])
        self.faults.attach(self)
        self._start_listeners()
        for name, service in self._services.items():
            producer = _GuardedProducer(bus.producer(), self.faults)
            self._producers.append(producer)
            publisher = OutboxPublisher(
                name, self._dbs[name], service.outbox, producer,
                config.outbox_interval_seconds,
                stalled=functools.partial(self.faults.outbox_stalled, name),
            )
            self._publishers.append(publisher)
            publisher.start()
        for name, service in self._services.items():
            http = HttpService(name, config.host, int(config.ports.get(name, 0)),
                               service.router(), self.faults)
            self._http[name] = http
            http.start()
        if config.admin_port is not None:
            self._admin = HttpService("admin", config.host, config.admin_port,
                                      admin_router(self.faults, lambda: self.urls, bus.name),
                                      FaultSource())
            self._admin.start()
        self._wait_ready()
        log.info(
            "emulator_started", bus=bus.name, urls=self.urls, admin=self.admin_url,
            databases={n: mask_url(u) if u else "sqlite-memory"
                       for n, u in self.database_urls.items()},
            outbox_interval_seconds=config.outbox_interval_seconds,
        )

    def _start_listeners(self) -> None:
        bus = self.config.bus
        clearing = self.clearing

        def listener(service: str, group: str, topics: Sequence[str],
                     handlers: dict[str, EventHandler], own_key: str | None) -> None:
            # No BGMock service sets auto.offset.reset: a group the broker does not
            # know (new, or lost with the broker's data) starts at the end, and
            # what was published before it joined is never read.
            consumer: EventConsumer = bus.consumer(group, list(topics),
                                                   from_beginning_if_new=False)
            item = Listener(service, consumer, self._dbs[service], handlers, own_key=own_key,
                            paused=functools.partial(self.faults.consumers_paused, service),
                            unavailable=lambda: self.faults.bus_down,
                            poll_seconds=bus.poll_seconds)
            self._listeners.append(item)
            item.start()

        # one group per listener, as the real clearing has (contract corrections)
        listener(CLEARING.name, CLEARING_GROUPS[TOPIC_INITIATED], [TOPIC_INITIATED],
                 {TOPIC_INITIATED: clearing.handle_initiated}, None)
        listener(CLEARING.name, CLEARING_GROUPS[TOPIC_PROCESSED], [TOPIC_PROCESSED],
                 {TOPIC_PROCESSED: clearing.process_processed}, None)
        for bank in (self.bank_a, self.bank_b):
            forwarded_group, completed_group = bank_groups(bank.clearing_number)
            listener(bank.name, forwarded_group, [TOPIC_FORWARDED],
                     {TOPIC_FORWARDED: bank.handle_forwarded}, bank.clearing_number)
            listener(bank.name, completed_group, [TOPIC_COMPLETED],
                     {TOPIC_COMPLETED: bank.handle_completed}, bank.clearing_number)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.ready_timeout_seconds
        while not all(item.ready for item in self._listeners):
            if time.monotonic() > deadline:
                waiting = [item.consumer.group_id if hasattr(item.consumer, "group_id")
                           else item.service for item in self._listeners if not item.ready]
                raise TimeoutError(f"emulator consumers not assigned in time: {waiting}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop servers, threads and consumers and dispose the databases (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        servers = [*self._http.values(), *([self._admin] if self._admin else [])]
        for http in servers:
            http.stopping.set()  # releases hung and delayed requests at once
        for listener in self._listeners:
            listener.signal_stop()
        for publisher in self._publishers:
            publisher.signal_stop()
        stoppers = [threading.Thread(target=http.stop, name="emulator-stop-http")
                    for http in servers]
        for thread in stoppers:
            thread.start()
        for publisher in self._publishers:
            publisher.stop()
        for listener in self._listeners:
            listener.stop()
        for thread in stoppers:
            thread.join(timeout=5)
        for producer in self._producers:
            try:
                producer.close()
            except Exception:  # shutdown goes on
                log.debug("emulator_producer_close_failed")
        for db in self._dbs.values():
            db.dispose()
        if self._started:
            log.info("emulator_stopped")

    # --- fault hooks (FaultHooks) ------------------------------------------------------
    def set_listening(self, service: str, up: bool) -> None:
        http = self._http.get(service)
        if http is None:
            return
        if up:
            http.go_up()
        else:
            http.go_down()

    def set_bus_available(self, available: bool) -> None:
        set_available = getattr(self.config.bus, "set_available", None)
        if callable(set_available):
            set_available(available)

    def corrupt_balance(self, bank: str, account_number: str, delta: Decimal) -> Decimal:
        service = self._services[bank]
        assert isinstance(service, BankService)
        return service.corrupt_balance(account_number, delta)

    def drop_outbox_row(self, service: str) -> dict[str, Any] | None:
        target = self._services[service]
        return drop_oldest_unpublished(self._dbs[service], target.outbox)
