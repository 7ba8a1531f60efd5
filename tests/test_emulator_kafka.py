"""The emulator over a real Kafka-compatible broker (Tansu): payments both ways with
the right topics, keys, partitions, JSON and ``__TypeId__`` headers, the
Kafka-injected payment quirk, BGMock's consumer groups, and the bus fault."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client import REGISTRY

from bgmock_twin.books.lag import KafkaLagSource, LagMonitor, LagStatus
from bgmock_twin.bus.kafka import KafkaBus
from bgmock_twin.contract import (
    TOPIC_COMPLETED,
    TOPIC_FORWARDED,
    TOPIC_INITIATED,
    TOPIC_PROCESSED,
    OutgoingTransactionEvent,
    Status,
    encode_event,
)
from bgmock_twin.emulator import EmulatorConfig
from bgmock_twin.settings import ReconcileSettings
from tests.support.broker import TansuBroker
from tests.support.emulator_world import World, emulator_world
from tests.support.ports import wait_for
from tests.test_emulator_contract import _check_payment_events, body_of


@pytest.fixture(scope="module")
def kafka_world(kafka_broker: TansuBroker) -> Iterator[World]:
    bus = KafkaBus(kafka_broker.bootstrap, session_timeout_ms=6000, client_id="emu-test",
                   metrics_label="emulator")
    started = time.monotonic()
    # starting creates the topics and joins the six groups
    with emulator_world(EmulatorConfig(host="127.0.0.1", bus=bus,
                                       outbox_interval_seconds=0.1)) as world:
        print(f"emulator on Kafka ready after {time.monotonic() - started:.1f}s")
        yield world


@pytest.mark.parametrize(("source", "dest"), [("01", "02"), ("02", "01")])
def test_payment_over_kafka(kafka_world: World, source: str, dest: str) -> None:
    w = kafka_world
    payer = w.account(source, "200.00")
    payee = w.account(dest, "0.00")
    bankgood = w.mapping(dest, payee)
    tx = w.pay(source, payer, bankgood, Decimal("42.10"))
    assert w.final(source, tx, timeout=30)["status"] == "SUCCESS"
    assert w.balances(source, payer) == (Decimal("157.90"), Decimal("0.00"))
    assert w.balances(dest, payee) == (Decimal("42.10"), Decimal("0.00"))
    _check_payment_events(w, tx, source, dest, payer, bankgood, payee, "42.10")


def test_kafka_injected_payment_over_kafka(kafka_world: World) -> None:
    w = kafka_world
    payer = w.account("02", "50.00")
    payee = w.account("01", "0.00")
    bankgood = w.mapping("01", payee)
    tx = uuid.uuid4()
    value, headers = encode_event(OutgoingTransactionEvent(
        transaction_id=tx, from_clearing_number="02", from_account_number=payer,
        to_bankgood_number=bankgood, amount=Decimal("12.00"), status=Status.PENDING))
    producer = w.bus.producer()
    try:
        producer.produce(TOPIC_INITIATED, "02", value, headers)
        producer.flush(10)
    finally:
        producer.close()
    completed = w.spy.wait(str(tx), TOPIC_COMPLETED, timeout=30)
    assert completed[0].key == b"02" and body_of(completed[0])["status"] == "SUCCESS"
    wait_for(lambda: w.balances("01", payee)[0] == Decimal("12.00"), timeout=10,
             message="destination credited")
    assert w.outgoing("02", str(tx)) is None  # the source bank never heard of it
    assert w.balances("02", payer) == (Decimal("50.00"), Decimal("0.00"))


def test_bgmock_consumer_groups_commit_their_offsets(kafka_world: World,
                                                     kafka_broker: TansuBroker) -> None:
    w = kafka_world
    tx = w.pay("01", w.account("01"), w.mapping("02", w.account("02")), "1")
    assert w.final("01", tx, timeout=30)["status"] == "SUCCESS"
    back = w.pay("02", w.account("02"), w.mapping("01", w.account("01")), "1")
    assert w.final("02", back, timeout=30)["status"] == "SUCCESS"
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    expected = {
        # the real clearing's groups, one per listener (contract corrections)
        "clearing-service-initiated": (TOPIC_INITIATED,),
        "clearing-service-processed": (TOPIC_PROCESSED,),
        "bank-service-forwarded.01": (TOPIC_FORWARDED,),
        "bank-service-forwarded.02": (TOPIC_FORWARDED,),
        "bank-service-completed.01": (TOPIC_COMPLETED,),
        "bank-service-completed.02": (TOPIC_COMPLETED,),
    }

    def committed(group: str, topic: str) -> int:
        request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p)
                                                       for p in range(3)])
        result = admin.list_consumer_group_offsets([request])[group].result(timeout=10)
        return sum(tp.offset for tp in result.topic_partitions if tp.offset > 0)

    for group, topics in expected.items():
        for topic in topics:
            wait_for(lambda g=group, t=topic: committed(g, t) > 0, timeout=10,  # type: ignore[misc]
                     message=f"{group} committed on {topic}")
    # ... and nothing under the name the twin used to watch
    assert committed("clearing-service", TOPIC_INITIATED) == 0

    # The twin's lag job with its default groups finds every one of them on the broker
    # (the clearing's two included); a group the broker does not have is MISSING.
    groups = [*ReconcileSettings().lag_groups, "clearing-service"]
    assert set(groups) == {*expected, "clearing-service"}
    monitor = LagMonitor(KafkaLagSource(kafka_broker.bootstrap, timeout=5), groups)
    try:
        monitor.run()
        states = monitor.states()
    finally:
        monitor.close()
    for group, topics in expected.items():
        state = states[group]
        assert state.error is None and state.committed_offsets, (group, state)
        assert state.status is not LagStatus.MISSING, group
        assert state.lag is not None and set(state.lag) == set(topics), (group, state.lag)
        assert state.lag_seconds is not None and set(state.lag_seconds) == set(topics)
        assert REGISTRY.get_sample_value("bgmock_kafka_consumer_group_missing",
                                         {"group": group}) == 0
        assert REGISTRY.get_sample_value("bgmock_kafka_consumer_group_status",
                                         {"group": group, "status": state.status.value}) == 1
    assert states["clearing-service"].status is LagStatus.MISSING
    assert REGISTRY.get_sample_value("bgmock_kafka_consumer_group_missing",
                                     {"group": "clearing-service"}) == 1


def test_bus_fault_on_kafka_stalls_the_emulator_only(kafka_world: World) -> None:
    w = kafka_world
    payer = w.account("01", "100.00")
    bankgood = w.mapping("02", w.account("02", "0.00"))
    w.emulator.faults.set_bus_down()
    try:
        tx = w.pay("01", payer, bankgood, "5")
        time.sleep(0.5)  # five outbox beats
        assert w.spy.of(tx) == []
        w.bus.check(5)  # the broker itself is fine: only the emulator's clients are cut
        assert w.outgoing("01", tx)["status"] == "PENDING"  # type: ignore[index]
    finally:
        w.emulator.faults.set_bus_down(False)
    assert w.final("01", tx, timeout=30)["status"] == "SUCCESS"
    assert len(w.spy.of(tx, TOPIC_INITIATED)) == 1
