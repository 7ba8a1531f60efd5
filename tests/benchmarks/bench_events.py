"""Event processing: Kafka events decoded and correlated per second on one core.

A Tansu broker is pre-filled with N events shaped exactly as the emulated services
write them (``transactions.initiated`` with null dates and the bank's key,
``forwarded`` with Jackson array dates, ``processed``/``completed`` responses), four
per payment: most belong to payments the twin registered (half REST, half Kafka
channel), the rest are foreign. The twin's real ``Follower`` (consumer poll →
``decode_event`` → ``Tracker.on_event`` → ledger write → offset commit after the
ledger stored it) then reads them from the beginning with this whole process pinned
to one CPU. The end is detected by count (Tansu's watermarks count batches, not
records). Figures: events/s while following, events per CPU second, and the rate
until the ledger had stored every change; plus the decode + correlate path alone
(no Kafka client) for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from bgmock_twin.bus.base import EventConsumer, EventProducer, Record
from bgmock_twin.bus.kafka import KafkaBus
from bgmock_twin.contract import (
    TOPIC_COMPLETED,
    TOPIC_FORWARDED,
    TOPIC_INITIATED,
    TOPIC_PROCESSED,
    TOPICS,
    IncomingTransactionEvent,
    OutgoingTransactionEvent,
    Status,
    TransactionResponseEvent,
    encode_event,
)
from bgmock_twin.logs import configure_logging
from bgmock_twin.tracking.follower import Follower
from bgmock_twin.tracking.ledger import Ledger
from bgmock_twin.tracking.lifecycle import Channel, Kind, Outcome, Payment, Route
from bgmock_twin.tracking.poller import StatusPoller
from bgmock_twin.tracking.tracker import Tracker
from bgmock_twin.workers import tune_gc
from tests.benchmarks.common import (
    Reporter,
    Result,
    arguments,
    banner,
    own_cpu_seconds,
)
from tests.support.broker import TansuBroker

TARGET = 20_000.0
CPU_TARGET = 50_000.0
TWIN_SHARE = 0.8
GROUP = "bench-events"


@dataclass
class Flow:
    """One payment's four events as the services write them."""

    transaction_id: uuid.UUID
    payment: Payment | None  # None: a foreign payment
    records: list[tuple[str, str, bytes, dict[str, bytes]]]


def make_flows(count: int, rng: random.Random) -> list[Flow]:
    flows = []
    now = datetime.now(UTC).replace(tzinfo=None)
    for i in range(count):
        tx = uuid.uuid4()
        a_to_b = rng.random() < 0.5
        route = Route.A_TO_B if a_to_b else Route.B_TO_A
        source, destination = route.source.clearing_number, route.destination.clearing_number
        letter, other = ("A", "B") if a_to_b else ("B", "A")
        payer = f"TWIN-{letter}-{rng.randint(1, 4):03d}"
        payee_n = rng.randint(1, 4)
        amount = Decimal(rng.randint(100, 5000)) / 100
        events = [
            (TOPIC_INITIATED, source, OutgoingTransactionEvent(
                tx, source, payer, f"TWIN-BG-{other}-{payee_n:03d}", amount, Status.PENDING),
             "null"),
            (TOPIC_FORWARDED, destination, IncomingTransactionEvent(
                tx, destination, f"TWIN-{other}-{payee_n:03d}", amount, Status.PENDING,
                now, now), "array"),
            (TOPIC_PROCESSED, destination,
             TransactionResponseEvent(tx, Status.SUCCESS, "Transaction processed"), "null"),
            (TOPIC_COMPLETED, source,
             TransactionResponseEvent(tx, Status.SUCCESS, "Transaction processed"), "null"),
        ]
        records = []
        for topic, key, event, dates in events:
            value, headers = encode_event(event, dates=dates)  # type: ignore[arg-type]
            records.append((topic, key, value, headers))
        payment = None
        if rng.random() < TWIN_SHARE:
            channel = Channel.REST if i % 2 == 0 else Channel.KAFKA
            payment = Payment(
                payment_id=str(uuid.uuid4()), channel=channel,
                route=Route.A_TO_B if a_to_b else Route.B_TO_A, kind=Kind.NORMAL,
                from_clearing=source, from_account=payer,
                to_bankgood=f"TWIN-BG-{other}-{payee_n:03d}", to_clearing=destination,
                to_account=f"TWIN-{other}-{payee_n:03d}", amount=amount,
                intended_at=datetime.now(UTC), intended_mono=time.monotonic(),
                instance_id="bench", transaction_id=tx if channel is Channel.KAFKA else None,
            )
        flows.append(Flow(tx, payment, records))
    return flows


def register(tracker: Tracker, flows: Sequence[Flow]) -> None:
    """What the sender did before the events came: register (and for REST, the 202)."""
    for flow in flows:
        payment = flow.payment
        if payment is None:
            continue
        tracker.register(payment)
        if payment.channel is Channel.REST:
            tracker.accepted(payment.payment_id, flow.transaction_id)


def produce(producer: EventProducer, flows: Sequence[Flow], chunk: int = 2000) -> None:
    """Payments interleave as in production: a chunk's initiated events, then their
    forwarded events, and so on."""
    for start in range(0, len(flows), chunk):
        part = flows[start:start + chunk]
        for step in range(4):
            for flow in part:
                topic, key, value, headers = flow.records[step]
                producer.produce(topic, key, value, headers)
        producer.flush(60)


class _OneConsumerBus:
    """Hands the follower a consumer positioned at the start of the pre-filled topics
    (a twin restarting with a backlog); everything else is the real Kafka bus."""

    def __init__(self, bus: KafkaBus, consumer: EventConsumer) -> None:
        self._bus = bus
        self._consumer = consumer
        self.name = bus.name
        self.poll_seconds = bus.poll_seconds

    def consumer(self, group_id: str, topics: Sequence[str], **_kwargs: Any) -> EventConsumer:
        return self._consumer

    def producer(self) -> EventProducer:
        return self._bus.producer()

    def ensure_topics(self, topics: Sequence[str], partitions: int = 3) -> None:
        self._bus.ensure_topics(topics, partitions)

    def check(self, timeout: float) -> None:
        self._bus.check(timeout)

    def close(self) -> None:
        self._bus.close()


def pin_to_one_cpu() -> int:
    """Pin every thread of this process (and every thread started later) to one CPU."""
    cpu = max(os.sched_getaffinity(0))
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), {cpu})
    return cpu


def tracker_and_ledger(workdir: Path, name: str,
                       writer: bool = True) -> tuple[Tracker, Ledger]:
    ledger = Ledger(f"sqlite:///{workdir}/{name}.db", buffer_size=100_000)
    assert ledger.open()
    if writer:
        ledger.start()
    tracker = Tracker(ledger, step_deadline=10, sla=30, park_seconds=7)
    tracker.subscribe(StatusPoller(lambda _pid, _purpose: None).on_step)  # type: ignore[arg-type,return-value]
    return tracker, ledger


def check_correlated(tracker: Tracker, flows: Sequence[Flow]) -> str:
    """Proof the events were really followed: every twin Kafka-channel payment was
    counted a success (finished ones leave the tracker's memory after 10,000, so the
    outcome counter is the witness) and every REST one, still waiting for its settled
    status, reached ``completed``."""
    kafka = sum(1 for f in flows if f.payment and f.payment.channel is Channel.KAFKA)
    rest = [f.payment for f in flows if f.payment and f.payment.channel is Channel.REST]
    succeeded = sum(n for (channel, _route, outcome), n in tracker.counted.items()
                    if channel == Channel.KAFKA.value and outcome == Outcome.SUCCESS.value)
    completed = sum(1 for p in rest if (t := tracker.get(p.payment_id)) and
                    t.state == "completed")
    if succeeded != kafka or completed != len(rest):
        raise AssertionError(f"not every payment was followed: kafka {succeeded}/{kafka}, "
                             f"rest {completed}/{len(rest)}")
    return (f"{kafka} kafka-channel payments succeeded, {len(rest)} rest payments "
            f"completed, in flight {tracker.counts().in_flight}")


def decode_and_correlate_only(workdir: Path, flows: Sequence[Flow]) -> tuple[float, float]:
    """The same records from memory through the follower's handler (decode_event,
    Tracker.on_event, metrics, the ledger's buffer); the ledger's writer starts only
    afterwards, so neither the Kafka client nor SQLite is in the figure."""
    tracker, ledger = tracker_and_ledger(workdir, "inproc", writer=False)
    try:
        register(tracker, flows)
        follower = Follower(_NoBus(), GROUP, tracker, ledger)  # type: ignore[arg-type]
        records = []
        for step in range(4):
            for i, flow in enumerate(flows):
                topic, key, value, headers = flow.records[step]
                records.append(Record(topic, i % 3, i, key.encode(), value,
                                      tuple(headers.items())))
        cpu0, t0 = own_cpu_seconds(), time.monotonic()
        for start in range(0, len(records), 500):  # as the follower's polls hand them over
            follower.handle(records[start:start + 500])
            tracker.expire_parked()
        cpu1, t1 = own_cpu_seconds(), time.monotonic()
        check_correlated(tracker, flows)
        ledger.start()
        return len(records) / (t1 - t0), len(records) / max(cpu1 - cpu0, 1e-9)
    finally:
        ledger.stop(30)
        ledger.close()


class _NoBus:
    name = "none"
    poll_seconds = 0.2


@dataclass
class Followed:
    events: int
    wall: float        # until the follower had seen every event
    cpu: float         # CPU seconds of this process meanwhile (every thread)
    persisted: float   # until the ledger had stored every change
    proof: str
    invalid: int

    @property
    def per_cpu_second(self) -> float:
        return self.events / max(self.cpu, 1e-9)


def follow(reporter: Reporter, bus: KafkaBus, workdir: Path, flows: Sequence[Flow],
           events: int, group: str) -> Followed:
    """The real follower from the start of the pre-filled topics, pinned to one CPU."""
    cpu = pin_to_one_cpu()
    tune_gc()  # as the daemon does at start-up
    tracker, ledger = tracker_and_ledger(workdir, group)
    register(tracker, flows)
    ledger.flush(60)
    consumer = bus.consumer(group, list(TOPICS), manual_assign=True, from_beginning_if_new=True)
    follower = Follower(_OneConsumerBus(bus, consumer), group, tracker, ledger)
    reporter.note(f"following from the beginning on CPU {cpu} ({group})")
    cpu0, t0 = own_cpu_seconds(), time.monotonic()
    follower.start()
    deadline = t0 + 600
    while follower.records_seen < events:
        if time.monotonic() > deadline:
            raise TimeoutError(f"followed {follower.records_seen}/{events} events")
        time.sleep(0.005)
    cpu1, t1 = own_cpu_seconds(), time.monotonic()
    ledger.flush(120)
    t2 = time.monotonic()
    follower.stop(10)
    proof = check_correlated(tracker, flows)
    ledger.stop(30)
    ledger.close()
    return Followed(events, t1 - t0, cpu1 - cpu0, t2 - t0, proof, follower.invalid_seen)


def report_followed(reporter: Reporter, rounds: list[Followed]) -> None:
    """Medians over the rounds, under the issue's name and the older ones."""
    events = rounds[0].events
    per_cpu = statistics.median(r.per_cpu_second for r in rounds)
    rate = statistics.median(r.events / r.wall for r in rounds)
    persisted = statistics.median(r.events / r.persisted for r in rounds)
    each = ", ".join(f"{r.per_cpu_second:,.0f}" for r in rounds)
    last = rounds[-1]
    reporter.emit(Result(
        "events.followed_per_cpu_second", per_cpu, "events/CPU-s",
        f">= {CPU_TARGET:,.0f}/CPU-s", per_cpu >= CPU_TARGET,
        f"median over {len(rounds)} rounds ({each}) of {events:,} events followed from "
        f"Tansu, correlated and recorded in the ledger (SQLite) by the real Follower + "
        f"Tracker, one CPU; last round: {last.proof}; invalid {last.invalid}"))
    reporter.emit(Result(
        "events.followed_per_second", rate, "events/s", f">= {TARGET:,.0f}/s", rate >= TARGET,
        f"median over {len(rounds)} rounds; {events:,} events in {last.wall:.2f} s"))
    reporter.emit(Result(
        "events.per_cpu_second", per_cpu, "events/CPU-s",
        detail=f"{last.cpu:.2f} CPU s for {events:,} events (all threads), last round"))
    reporter.emit(Result(
        "events.persisted_per_second", persisted, "events/s",
        detail="until the ledger had stored every change (SQLite file); median"))


def main(argv: Sequence[str] | None = None) -> int:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--events", type=int,
                            help="events to pre-fill (default 200,000; quick 8,000)")
        parser.add_argument("--rounds", type=int, help="rounds of following (default 3)")

    args = arguments(__doc__.splitlines()[0], argv, extra)
    rounds = args.rounds or (1 if args.quick else 3)
    configure_logging("WARNING", "json")
    reporter = Reporter(args.results)
    events = args.events or (8_000 if args.quick else 200_000)
    flows_count = events // 4
    events = flows_count * 4
    banner(f"event processing: {events:,} events pre-filled in Tansu, one core")
    rng = random.Random(7)
    flows = make_flows(flows_count, rng)
    pristine = copy.deepcopy(flows)  # the followed payments change; every pass needs new
    # The benchmark's own data (hundreds of thousands of objects the twin would never
    # hold) must not make the garbage collector's passes over the twin's objects slower.
    gc.freeze()
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        workdir = Path(tmp)
        broker = TansuBroker(workdir)
        broker.start()
        try:
            bus = KafkaBus(broker.bootstrap, session_timeout_ms=6000, client_id="bench-events")
            bus.ensure_topics(list(TOPICS), 3)
            producer = bus.producer()
            started = time.monotonic()
            produce(producer, flows)
            producer.close()
            reporter.note(f"pre-filled {events:,} events in {time.monotonic() - started:.1f} s")
            followed = []
            for round_number in range(rounds):
                fresh = copy.deepcopy(pristine)  # followed payments change
                gc.collect()
                gc.freeze()  # as the first copy: the benchmark's data stays out of the GC
                followed.append(follow(reporter, bus, workdir, fresh, events,
                                       f"{GROUP}-{round_number}"))
                reporter.note(f"round {round_number + 1}: "
                              f"{followed[-1].per_cpu_second:,.0f} events/CPU-s")
        finally:
            broker.stop()
        report_followed(reporter, followed)
        gc.collect()
        inproc_rate, inproc_cpu = decode_and_correlate_only(workdir, pristine)
        reporter.emit(Result(
            "events.decode_correlate_only", inproc_rate, "events/s",
            detail=f"{inproc_cpu:,.0f} events/CPU-s; the same records from memory: "
                   "decode_event + Tracker.on_event + metrics + ledger buffer, without the "
                   "Kafka client and without SQLite"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
