"""Fault: a flood of poison messages on every topic while payments flow.

A real ``bgmock-twin run`` with its embedded emulator on Tansu. A plain Kafka
producer writes thousands of messages that are not valid events (not JSON, not an
object, a missing field, a bad field) to each of the four topics while a
simulation runs. The twin must count every one of them in
``bgmock_kafka_messages_invalid_total{topic,reason}``, skip them, and follow the good
payments as before: the same simulation is measured without and with the flood,
both latencies are printed, and every good payment must still complete within the
SLA (the stated bound; not a timed assertion on a busy machine).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from tests.support.broker import TansuBroker
from tests.support.daemon import Daemon, running_daemon
from tests.support.faultkit import (
    FAST_ENV,
    FLOW,
    SLA,
    assert_accounted,
    lost_race,
    metric_sum,
    service_up,
    start_simulation,
    steps,
    wait_finished,
    wait_provisioned,
)
from tests.support.ports import wait_for

pytestmark = pytest.mark.slow  # started first by make test's workers (conftest)

TOPICS = ("transactions.initiated", "transactions.forwarded", "transactions.processed",
          "transactions.completed")
POISON = {
    "not_json": b"\x00\xff{{ definitely not json",
    "not_object": b'["a", "list"]',
    "missing_field": b'{"status": "SUCCESS", "message": "no id"}',
    "bad_field": b'{"transactionId": "not-a-uuid", "status": "MAYBE", "amount": 1}',
}
PER_KIND = 1500  # per topic: 4 kinds x 4 topics x 1500 = 24,000 poison messages
SIMULATION = {"count": 30, "rate": 10, "direction": "both"}


def measured_run(daemon: Daemon, name: str) -> tuple[dict[str, Any], int]:
    """The run's detail and how many of its payments lost a race at the bank."""
    sim = start_simulation(daemon, name=name, **SIMULATION)
    detail = wait_finished(daemon, sim, timeout=SLA + 20)
    _, rows = assert_accounted(daemon, sim)
    late = [row for row in rows if not lost_race(row) and (
        row["status"] != "success" or set(steps(row)) != set(FLOW)
        or row["durationSeconds"] > SLA)]
    assert not late, late
    return detail, sum(map(lost_race, rows))


def flood(bootstrap: str, done: threading.Event, counts: dict[str, int]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                         "queue.buffering.max.messages": 100_000})
    for _ in range(PER_KIND):
        for topic in TOPICS:
            for key, value in zip(("01", "02", "01", "02"), POISON.values(), strict=True):
                producer.produce(topic, value=value, key=key.encode(),
                                 headers=[("__TypeId__", b"com.example.Poison")])
                counts[topic] += 1
        producer.poll(0)
    assert producer.flush(30) == 0
    done.set()


def test_poison_flood_is_counted_skipped_and_does_not_slow_good_events(
        tmp_path: Path, kafka_broker: TansuBroker) -> None:
    env = {**FAST_ENV, "KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap}
    with running_daemon(tmp_path, **env) as daemon:
        wait_for(lambda: service_up(daemon, "kafka") == 1.0, timeout=15, message="kafka up")
        wait_provisioned(daemon)
        wait_for(lambda: daemon.get("/api/v1/status").json()["payments"]["following"],
                 timeout=15, message="follower positioned")
        quiet, quiet_lost = measured_run(daemon, "without-flood")
        before = {(t, r): daemon.metric("bgmock_kafka_messages_invalid_total", topic=t,
                                        reason=r) or 0.0 for t in TOPICS for r in POISON}

        counts = dict.fromkeys(TOPICS, 0)
        done = threading.Event()
        started = time.monotonic()
        flooder = threading.Thread(target=flood, args=(kafka_broker.bootstrap, done, counts),
                                   daemon=True)
        flooder.start()
        noisy, noisy_lost = measured_run(daemon, "under-flood")
        flooder.join(60)
        assert done.is_set(), "the flood was not written"

        def counted() -> bool:
            return all((daemon.metric("bgmock_kafka_messages_invalid_total", topic=t, reason=r)
                        or 0.0) - before[(t, r)] >= PER_KIND for t in TOPICS for r in POISON)

        wait_for(counted, timeout=60, interval=0.5, message="every poison message counted")
        counted_after = time.monotonic() - started
        for topic in TOPICS:
            for reason in POISON:
                got = (daemon.metric("bgmock_kafka_messages_invalid_total", topic=topic,
                                     reason=reason) or 0.0) - before[(topic, reason)]
                assert got == PER_KIND, (topic, reason, got)  # each once, none missed
        total = sum(counts.values())
        print(f"{total} poison messages, all counted {counted_after:.1f}s after the flood "
              f"began; emulator skipped "
              f"{metric_sum(daemon, 'bgmock_emulator_events_total', result='invalid'):.0f}")
        q, n = quiet["latency"]["total"], noisy["latency"]["total"]
        print(f"good payments end to end: without flood p50 {q['p50']}s p95 {q['p95']}s; "
              f"with flood p50 {n['p50']}s p95 {n['p95']}s "
              f"(x{n['p95'] / q['p95']:.2f}); bound: every one within the {SLA:.0f}s SLA")
        assert q["count"] == SIMULATION["count"] - quiet_lost
        assert n["count"] == SIMULATION["count"] - noisy_lost
        assert n["p95"] <= SLA
        assert daemon.process.poll() is None
