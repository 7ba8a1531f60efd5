"""The Kafka follower against the in-process broker: events shaped as the real
services write them, poison messages on every topic, commits only after the ledger
stored what they changed, foreign events counted not tracked, and events that
overtake the source bank's 202."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from bgmock_twin import metrics
from bgmock_twin.bus.memory import InMemoryBus, partition_for_key
from bgmock_twin.contract import (
    TOPIC_COMPLETED,
    TOPIC_FORWARDED,
    TOPIC_INITIATED,
    TOPIC_PROCESSED,
    TOPICS,
    TYPE_ID_HEADER,
)
from bgmock_twin.tracking.follower import Follower
from bgmock_twin.tracking.ledger import Ledger
from bgmock_twin.tracking.lifecycle import Channel, Kind, Outcome, Payment, Route, Step
from bgmock_twin.tracking.tracker import Tracker
from tests.support.ports import wait_for

GROUP = "twin-test-follower"


def sample(name: str, labels: dict[str, str]) -> float:
    return float(REGISTRY.get_sample_value(name, labels) or 0.0)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[InMemoryBus, Tracker, Ledger, Follower]]:
    bus = InMemoryBus()
    bus.ensure_topics(list(TOPICS))
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", flush_interval=0.02)
    assert ledger.open()
    ledger.start()
    tracker = Tracker(ledger, step_deadline=10, sla=30, park_seconds=0.5)
    follower = Follower(bus, GROUP, tracker, ledger, poll_timeout=0.05)
    follower.start()
    wait_for(follower.ready, timeout=5, message="follower positioned")
    try:
        yield bus, tracker, ledger, follower
    finally:
        follower.stop(2)
        ledger.stop(2)
        ledger.close()
        bus.close()


def kafka_payment(transaction_id: uuid.UUID) -> Payment:
    return Payment(
        payment_id=str(uuid.uuid4()), channel=Channel.KAFKA, route=Route.A_TO_B,
        kind=Kind.NORMAL, from_clearing="01", from_account="TWIN-A-001",
        to_bankgood="TWIN-BG-B-001", to_clearing="02", to_account="TWIN-B-001",
        amount=Decimal("25.00"), intended_at=datetime.now(UTC),
        intended_mono=time.monotonic(), transaction_id=transaction_id,
    )


def produce(bus: InMemoryBus, topic: str, key: str | None, body: bytes | str,
            type_id: str | None = None) -> None:
    value = body.encode() if isinstance(body, str) else body
    headers = {TYPE_ID_HEADER: type_id.encode()} if type_id else None
    bus.producer().produce(topic, key, value, headers)


def test_events_as_the_real_services_write_them_are_all_understood(
    world: tuple[InMemoryBus, Tracker, Ledger, Follower],
) -> None:
    bus, tracker, ledger, _ = world
    tx = uuid.uuid4()
    payment = kafka_payment(tx)
    tracker.register(payment)
    # initiated: ISO dates with micros, an unknown field, Spring's type header
    produce(bus, TOPIC_INITIATED, "01", json.dumps({
        "transactionId": str(tx), "fromClearingNumber": "01", "fromAccountNumber": "TWIN-A-001",
        "toBankgoodNumber": "TWIN-BG-B-001", "amount": 25.00, "status": "PENDING",
        "createdAt": "2025-11-20T10:15:30.123456", "updatedAt": None, "extra": {"x": 1},
    }), "com.bankgood.bank.event.OutgoingTransactionEvent")
    # forwarded: array dates with trailing zero parts dropped, amount as integer
    produce(bus, TOPIC_FORWARDED, "02", json.dumps({
        "transactionId": str(tx), "toClearingNumber": "02", "toAccountNumber": "TWIN-B-001",
        "amount": 25, "status": "PENDING", "createdAt": [2025, 11, 20, 10, 15],
        "updatedAt": [2025, 11, 20, 10, 15, 30, 123456000], "version": 3,
    }), "com.bankgood.clearing.event.IncomingTransactionEvent")
    produce(bus, TOPIC_PROCESSED, "02", json.dumps({
        "transactionId": str(tx), "status": "SUCCESS", "message": None, "processedBy": "B"}),
        "com.bankgood.bank.event.TransactionResponseEvent")
    completed = json.dumps({"transactionId": str(tx), "status": "SUCCESS",
                            "message": "Transaction completed"})
    produce(bus, TOPIC_COMPLETED, "01", completed)
    produce(bus, TOPIC_COMPLETED, "01", completed)  # at-least-once: a repeat
    wait_for(lambda: (p := tracker.get(str(tx))) is not None and p.finished, timeout=5,
             message="payment finished")
    followed = tracker.get(payment.payment_id)
    assert followed is not None and followed.outcome is Outcome.SUCCESS
    assert set(followed.steps) == {Step.INITIATED, Step.FORWARDED, Step.PROCESSED,
                                   Step.COMPLETED}
    assert tracker.counted[("kafka", "a_to_b", "success")] == 1  # the repeat is not counted
    events = tracker.events(10)
    assert [e["topic"] for e in events][:2] == [TOPIC_COMPLETED, TOPIC_COMPLETED]
    assert all(e["origin"] == "twin" for e in events)
    assert ledger.flush(5)
    row = ledger.get(str(tx))
    assert row is not None and row.outcome == "success"


def test_poison_on_every_topic_is_counted_logged_and_skipped(
    world: tuple[InMemoryBus, Tracker, Ledger, Follower],
) -> None:
    bus, tracker, _ledger, follower = world
    poison = {
        "not_json": b"\x00\xff not json",
        "not_object": b"[1, 2, 3]",
        "missing_field": b'{"status": "SUCCESS"}',
        "bad_field": b'{"transactionId": "not-a-uuid", "status": "SUCCESS", "amount": 1}',
    }
    before = {(t, r): sample("bgmock_kafka_messages_invalid_total", {"topic": t, "reason": r})
              for t in TOPICS for r in poison}
    foreign_before = sample("bgmock_kafka_messages_total",
                            {"topic": TOPIC_COMPLETED, "status": "FAILED", "origin": "foreign"})
    for topic in TOPICS:
        for body in poison.values():
            produce(bus, topic, "01", body)
        bus.producer().produce(topic, "01", b"", None)  # an empty value is not JSON either
    foreign = uuid.uuid4()
    produce(bus, TOPIC_COMPLETED, "01",
            json.dumps({"transactionId": str(foreign), "status": "FAILED"}))
    wait_for(lambda: follower.invalid_seen >= 4 * 5, timeout=5, message="poison consumed")
    wait_for(lambda: sample("bgmock_kafka_messages_total", {
        "topic": TOPIC_COMPLETED, "status": "FAILED", "origin": "foreign"}) > foreign_before,
        timeout=5, message="the valid event after the poison")
    for topic in TOPICS:
        for reason in poison:
            after = sample("bgmock_kafka_messages_invalid_total", {"topic": topic, "reason": reason})
            expected = 2 if reason == "not_json" else 1
            assert after - before[(topic, reason)] == expected, (topic, reason)
    invalid = tracker.events(100, origin="invalid")
    assert len(invalid) == 20 and {e["reason"] for e in invalid} >= set(poison)
    assert tracker.get(str(foreign)) is None  # foreign payments are counted, not tracked
    assert follower.alive


def test_offsets_are_committed_only_after_the_ledger_stored_the_change(
    world: tuple[InMemoryBus, Tracker, Ledger, Follower], tmp_path: Path,
) -> None:
    bus, tracker, ledger, follower = world
    tx = uuid.uuid4()
    tracker.register(kafka_payment(tx))
    assert ledger.flush(5)
    body = json.dumps({"transactionId": str(tx), "fromClearingNumber": "01",
                       "toBankgoodNumber": "TWIN-BG-B-001", "amount": 25, "status": "PENDING"})
    # a new group's start ("latest", before any record) is committed at assignment
    # so that a restart resumes there; it covers no record
    start = bus.committed(GROUP, TOPIC_INITIATED)
    assert start == {0: 0, 1: 0, 2: 0}
    # the ledger's database goes away: the follower must not commit what it read
    errors_before = metrics.LEDGER_WRITE_ERRORS._value.get()
    original = ledger.engine
    ledger.engine = sa.create_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    try:
        produce(bus, TOPIC_INITIATED, "01", body)
        wait_for(lambda: Step.INITIATED in (tracker.get(str(tx)) or kafka_payment(tx)).steps,
                 timeout=5, message="event applied in memory")
        wait_for(lambda: metrics.LEDGER_WRITE_ERRORS._value.get() > errors_before, timeout=5)
        assert bus.committed(GROUP, TOPIC_INITIATED) == start
    finally:
        ledger.engine = original
    assert ledger.flush(10)
    after = start | {partition_for_key(b"01", 3): 1}
    wait_for(lambda: bus.committed(GROUP, TOPIC_INITIATED) == after, timeout=5,
             message="commit after the ledger recovered")
    assert follower.alive


def test_events_that_overtake_the_202_are_parked_then_applied(
    world: tuple[InMemoryBus, Tracker, Ledger, Follower],
) -> None:
    bus, tracker, _ledger, _ = world
    payment = kafka_payment(uuid.uuid4())
    payment.channel = Channel.REST
    payment.transaction_id = None
    tracker.register(payment)
    tracker.begin_submit()
    bank_id = uuid.uuid4()
    produce(bus, TOPIC_INITIATED, "01", json.dumps({
        "transactionId": str(bank_id), "fromClearingNumber": "01", "amount": 25,
        "toBankgoodNumber": "TWIN-BG-B-001", "status": "PENDING"}))
    wait_for(lambda: tracker.counts().parked_events == 1, timeout=5, message="parked")
    tracker.accepted(payment.payment_id, bank_id)
    tracker.end_submit()
    followed = tracker.get(str(bank_id))
    assert followed is not None
    assert set(followed.steps) == {Step.ACCEPTED, Step.INITIATED}
    assert tracker.counts().parked_events == 0
    # an unknown id while a submission is pending is classified foreign after a while
    tracker.begin_submit()
    stranger = uuid.uuid4()
    produce(bus, TOPIC_FORWARDED, "02", json.dumps({
        "transactionId": str(stranger), "amount": 3, "toClearingNumber": "02"}))
    wait_for(lambda: tracker.counts().parked_events == 1, timeout=5)
    wait_for(lambda: tracker.counts().parked_events == 0, timeout=5, message="expired")
    tracker.end_submit()
    assert tracker.events(10, origin="foreign")[0]["transactionId"] == str(stranger)


def test_a_broker_outage_is_survived(
    world: tuple[InMemoryBus, Tracker, Ledger, Follower],
) -> None:
    bus, tracker, _ledger, follower = world
    bus.set_available(False)
    wait_for(lambda: not follower.connected, timeout=5, message="outage noticed")
    tx = uuid.uuid4()
    tracker.register(kafka_payment(tx))
    bus.set_available(True)
    produce(bus, TOPIC_INITIATED, "01", json.dumps({
        "transactionId": str(tx), "fromClearingNumber": "01", "amount": 25,
        "toBankgoodNumber": "TWIN-BG-B-001", "status": "PENDING"}))
    wait_for(lambda: Step.INITIATED in (tracker.get(str(tx)) or kafka_payment(tx)).steps,
             timeout=5, message="following again")
    assert follower.alive and follower.connected



def test_a_stop_wakes_an_idle_followers_poll_and_an_idle_ledger_writer(
    tmp_path: Path,
) -> None:
    """Idle, the follower waits in a long poll and the ledger's writer until a write
    comes; a write is still stored, and a stop ends both without waiting out the poll."""
    bus = InMemoryBus()
    bus.ensure_topics(list(TOPICS))
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", flush_interval=0.02)
    assert ledger.open()
    ledger.start()
    tracker = Tracker(ledger, step_deadline=10, sla=30)
    follower = Follower(bus, GROUP, tracker, ledger, poll_timeout=120)
    follower.start()
    try:
        wait_for(follower.ready, timeout=5, message="follower positioned")
        tx = uuid.uuid4()
        tracker.register(kafka_payment(tx))  # a write to the idle ledger
        assert ledger.flush(10)
        produce(bus, TOPIC_INITIATED, "01", json.dumps({
            "transactionId": str(tx), "fromClearingNumber": "01", "amount": 25,
            "toBankgoodNumber": "TWIN-BG-B-001", "status": "PENDING"}))
        wait_for(lambda: Step.INITIATED in (tracker.get(str(tx)) or kafka_payment(tx)).steps,
                 timeout=5, message="followed")
        seq = ledger.last_seq
        wait_for(lambda: ledger.durable_seq >= seq, timeout=5,
                 message="the step stored without a flush asked")
    finally:
        follower.stop(20)
        ledger.stop(20)
        ledger.close()
        bus.close()
    assert not follower.alive, "the stop waited for the 120 s poll"
    assert not ledger.alive
