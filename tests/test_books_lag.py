"""Consumer lag: exact on the in-process bus; on a real broker (Tansu) the mechanics
- groups found, metrics present, never negative, odd watermarks clamped and counted,
a dead broker costs one bounded run. Tansu's high watermark counts record batches,
so exact lag values are only asserted on the in-process bus."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from bgmock_twin.books.lag import (
    KafkaLagSource,
    LagMonitor,
    LagStatus,
    MemoryLagSource,
    compute_lag,
)
from bgmock_twin.bus.kafka import KafkaBus
from bgmock_twin.bus.memory import InMemoryBus
from bgmock_twin.contract import TOPIC_COMPLETED, TOPIC_FORWARDED
from tests.support.broker import TansuBroker
from tests.support.ports import wait_for


def _sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_compute_lag_clamps_and_counts_anomalies() -> None:
    result = compute_lag("g", {("t", 0): 5, ("t", 1): 9, ("u", 0): 2, ("u", 1): -1},
                         {("t", 0): 8, ("t", 1): 4, ("u", 0): 2})
    assert result.lag == {"t": 3, "u": 0}
    assert result.anomalies == {"t": 1}
    assert result.committed_total == 16


def test_memory_bus_lag_rises_when_a_group_stops_and_falls_when_it_resumes() -> None:
    bus = InMemoryBus()
    producer = bus.producer()
    consumer = bus.consumer("lag-test-group", [TOPIC_FORWARDED])
    monitor = LagMonitor(MemoryLagSource(bus), ["lag-test-group", "lag-test-absent"])

    def consume_all() -> None:
        while records := consumer.poll(0.05):
            consumer.commit(records)

    for i in range(6):
        producer.produce(TOPIC_FORWARDED, f"k{i}", b"{}")
    consume_all()
    first = monitor.run()
    assert first["lag-test-group"].lag == {TOPIC_FORWARDED: 0}
    assert "lag-test-absent" in first and first["lag-test-absent"].lag == {}
    # a group without committed offsets exports no "progress" that would hide a stall
    assert _sample("bgmock_kafka_consumer_last_progress_timestamp_seconds",
                   group="lag-test-absent") is None
    assert monitor.status()["groups"]["lag-test-absent"]["committed_offsets"] is False
    assert monitor.status()["groups"]["lag-test-absent"]["status"] == "MISSING"
    assert _sample("bgmock_kafka_consumer_lag", group="lag-test-group",
                   topic=TOPIC_FORWARDED) == 0
    progress_before = _sample("bgmock_kafka_consumer_last_progress_timestamp_seconds",
                              group="lag-test-group")
    assert progress_before is not None and abs(progress_before - time.time()) < 5

    # the group stops consuming: lag is exactly what was produced since
    for i in range(7):
        producer.produce(TOPIC_FORWARDED, f"k{i}", b"{}")
    time.sleep(0.01)
    stalled = monitor.run()
    assert stalled["lag-test-group"].lag == {TOPIC_FORWARDED: 7}
    assert _sample("bgmock_kafka_consumer_lag", group="lag-test-group",
                   topic=TOPIC_FORWARDED) == 7
    # no progress: the timestamp stays where it was
    assert _sample("bgmock_kafka_consumer_last_progress_timestamp_seconds",
                   group="lag-test-group") == progress_before

    consume_all()
    time.sleep(0.01)
    resumed = monitor.run()
    assert resumed["lag-test-group"].lag == {TOPIC_FORWARDED: 0}
    after = _sample("bgmock_kafka_consumer_last_progress_timestamp_seconds",
                    group="lag-test-group")
    assert after is not None and after > progress_before
    assert monitor.status()["groups"]["lag-test-group"]["lag"] == {TOPIC_FORWARDED: 0}


def _status_of(group: str) -> set[str]:
    return {status.value for status in LagStatus
            if _sample("bgmock_kafka_consumer_group_status", group=group,
                       status=status.value) == 1}


def test_memory_bus_group_judged_over_its_window(capsys: pytest.CaptureFixture[str]) -> None:
    """The plumbing of the evaluator on the in-process bus: a consumer that keeps up is
    OK, one that stops while events keep coming is STALL once a full window saw it,
    and then OK again when it catches up; its oldest unconsumed event ages meanwhile.
    A watched group that does not exist is MISSING at once, logged once when a whole
    window saw it missing, and exports no lag."""
    from bgmock_twin.logs import configure_logging

    configure_logging("INFO", "json")
    bus = InMemoryBus()
    producer = bus.producer()
    consumer = bus.consumer("window-group", [TOPIC_FORWARDED])
    monitor = LagMonitor(MemoryLagSource(bus), ["window-group", "window-typo"],
                         window_samples=3)

    def consume_all() -> None:
        while records := consumer.poll(0.05):
            consumer.commit(records)

    producer.produce(TOPIC_FORWARDED, "k", b"{}")
    consume_all()
    monitor.run()
    assert _status_of("window-group") == {"OK"}
    assert _sample("bgmock_kafka_consumer_lag_seconds", group="window-group",
                   topic=TOPIC_FORWARDED) == 0
    # missing at once, but not worth a warning before a whole window saw it missing
    assert _status_of("window-typo") == {"MISSING"}
    assert '"consumer_group_missing"' not in capsys.readouterr().err
    # the consumer stops; events keep arriving
    started = time.monotonic()
    seconds = []
    for i in range(3):
        producer.produce(TOPIC_FORWARDED, "k", b"{}")  # one partition
        due = started + 0.05 * (i + 1)
        wait_for(lambda due=due: time.monotonic() > due, timeout=5,  # type: ignore[misc]
                 interval=0.01, message="the clock moved")
        monitor.run()
        seconds.append(_sample("bgmock_kafka_consumer_lag_seconds", group="window-group",
                               topic=TOPIC_FORWARDED))
        if i < 2:  # the caught-up reading is still in the window
            assert _status_of("window-group") == {"OK"}, i
    assert _status_of("window-group") == {"STALL"}
    assert monitor.states()["window-group"].status is LagStatus.STALL
    assert seconds == sorted(seconds) and 0 < seconds[-1] < time.monotonic() - started + 1
    consume_all()
    monitor.run()
    assert _status_of("window-group") == {"OK"}
    assert _sample("bgmock_kafka_consumer_lag_seconds", group="window-group",
                   topic=TOPIC_FORWARDED) == 0
    # the misnamed group: MISSING on every run, one log line in all
    assert _status_of("window-typo") == {"MISSING"}
    assert _sample("bgmock_kafka_consumer_group_missing", group="window-typo") == 1
    assert _sample("bgmock_kafka_consumer_group_missing", group="window-group") == 0
    assert _sample("bgmock_kafka_consumer_lag_seconds", group="window-typo",
                   topic=TOPIC_FORWARDED) is None
    err = capsys.readouterr().err
    assert err.count('"consumer_group_missing"') == 1, err
    assert "window-typo" in err


# --- a real broker ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def broker(kafka_broker: TansuBroker) -> Iterator[TansuBroker]:
    kafka_broker.create_topics([TOPIC_FORWARDED, TOPIC_COMPLETED])
    yield kafka_broker


def test_kafka_lag_mechanics(broker: TansuBroker) -> None:
    bus = KafkaBus(broker.bootstrap, session_timeout_ms=6000, client_id="lag-test")
    source = KafkaLagSource(broker.bootstrap, timeout=5)
    try:
        producer = bus.producer()
        for i in range(30):
            producer.produce(TOPIC_COMPLETED, f"{i % 3:02d}", b"{}")
        producer.flush(10)
        consumer = bus.consumer("lag-kafka-group", [TOPIC_COMPLETED])
        consumed = 0

        def consume() -> bool:
            nonlocal consumed
            records = consumer.poll(0.5)
            if records:
                consumer.commit(records)
                consumed += len(records)
            return consumed >= 30

        wait_for(consume, timeout=40, interval=0, message="30 records consumed")
        consumer.close()
        committed = source.committed("lag-kafka-group")
        assert sum(committed.values()) == 30  # records, as every client commits them
        assert {t for t, _ in committed} == {TOPIC_COMPLETED}
        assert source.committed("lag-kafka-never-existed") == {}
        monitor = LagMonitor(source, ["lag-kafka-group", "lag-kafka-never-existed"])
        anomalies_before = _sample("bgmock_kafka_consumer_lag_anomalies_total",
                                   group="lag-kafka-group", topic=TOPIC_COMPLETED) or 0
        result = monitor.run()["lag-kafka-group"]
        lag = _sample("bgmock_kafka_consumer_lag", group="lag-kafka-group",
                      topic=TOPIC_COMPLETED)
        assert lag is not None and lag >= 0 and result.lag[TOPIC_COMPLETED] == lag
        highs = source.high_watermarks(sorted(committed))
        over = sum(1 for tp, offset in committed.items() if offset > highs[tp])
        # Tansu counts batches: where the committed offset passes the watermark the
        # partition is clamped to 0 and counted, never reported negative
        assert result.anomalies.get(TOPIC_COMPLETED, 0) == over
        assert (_sample("bgmock_kafka_consumer_lag_anomalies_total", group="lag-kafka-group",
                        topic=TOPIC_COMPLETED) or 0) - anomalies_before == over
        assert _sample("bgmock_kafka_consumer_last_progress_timestamp_seconds",
                       group="lag-kafka-group") is not None
    finally:
        source.close()
        bus.close()


def test_dead_broker_costs_one_bounded_run(broker: TansuBroker) -> None:
    """Kept last in the module: it stops the module's broker (restarted after)."""
    source = KafkaLagSource(broker.bootstrap, timeout=1)
    monitor = LagMonitor(source, ["lag-dead-a", "lag-dead-b"])
    broker.stop()
    try:
        started = time.monotonic()
        assert monitor.run() == {}
        # the first group's failure ends the run: the second is not waited for
        assert time.monotonic() - started < 4
        errors = monitor.status()["groups"]
        assert errors["lag-dead-a"]["error"] and errors["lag-dead-a"]["lag"] is None
        assert errors["lag-dead-b"]["error"] == errors["lag-dead-a"]["error"]
    finally:
        source.close()
        broker.start()
