"""Health probes against real parts: the emulator over HTTP, Tansu, PostgreSQL.

Each probe is checked up, down, hung (its timeout respected) and flapping.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from bgmock_twin.bus.kafka import KafkaBus
from bgmock_twin.bus.memory import InMemoryBus
from bgmock_twin.clients.bgmock import BGMockClients
from bgmock_twin.clients.databases import readonly_engine, select_one
from bgmock_twin.emulator import EmbeddedBGMock, EmulatorConfig
from bgmock_twin.probes import HealthRegistry, build_checks
from tests.support.blackhole import Blackhole
from tests.support.broker import TansuBroker

TIMEOUT = 0.5


def _failures(service: str, reason: str) -> float:
    return REGISTRY.get_sample_value(
        "bgmock_probe_failures_total", {"service": service, "reason": reason}) or 0.0


@pytest.fixture
def emulator() -> Iterator[EmbeddedBGMock]:
    emu = EmbeddedBGMock(EmulatorConfig(
        host="127.0.0.1", bus=InMemoryBus(),
        db_urls={"bank_a": None, "bank_b": None, "clearing": None},
        outbox_interval_seconds=0.05,
    ))
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def registry(emulator: EmbeddedBGMock) -> Iterator[HealthRegistry]:
    clients = BGMockClients.build(dict(emulator.urls), timeout=TIMEOUT)
    health = HealthRegistry(TIMEOUT)
    for service, check in build_checks(clients, emulator.config.bus, {}).items():
        health.register(service, check)
    try:
        yield health
    finally:
        health.close()
        clients.close()


def test_all_embedded_services_up(registry: HealthRegistry) -> None:
    for service in ("bank_a", "bank_b", "clearing", "kafka"):
        state = registry.probe(service)
        assert state.up, (service, state.reason)
        assert state.latency_seconds is not None and state.latency_seconds < TIMEOUT
        assert REGISTRY.get_sample_value("bgmock_service_up", {"service": service}) == 1.0
        assert (REGISTRY.get_sample_value(
            "bgmock_service_last_up_timestamp_seconds", {"service": service}) or 0) > 0


def test_down_service_reports_connection_failure(
    emulator: EmbeddedBGMock, registry: HealthRegistry
) -> None:
    before = _failures("bank_b", "connection")
    emulator.faults.apply("bank_b", {"down": True})
    state = registry.probe("bank_b")
    assert state.up is False and state.reason == "connection"
    assert REGISTRY.get_sample_value("bgmock_service_up", {"service": "bank_b"}) == 0.0
    assert _failures("bank_b", "connection") == before + 1
    assert registry.probe("bank_a").up  # the others are untouched
    emulator.faults.apply("bank_b", {"down": False})
    assert registry.probe("bank_b").up


def test_hung_service_costs_at_most_its_timeout(
    emulator: EmbeddedBGMock, registry: HealthRegistry
) -> None:
    emulator.faults.apply("clearing", {"hang": True})
    try:
        started = time.monotonic()
        state = registry.probe("clearing")
        elapsed = time.monotonic() - started
        assert state.up is False and state.reason == "timeout"
        assert elapsed < TIMEOUT + 0.5, elapsed
        # a second probe while the first check may still be running never piles up
        assert registry.probe("clearing").reason == "timeout"
    finally:
        emulator.faults.apply("clearing", {"hang": False})
    assert registry.probe("clearing").up


def test_error_and_garbage_answers_are_down(
    emulator: EmbeddedBGMock, registry: HealthRegistry
) -> None:
    emulator.faults.apply("bank_a", {"error_rate": 1.0})
    assert registry.probe("bank_a").reason == "http_5xx"
    emulator.faults.apply("bank_a", {"error_rate": 0.0, "garbage": True})
    assert registry.probe("bank_a").reason == "bad_body"
    emulator.faults.apply("bank_a", {"garbage": False})
    assert registry.probe("bank_a").up


def test_flapping_service_logs_each_change_once(
    emulator: EmbeddedBGMock, registry: HealthRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    from bgmock_twin.logs import configure_logging

    configure_logging("INFO", "json")
    registry.probe("bank_a")
    for _ in range(3):
        emulator.faults.apply("bank_a", {"down": True})
        registry.probe("bank_a")
        registry.probe("bank_a")
        emulator.faults.apply("bank_a", {"down": False})
        registry.probe("bank_a")
        registry.probe("bank_a")
    err = capsys.readouterr().err
    assert err.count('"service_down"') == 3, err
    assert err.count('"service_up"') >= 3
    state = registry.snapshot()["bank_a"]
    assert state.up and state.consecutive_failures == 0


def test_memory_bus_down_and_up(emulator: EmbeddedBGMock, registry: HealthRegistry) -> None:
    emulator.faults.apply("bus", {"down": True})
    assert registry.probe("kafka").up is False
    emulator.faults.apply("bus", {"down": False})
    assert registry.probe("kafka").up


def test_kafka_probe_up_down_hung(kafka_broker: TansuBroker) -> None:
    health = HealthRegistry(TIMEOUT)
    live = KafkaBus(kafka_broker.bootstrap, session_timeout_ms=6000)
    hole = Blackhole()
    hung = KafkaBus(f"127.0.0.1:{hole.port}", session_timeout_ms=6000)
    dead = KafkaBus("127.0.0.1:1", session_timeout_ms=6000)
    health.register("kafka", live.check)
    health.register("kafka_hung", hung.check)
    health.register("kafka_dead", dead.check)
    try:
        assert health.probe("kafka").up
        started = time.monotonic()
        state = health.probe("kafka_hung")
        assert state.up is False and time.monotonic() - started < TIMEOUT + 0.5
        assert health.probe("kafka_dead").up is False
    finally:
        health.close()
        for bus in (live, hung, dead):
            bus.close()
        hole.close()


def test_database_probe_up_down_hung(pg_database: str) -> None:
    health = HealthRegistry(TIMEOUT)
    hole = Blackhole()
    engines = {
        "db_up": readonly_engine(pg_database, 1000, connect_timeout_s=1),
        "db_down": readonly_engine("postgresql://nobody@127.0.0.1:1/none", 1000, 1),
        "db_hung": readonly_engine(f"postgresql://x@127.0.0.1:{hole.port}/x", 1000, 1),
    }
    for name, engine in engines.items():
        health.register(name, lambda _t, e=engine: select_one(e))
    try:
        assert health.probe("db_up").up
        assert health.probe("db_down").reason == "connection"
        started = time.monotonic()
        assert health.probe("db_hung").reason == "timeout"
        assert time.monotonic() - started < TIMEOUT + 0.5
    finally:
        health.close()
        for engine in engines.values():
            engine.dispose()
        hole.close()


def test_database_sessions_are_read_only(pg_database: str) -> None:
    engine = readonly_engine(pg_database, 1000)
    try:
        with pytest.raises(sa.exc.DBAPIError, match="read-only"), engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE should_fail (id int)"))
    finally:
        engine.dispose()
