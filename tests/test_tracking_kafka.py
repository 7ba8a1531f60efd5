"""Tracking over a real Kafka broker (Tansu) with the embedded emulator on it and the
ledger on PostgreSQL: a small simulation over both channels and directions, and
poison messages written straight to every topic by a plain Kafka producer."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from bgmock_twin.bus.kafka import KafkaBus
from bgmock_twin.clients.bgmock import BGMockClients
from bgmock_twin.contract import TOPICS, Status
from bgmock_twin.emulator import EmbeddedBGMock, EmulatorConfig
from bgmock_twin.scheduler import JobScheduler
from bgmock_twin.settings import load_settings
from bgmock_twin.tracking.ledger import PaymentQuery
from bgmock_twin.tracking.lifecycle import Channel, Outcome
from bgmock_twin.tracking.service import Tracking
from bgmock_twin.tracking.simulations import SimulationSpec
from tests.support.broker import TansuBroker
from tests.support.ports import wait_for
from tests.support.postgres import PostgresServer
from tests.support.twins import await_tracking, stop_tracking


@dataclass
class World:
    broker: TansuBroker
    bus: KafkaBus
    emulator: EmbeddedBGMock
    clients: BGMockClients
    tracking: Tracking


@pytest.fixture(scope="module")
def world(kafka_broker: TansuBroker, postgres: PostgresServer) -> Iterator[World]:
    kafka_broker.create_topics(list(TOPICS))
    bus = KafkaBus(kafka_broker.bootstrap, session_timeout_ms=6000)
    emulator = EmbeddedBGMock(EmulatorConfig(
        host="127.0.0.1", bus=bus, db_urls={"bank_a": None, "bank_b": None, "clearing": None},
        outbox_interval_seconds=0.1,
    ))
    emulator.start()
    clients = BGMockClients.build(dict(emulator.urls), timeout=5)
    settings = load_settings(  # the ledger on PostgreSQL, as in production
        instance_id=f"k{uuid.uuid4().hex[:8]}", twin_database_url=postgres.create_database(),
        kafka_group_id="twin-kafka-test", load_rate_per_second=0, step_deadline_seconds=10,
        payment_sla_seconds=60, max_in_flight_requests=16,
    )
    scheduler = JobScheduler()
    scheduler.start()
    tracking = Tracking(settings.tracking, clients, bus)
    tracking.start()
    scheduler.add(tracking.jobs())
    try:
        await_tracking(tracking, timeout=20)
        yield World(kafka_broker, bus, emulator, clients, tracking)
    finally:
        stop_tracking(tracking, scheduler)
        clients.close()
        emulator.stop()
        bus.close()


def sample(name: str, **labels: str) -> float:
    return float(REGISTRY.get_sample_value(name, labels) or 0.0)


def spec(**values: Any) -> SimulationSpec:
    from decimal import Decimal

    return SimulationSpec(amount_min=Decimal("1.00"), amount_max=Decimal("20.00"), **values)


def test_a_small_simulation_over_real_kafka_accounts_for_every_payment(world: World) -> None:
    tracking = world.tracking
    rest = tracking.simulations.create(spec(count=30, rate=15, failure_share=0.2))
    kafka = tracking.simulations.create(spec(count=16, rate=15, channel=Channel.KAFKA,
                                             failure_share=0.25))
    def finished(simulation_id: str) -> bool:
        current = tracking.simulations.get_sim(simulation_id)
        return current is not None and current.state == "finished"

    for sim in (rest, kafka):
        wait_for(lambda s=sim.simulation_id: finished(s), timeout=60, interval=0.2,  # type: ignore[misc]
                 message=f"{sim.spec.channel} simulation")
        detail = tracking.simulations.detail(sim)
        rows = tracking.ledger.query(PaymentQuery(simulation_id=sim.simulation_id, limit=1000))
        assert detail.progress.dispatched + detail.progress.dropped == sim.spec.count
        assert len(rows) == detail.progress.dispatched
        outcomes = Counter(r.outcome for r in rows)
        assert sum(detail.outcomes.values()) == len(rows)
        assert detail.outcomes["stuck"] == 0
        print(f"{sim.spec.channel.value} over Tansu: {dict(outcomes)} "
              f"latency={detail.latency.total}")
        for row in rows:
            if row.transaction_id is None:
                # the bank's 500: its versioned write on the payer lost a race with a
                # credit or settlement of the same account (BGMock's optimistic lock)
                assert row.channel == "rest" and row.outcome == "rejected", row
                assert not row.refusal_ambiguous, row
                assert (row.message or "").endswith(": http_500"), row
                continue
            tx = uuid.UUID(row.transaction_id)
            expected = Status.SUCCESS if row.outcome == "success" else Status.FAILED
            at_clearing = world.clients.clearing.get_transaction(tx)
            if row.outcome == "rejected":
                assert row.kind == "insufficient_funds" and at_clearing is None
                continue
            assert row.kind == "normal" or row.outcome == "failed", row
            assert at_clearing is not None and at_clearing.status is expected, row
            if row.channel == "rest":
                source = world.clients.bank(row.from_clearing).get_outgoing(tx)
                assert source is not None and source.status is expected


def test_poison_messages_on_every_topic_are_skipped_and_counted(world: World) -> None:
    poison = [b"\x00\x01 binary", b"[]", b'{"transactionId": null, "status": "SUCCESS"}',
              b'{"transactionId": "1", "status": "MAYBE", "amount": 1}']
    reasons = ["not_json", "not_object", "missing_field", "bad_field"]
    before = {(t, r): sample("bgmock_kafka_messages_invalid_total", topic=t, reason=r)
              for t in TOPICS for r in reasons}
    producer = Producer({"bootstrap.servers": world.broker.bootstrap})
    for topic in TOPICS:
        for value in poison:
            producer.produce(topic, value=value, key=b"01",
                             headers=[("__TypeId__", b"com.example.Poison")])
    assert producer.flush(10) == 0

    def all_counted() -> bool:
        return all(sample("bgmock_kafka_messages_invalid_total", topic=t, reason=r)
                   - before[(t, r)] >= 1 for t in TOPICS for r in reasons)

    wait_for(all_counted, timeout=20, message="every poison counted")
    for topic in TOPICS:
        for reason in reasons:
            assert sample("bgmock_kafka_messages_invalid_total", topic=topic, reason=reason) \
                - before[(topic, reason)] == 1, (topic, reason)
    # the follower kept going: a payment sent after the poison is followed to the end
    payment = world.tracking.submit_one(from_bank="a")
    wait_for(lambda: (p := world.tracking.tracker.get(payment.payment_id)) is not None
             and p.finished, timeout=30, message="payment after poison")
    followed = world.tracking.tracker.get(payment.payment_id)
    assert followed is not None and followed.outcome is Outcome.SUCCESS
    assert world.tracking.follower.alive

