"""The two event transports: the in-process broker's Kafka semantics, and KafkaBus
against a real (Tansu) broker, including what happens when the broker dies."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from prometheus_client import REGISTRY

from bgmock_twin.bus import BusError, EventConsumer, Record
from bgmock_twin.bus.kafka import KafkaBus
from bgmock_twin.bus.memory import InMemoryBus, murmur2, partition_for_key
from tests.support.broker import TansuBroker, running_broker


def _signed(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def _drain(consumer: EventConsumer, count: int, timeout: float = 15.0) -> list[Record]:
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        records.extend(consumer.poll(0.2))
    return records


# --- partitioner ----------------------------------------------------------------------
def test_murmur2_matches_kafka_java_test_vectors() -> None:
    # From Kafka's UtilsTest.testMurmur2: the Java client's partitioner hash.
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for data, expected in cases.items():
        assert _signed(murmur2(data)) == expected, data


# --- in-memory bus ------------------------------------------------------------------------
def test_memory_records_keep_key_partition_offsets_headers_and_timestamp() -> None:
    bus = InMemoryBus()
    producer = bus.producer()
    before = int(time.time() * 1000)
    for i in range(6):
        producer.produce("t", "01", f"v{i}".encode(), {"__TypeId__": b"X"})
    producer.produce("t", "02", b"other")
    producer.flush(1)
    consumer = bus.consumer("g", ["t"])
    records = consumer.poll(1.0)
    by_key = [r for r in records if r.key == b"01"]
    assert [r.value for r in by_key] == [f"v{i}".encode() for i in range(6)]
    assert [r.offset for r in by_key] == list(range(6))
    assert {r.partition for r in by_key} == {partition_for_key(b"01", 3)}
    assert by_key[0].header("__TypeId__") == b"X"
    assert by_key[0].header("missing") is None
    assert all(r.timestamp_ms >= before for r in records)
    other = [r for r in records if r.key == b"02"]
    assert other[0].partition == partition_for_key(b"02", 3)
    assert bus.end_offsets("t")[partition_for_key(b"01", 3)] >= 6


def test_memory_null_keys_go_round_robin_and_max_records_is_honoured() -> None:
    bus = InMemoryBus()
    producer = bus.producer()
    for i in range(9):
        producer.produce("t", None, str(i).encode())
    assert sorted(bus.end_offsets("t").values()) == [3, 3, 3]
    consumer = bus.consumer("g", ["t"])
    first = consumer.poll(0.5, max_records=4)
    assert len(first) == 4
    rest = _drain(consumer, 5, timeout=2)
    assert sorted(r.value for r in first + rest) == [str(i).encode() for i in range(9)]
    assert all(r.key is None for r in first + rest)


def test_memory_group_resumes_from_committed_offset() -> None:
    bus = InMemoryBus()
    producer = bus.producer()
    for i in range(5):
        producer.produce("t", "k", str(i).encode())
    consumer = bus.consumer("g", ["t"])
    records = consumer.poll(0.5)
    assert [r.value for r in records] == [b"0", b"1", b"2", b"3", b"4"]
    consumer.commit(records[:2])
    partition = records[0].partition
    assert bus.committed("g", "t") == {partition: 2}
    consumer.close()
    again = bus.consumer("g", ["t"])
    assert [r.value for r in again.poll(0.5)] == [b"2", b"3", b"4"]
    assert bus.committed("nobody", "t") == {}


def test_memory_new_group_starts_at_latest_when_asked() -> None:
    bus = InMemoryBus()
    producer = bus.producer()
    producer.produce("t", "k", b"old")
    latest = bus.consumer("late", ["t"], from_beginning_if_new=False)
    earliest = bus.consumer("early", ["t"], from_beginning_if_new=True)
    producer.produce("t", "k", b"new")
    assert [r.value for r in latest.poll(0.5)] == [b"new"]
    assert [r.value for r in earliest.poll(0.5)] == [b"old", b"new"]


def test_memory_latest_start_is_committed_so_a_restart_misses_nothing() -> None:
    """A group that read nothing before it stopped resumes where it started, not at a
    later end: what was produced while it was down is read (as Spring Kafka does)."""
    bus = InMemoryBus()
    producer = bus.producer()
    producer.produce("t", "k", b"old")
    for manual in (False, True):
        group = f"g-{manual}"
        consumer = bus.consumer(group, ["t"], from_beginning_if_new=False,
                                manual_assign=manual)
        partition = partition_for_key(b"k", 3)
        assert bus.committed(group, "t") == {0: 0, 1: 0, 2: 0} | {partition: 1}
        assert consumer.poll(0.05) == []
        consumer.close()  # stopped having read nothing
    producer.produce("t", "k", b"while-down")
    for manual in (False, True):
        again = bus.consumer(f"g-{manual}", ["t"], from_beginning_if_new=False,
                             manual_assign=manual)
        assert [r.value for r in again.poll(0.5)] == [b"while-down"]
    # a group that starts at the beginning has nothing to lose: nothing is committed
    bus.consumer("early", ["t"], from_beginning_if_new=True)
    assert bus.committed("early", "t") == {}


def test_memory_every_group_sees_every_record() -> None:
    bus = InMemoryBus()
    groups = [bus.consumer(f"g{i}", ["t"]) for i in range(3)]
    producer = bus.producer()
    for i in range(10):
        producer.produce("t", f"k{i}", str(i).encode())
    for consumer in groups:
        assert sorted(int(r.value or b"") for r in _drain(consumer, 10, 2)) == list(range(10))


def test_memory_group_members_share_partitions_and_rebalance_on_close() -> None:
    bus = InMemoryBus()
    producer = bus.producer()
    first = bus.consumer("g", ["t"])
    second = bus.consumer("g", ["t"])
    for i in range(30):
        producer.produce("t", f"k{i}", str(i).encode())
    a = _drain(first, 1, 1)
    b = _drain(second, 1, 1)
    a += first.poll(0.1)
    b += second.poll(0.1)
    parts_a = {r.partition for r in a}
    parts_b = {r.partition for r in b}
    assert parts_a and parts_b and not parts_a & parts_b
    assert len(a) + len(b) == 30
    first.commit(a)
    # ``second`` leaves without committing: its partitions are redelivered to ``first``.
    second.close()
    redelivered = _drain(first, len(b), 2)
    assert sorted(r.value for r in redelivered) == sorted(r.value for r in b)


def test_memory_manual_assign_takes_every_partition_from_committed_offsets() -> None:
    bus = InMemoryBus()
    producer = bus.producer()
    member = bus.consumer("g", ["t"])
    for i in range(12):
        producer.produce("t", f"k{i}", str(i).encode())
    seen = _drain(member, 12, 2)
    member.commit([r for r in seen if r.partition == 0])
    tracker = bus.consumer("g", ["t"], manual_assign=True)
    assert tracker.assignment_ready()
    rest = _drain(tracker, 12, 0.5)
    assert {r.partition for r in seen} == {0, 1, 2}
    assert {r.partition for r in rest} == {1, 2}
    assert sorted(r.value for r in rest) == sorted(r.value for r in seen if r.partition != 0)
    # A manual consumer is not a member: the subscribed one keeps every partition.
    producer.produce("t", "k0", b"more")
    assert [r.value for r in member.poll(0.5)] == [b"more"]


def test_memory_fault_switch_fails_every_operation_and_wakes_pollers() -> None:
    bus = InMemoryBus()
    producer = bus.producer()
    consumer = bus.consumer("g", ["t"])
    errors: list[Exception] = []

    def blocked_poll() -> None:
        try:
            consumer.poll(30)
        except BusError as exc:
            errors.append(exc)

    poller = threading.Thread(target=blocked_poll)
    poller.start()
    time.sleep(0.1)
    bus.set_available(False)
    poller.join(timeout=5)
    assert not poller.is_alive() and len(errors) == 1
    for operation in (
        lambda: producer.produce("t", "k", b"x"),
        lambda: producer.flush(1),
        lambda: consumer.poll(0.1),
        lambda: bus.check(1),
    ):
        with pytest.raises(BusError):
            operation()
    bus.set_available(True)
    producer.produce("t", "k", b"back")
    bus.check(1)
    records = consumer.poll(1)
    assert [r.value for r in records] == [b"back"]
    bus.set_available(False)
    with pytest.raises(BusError):
        consumer.commit(records)


def test_memory_poll_wakes_on_produce_and_waits_out_an_empty_timeout() -> None:
    bus = InMemoryBus()
    consumer = bus.consumer("g", ["t"])
    start = time.monotonic()
    assert consumer.poll(0.3) == []
    assert time.monotonic() - start >= 0.25
    timer = threading.Timer(0.2, lambda: bus.producer().produce("t", "k", b"late"))
    timer.start()
    try:
        start = time.monotonic()
        records = consumer.poll(20)
        assert [r.value for r in records] == [b"late"]
        assert time.monotonic() - start < 20
    finally:
        timer.cancel()


def test_memory_wakeup_ends_a_waiting_poll_empty_and_loses_nothing() -> None:
    bus = InMemoryBus()
    consumer = bus.consumer("g", ["t"])
    got: list[list[Record]] = []
    poller = threading.Thread(target=lambda: got.append(consumer.poll(60)))
    poller.start()
    wait_until = time.monotonic() + 10
    while poller.is_alive() and time.monotonic() < wait_until:
        consumer.wakeup()  # until the poll is waiting: one before it is spent at once
        poller.join(0.05)
    assert not poller.is_alive(), "wakeup did not end the poll"
    assert got == [[]]
    bus.producer().produce("t", "k", b"after")
    assert [r.value for r in _drain(consumer, 1)] == [b"after"]


def test_memory_retention_trims_the_log_and_lagging_consumers_skip_ahead() -> None:
    bus = InMemoryBus(partitions=1, max_records_per_partition=10)
    consumer = bus.consumer("g", ["t"])
    producer = bus.producer()
    for i in range(30):
        producer.produce("t", "k", str(i).encode())
    records = _drain(consumer, 10, 1)
    assert records[0].offset >= 19  # the oldest were trimmed
    assert records[-1].offset == 29
    assert bus.end_offsets("t") == {0: 30}


def test_memory_closed_consumer_and_bus_raise() -> None:
    bus = InMemoryBus()
    consumer = bus.consumer("g", ["t"])
    consumer.close()
    consumer.close()
    with pytest.raises(BusError):
        consumer.poll(0.1)
    with pytest.raises(ValueError):
        bus.consumer("g", [])
    bus.close()
    with pytest.raises(BusError):
        bus.check(1)


# --- Kafka -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kafka_bus(kafka_broker: TansuBroker) -> Iterator[KafkaBus]:
    bus = KafkaBus(kafka_broker.bootstrap, session_timeout_ms=6000, client_id="test-bus")
    try:
        yield bus
    finally:
        bus.close()


def _topic() -> str:
    return f"test.{uuid.uuid4().hex[:8]}"


def test_kafka_ensure_topics_creates_three_partitions_idempotently(
    kafka_broker: TansuBroker, kafka_bus: KafkaBus
) -> None:
    topic = _topic()
    kafka_bus.ensure_topics([topic])
    kafka_bus.ensure_topics([topic])
    metadata = AdminClient({"bootstrap.servers": kafka_broker.bootstrap}).list_topics(timeout=10)
    assert len(metadata.topics[topic].partitions) == 3
    kafka_bus.check(5)


def test_kafka_produce_manual_assign_commit_and_resume(kafka_bus: KafkaBus) -> None:
    topic = _topic()
    kafka_bus.ensure_topics([topic])
    producer = kafka_bus.producer()
    keys = [f"key-{i}" for i in range(12)] + ["01", "02"]
    for key in keys:
        producer.produce(topic, key, f"value-{key}".encode(), {"__TypeId__": b"com.x.Event"})
    producer.flush(10)
    group = f"g-{uuid.uuid4().hex[:6]}"
    consumer = kafka_bus.consumer(group, [topic], manual_assign=True)
    try:
        assert consumer.assignment_ready()
        records = _drain(consumer, len(keys))
        assert sorted(r.key or b"" for r in records) == sorted(k.encode() for k in keys)
        for record in records:
            # The Java partitioner: the memory bus puts every key where Kafka does.
            assert record.partition == partition_for_key(record.key or b"", 3)
            assert record.value == b"value-" + (record.key or b"")
            assert record.header("__TypeId__") == b"com.x.Event"
            assert record.timestamp_ms > 0
        consumer.commit(records)
    finally:
        consumer.close()
    producer.produce(topic, "01", b"after-commit")
    producer.flush(10)
    resumed = kafka_bus.consumer(group, [topic], manual_assign=True)
    try:
        assert [r.value for r in _drain(resumed, 1)] == [b"after-commit"]
        assert resumed.poll(0.5) == []
    finally:
        resumed.close()
    producer.close()


def test_kafka_new_manual_consumer_at_latest_skips_history(kafka_bus: KafkaBus) -> None:
    topic = _topic()
    kafka_bus.ensure_topics([topic])
    producer = kafka_bus.producer()
    producer.produce(topic, "k", b"history")
    producer.flush(10)
    consumer = kafka_bus.consumer(f"g-{uuid.uuid4().hex[:6]}", [topic], manual_assign=True,
                                  from_beginning_if_new=False)
    try:
        consumer.poll(1.0)  # let the "latest" positions resolve
        producer.produce(topic, "k", b"fresh")
        producer.flush(10)
        assert [r.value for r in _drain(consumer, 1)] == [b"fresh"]
    finally:
        consumer.close()
        producer.close()


def test_kafka_latest_start_is_committed_so_a_restart_misses_nothing(
    kafka_bus: KafkaBus,
) -> None:
    """A twin (manual assignment) or a service (group member) that read nothing
    before it stopped resumes where it started: the records produced while it was
    down are read, not skipped by a second "latest"."""
    topic = _topic()
    kafka_bus.ensure_topics([topic])
    producer = kafka_bus.producer()
    producer.produce(topic, "k", b"history")
    producer.flush(10)
    groups = {manual: f"g-{uuid.uuid4().hex[:6]}" for manual in (True, False)}
    try:
        for manual, group in groups.items():
            consumer = kafka_bus.consumer(group, [topic], manual_assign=manual,
                                          from_beginning_if_new=False)
            try:
                # positioned (a new group member waits for its first assignment)
                deadline = time.monotonic() + 20
                while not consumer.assignment_ready() and time.monotonic() < deadline:
                    assert consumer.poll(0.2) == []
                assert consumer.assignment_ready()
                assert consumer.poll(0.2) == []
            finally:
                consumer.close()  # stopped having read nothing
        producer.produce(topic, "k", b"while-down")
        producer.flush(10)
        for manual, group in groups.items():
            again = kafka_bus.consumer(group, [topic], manual_assign=manual,
                                       from_beginning_if_new=False)
            try:
                assert [r.value for r in _drain(again, 1, timeout=20)] == [b"while-down"]
            finally:
                again.close()
    finally:
        producer.close()


def test_kafka_group_subscription_gets_assigned_and_commits(kafka_bus: KafkaBus) -> None:
    topics = [_topic(), _topic()]
    kafka_bus.ensure_topics(topics)
    producer = kafka_bus.producer()
    for topic in topics:
        for i in range(3):
            producer.produce(topic, f"k{i}", f"{topic}-{i}".encode())
    producer.flush(10)
    group = f"g-{uuid.uuid4().hex[:6]}"
    consumer = kafka_bus.consumer(group, topics)
    try:
        records = _drain(consumer, 6, timeout=20)
        assert consumer.assignment_ready()
        assert sorted(r.value for r in records) == sorted(
            f"{t}-{i}".encode() for t in topics for i in range(3))
        consumer.commit(records)
    finally:
        consumer.close()
    # The committed offsets are the group's: a manual consumer of the group starts after them.
    producer.produce(topics[0], "k0", b"later")
    producer.flush(10)
    tracker = kafka_bus.consumer(group, topics, manual_assign=True)
    try:
        assert [r.value for r in _drain(tracker, 1)] == [b"later"]
    finally:
        tracker.close()
        producer.close()


@pytest.fixture
def doomed_broker(component_logs: Path) -> Iterator[TansuBroker]:
    """A broker of its own for the test that kills it (kafka_broker is shared)."""
    with running_broker(component_logs) as broker:
        yield broker


def test_kafka_operations_raise_bus_error_when_the_broker_is_gone(
    doomed_broker: TansuBroker,
) -> None:
    bus = KafkaBus(doomed_broker.bootstrap, session_timeout_ms=6000, message_timeout_ms=3000,
                   metrics_label="test")
    topic = _topic()
    bus.ensure_topics([topic])
    producer = bus.producer()
    consumer = bus.consumer("g-doomed", [topic], manual_assign=True)
    try:
        producer.produce(topic, "k", b"ok")
        producer.flush(10)
        assert len(_drain(consumer, 1)) == 1
        doomed_broker.stop()
        with pytest.raises(BusError):
            bus.check(1.0)
        with pytest.raises(BusError):
            producer.produce(topic, "k", b"lost")
            producer.flush(2.0)
        with pytest.raises(BusError):
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                consumer.poll(0.3)
        counted = REGISTRY.get_sample_value(
            "bgmock_kafka_client_errors_total", {"client": "test_consumer", "reason": "transport"})
        assert counted is not None and counted > 0
    finally:
        consumer.close()
        producer.close()
        bus.close()
