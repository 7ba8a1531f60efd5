"""Tracking end to end against the embedded BGMock emulator (in-process bus, short
outbox interval so a flow takes a fraction of a second).

Every payment is checked against what the emulator did, through its REST API:
the source bank's outgoing transaction, the clearing's copy and the destination's
incoming transaction.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, generate_latest
from sqlalchemy.engine import Engine

from bgmock_twin.api.errors import install_error_handlers
from bgmock_twin.api.tracking_routes import build_router
from bgmock_twin.clients.bgmock import BankMapping
from bgmock_twin.contract import Status
from bgmock_twin.scheduler import JobScheduler
from bgmock_twin.settings import Settings, load_settings
from bgmock_twin.tracking.ledger import PaymentQuery
from bgmock_twin.tracking.lifecycle import Channel, Kind, Step
from bgmock_twin.tracking.mix import planned_mix, usable_kinds
from bgmock_twin.tracking.provisioning import Provisioner
from bgmock_twin.tracking.records import PaymentRecord
from bgmock_twin.tracking.service import Tracking
from tests.support.ports import wait_for
from tests.support.twins import MemoryBGMock as BGMock
from tests.support.twins import await_tracking, memory_bgmock, stop_tracking

pytestmark = pytest.mark.slow  # started first by make test's workers (conftest)

OUTBOX_INTERVAL = 0.05
EXPECTED = {
    (Channel.REST, Kind.NORMAL): "success",
    (Channel.REST, Kind.INSUFFICIENT_FUNDS): "rejected",
    (Channel.REST, Kind.UNKNOWN_BANKGOOD): "failed",
    (Channel.REST, Kind.UNKNOWN_PAYEE_ACCOUNT): "failed",
    (Channel.KAFKA, Kind.NORMAL): "success",
    (Channel.KAFKA, Kind.UNKNOWN_BANKGOOD): "failed",
    (Channel.KAFKA, Kind.UNKNOWN_PAYEE_ACCOUNT): "failed",
}


@pytest.fixture(scope="module")
def bgmock() -> Iterator[BGMock]:
    with memory_bgmock(OUTBOX_INTERVAL, pool_size=64) as world:
        yield world


@dataclass
class Twin:
    tracking: Tracking
    scheduler: JobScheduler
    api: TestClient
    settings: Settings


@pytest.fixture
def make_twin(bgmock: BGMock, tmp_path: Path) -> Iterator[Callable[..., Twin]]:
    started: list[Twin] = []
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    instance = f"t{uuid.uuid4().hex[:8]}"

    def make(**overrides: Any) -> Twin:
        values: dict[str, Any] = {
            "instance_id": instance, "twin_database_url": database,
            "kafka_group_id": "twin-e2e", "load_rate_per_second": 0,
            "step_deadline_seconds": 5, "payment_sla_seconds": 120,
            "max_in_flight_requests": 32, "rest_timeout_seconds": 5,
        }
        values.update(overrides)
        settings = load_settings(**values)
        scheduler = JobScheduler()
        scheduler.start()
        tracking = Tracking(settings.tracking, bgmock.clients, bgmock.bus)
        tracking.start()
        scheduler.add(tracking.jobs())
        app = FastAPI()
        app.state.control_token = None
        install_error_handlers(app)
        app.include_router(build_router(tracking))
        twin = Twin(tracking, scheduler, TestClient(app), settings)
        started.append(twin)
        await_tracking(tracking, timeout=10)
        return twin

    try:
        yield make
    finally:
        for twin in started:
            stop_tracking(twin.tracking, twin.scheduler)
        for target in ("bank_a", "bank_b", "clearing"):
            bgmock.emulator.faults.apply(target, {"paused": False, "latency_seconds": 0,
                                                  "down": False})


def sample(name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in REGISTRY.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def wait_finished(api: TestClient, sim_id: str, timeout: float = 60) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        detail = api.get(f"/api/v1/simulations/{sim_id}").json()
        return detail if detail["state"] == "finished" else None

    return wait_for(finished, timeout=timeout, interval=0.2, message=f"simulation {sim_id}")


def sim_rows(twin: Twin, sim_id: str) -> list[PaymentRecord]:
    assert twin.tracking.ledger.flush(5)
    return twin.tracking.ledger.query(PaymentQuery(simulation_id=sim_id, limit=100_000))


def lost_race(row: PaymentRecord) -> bool:
    """A REST payment the bank answered with a 500 because its versioned write on the
    payer lost a race with a credit or settlement on the same account (BGMock's
    optimistic locking; the twin's payers are also payees): rejected, certainly,
    with nothing stored or reserved and no transaction id."""
    return (row.channel == "rest" and row.outcome == "rejected"
            and row.transaction_id is None and not row.refusal_ambiguous
            and (row.message or "").endswith(": http_500"))


def with_id(rows: list[PaymentRecord]) -> list[PaymentRecord]:
    """The payments the bank took (every one but those that lost a race)."""
    assert all(r.transaction_id is not None or lost_race(r) for r in rows), rows
    return [r for r in rows if r.transaction_id is not None]


def verify_against_emulator(bgmock: BGMock, row: PaymentRecord) -> None:
    """What the emulator's three services say about this payment agrees with the twin."""
    tx = uuid.UUID(row.transaction_id)
    clients = bgmock.clients
    source = clients.bank(row.from_clearing).get_outgoing(tx)
    at_clearing = clients.clearing.get_transaction(tx)
    outcome = row.outcome
    if row.channel == "rest":
        assert source is not None, row
        assert source.status is (Status.SUCCESS if outcome == "success" else Status.FAILED), row
    else:
        assert source is None, "the kafka channel bypasses the source bank"
    if outcome == "rejected":
        assert at_clearing is None, row
        return
    assert at_clearing is not None, row
    assert at_clearing.status is (Status.SUCCESS if outcome == "success" else Status.FAILED), row
    if outcome == "success":
        incoming = clients.bank(row.to_clearing).get_incoming(tx)
        assert incoming is not None and incoming.status is Status.SUCCESS, row
        assert incoming.amount == row.amount


def test_a_simulation_over_both_channels_and_directions_accounts_for_every_payment(
    bgmock: BGMock, make_twin: Callable[..., Twin],
) -> None:
    twin = make_twin()
    api = twin.api
    labels = [(c, r, o) for c in ("rest", "kafka") for r in ("a_to_b", "b_to_a")
              for o in ("success", "failed", "rejected", "stuck")]
    completed_before = {k: sample("bgmock_payments_completed_total", channel=k[0], route=k[1],
                                  outcome=k[2]) for k in labels}
    submitted_before = {(k[0], k[1]): sample("bgmock_payments_submitted_total", channel=k[0],
                                             route=k[1]) for k in labels}
    specs: dict[str, dict[str, Any]] = {
        "rest": {"count": 200, "rate": 40, "direction": "both", "failureShare": 0.25,
                 "name": "rest mix"},
        "kafka": {"count": 100, "rate": 40, "channel": "kafka", "failure_share": 0.25},
    }
    sims = {}
    for channel, spec in specs.items():
        answer = api.post("/api/v1/simulations", json=spec)
        assert answer.status_code == 202, answer.text
        sims[channel] = answer.json()["id"]
        assert answer.json()["state"] == "running"
    listed = api.get("/api/v1/simulations").json()["items"]
    assert {s["id"] for s in listed} >= set(sims.values())

    completed_by_labels: Counter[tuple[str, str, str]] = Counter()
    submitted_by_labels: Counter[tuple[str, str]] = Counter()
    for channel, sim_id in sims.items():
        detail = wait_finished(api, sim_id)
        count = specs[channel]["count"]
        progress = detail["progress"]
        print(f"{channel}: dispatched={progress['dispatched']} dropped={progress['dropped']} "
              f"send lag={detail['sendLag']} total latency={detail['latency']['total']}")
        assert progress["dispatched"] + progress["dropped"] == count
        assert progress["inFlight"] == 0 and progress["stuckNow"] == 0
        rows = sim_rows(twin, sim_id)
        assert len(rows) == progress["dispatched"]
        assert len({r.transaction_id for r in with_id(rows)}) == len(with_id(rows))
        # the run's mix was the planned one, and each kind ended as it must
        kinds = usable_kinds(Channel(channel), list(Kind))
        planned = planned_mix(count, "both", 0.25, kinds)
        sent = Counter((r.route, r.kind) for r in rows)
        if progress["dropped"] == 0:
            assert sent == Counter({(route.value, kind.value): n
                                    for (route, kind), n in planned.items()})
        outcomes = Counter(r.outcome for r in rows)
        for row in rows:
            assert row.counted_outcome == row.outcome
            if lost_race(row):
                completed_by_labels[(channel, row.route, row.outcome)] += 1
                submitted_by_labels[(channel, row.route)] += 1
                continue
            assert row.outcome == EXPECTED[(Channel(channel), Kind(row.kind))], row
            verify_against_emulator(bgmock, row)
            completed_by_labels[(channel, row.route, row.outcome)] += 1
            submitted_by_labels[(channel, row.route)] += 1
        assert detail["outcomes"] == {"success": outcomes["success"],
                                      "failed": outcomes["failed"],
                                      "rejected": outcomes["rejected"], "stuck": 0}
        assert sum(detail["outcomes"].values()) == progress["dispatched"]
        latency = detail["latency"]
        assert latency["total"]["count"] == outcomes["success"] + outcomes["failed"]
        assert latency["total"]["p50"] <= latency["total"]["p95"] <= latency["total"]["p99"]
        steps = ("accepted", "initiated", "forwarded", "processed", "completed", "settled") \
            if channel == "rest" else ("initiated", "forwarded", "processed", "completed")
        for step in steps:
            assert latency["steps"][step]["count"] > 0, step
        if channel == "kafka":
            assert latency["steps"]["accepted"]["count"] == 0
            assert latency["steps"]["settled"]["count"] == 0

    # the counters moved exactly by what the ledger holds
    for key in labels:
        delta = sample("bgmock_payments_completed_total", channel=key[0], route=key[1],
                       outcome=key[2]) - completed_before[key]
        assert delta == completed_by_labels[key], key
    for route_key, n in submitted_by_labels.items():
        assert sample("bgmock_payments_submitted_total", channel=route_key[0],
                      route=route_key[1]) - submitted_before[route_key] == n
    exposition = generate_latest(REGISTRY).decode()
    for step in ("accepted", "initiated", "forwarded", "processed", "completed", "settled"):
        assert f'bgmock_payment_step_duration_seconds_count{{step="{step}"}}' in exposition
    assert 'bgmock_payment_duration_seconds_count{channel="kafka",route="b_to_a"}' in exposition
    status = twin.tracking.status()
    assert status.in_flight == 0 and status.simulations_active == 0

    # the ledger can be paged and exported
    page = api.get("/api/v1/transactions", params={"simulation": sims["rest"], "limit": 100})
    body = page.json()
    assert len(body["items"]) == 100 and body["nextOffset"] == 100
    item = body["items"][0]
    assert isinstance(item["amount"], str) and Decimal(item["amount"]) > 0
    csv_text = api.get("/api/v1/transactions", params={
        "simulation": sims["kafka"], "format": "csv", "limit": 1000}).text
    assert csv_text.splitlines()[0].startswith("payment_id,transaction_id,simulation_id")
    assert len(csv_text.strip().splitlines()) == 1 + len(sim_rows(twin, sims["kafka"]))
    failed = api.get("/api/v1/transactions", params={"status": "failed", "limit": 1000}).json()
    assert failed["items"] and all(i["status"] == "failed" for i in failed["items"])


def test_deliberate_failures_end_as_the_right_outcome(
    bgmock: BGMock, make_twin: Callable[..., Twin],
) -> None:
    twin = make_twin()
    api = twin.api
    cases = [(c, k) for (c, k) in EXPECTED]
    counted_before = {(c, k): sample("bgmock_payments_completed_total", channel=c.value,
                                     kind=k.value, outcome=EXPECTED[(c, k)])
                      for (c, k) in cases}
    answers = {}
    for channel, kind in cases:
        answer = api.post("/api/v1/transactions", json={
            "fromBank": "b", "channel": channel.value, "kind": kind.value, "amount": "12.34"})
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert body["amount"] == "12.34" and body["route"] == "b_to_a"
        if channel is Channel.REST and kind is not Kind.INSUFFICIENT_FUNDS:
            assert body["transactionId"] is not None
        answers[(channel, kind)] = body["paymentId"]

    def final(payment_id: str) -> dict[str, Any] | None:
        view = api.get(f"/api/v1/transactions/{payment_id}").json()
        return view if view["status"] != "in_flight" else None

    for (channel, kind), payment_id in answers.items():
        view = wait_for(lambda p=payment_id: final(p), timeout=20,  # type: ignore[misc]
                        message=f"{channel} {kind}")
        assert view["outcome"] == EXPECTED[(channel, kind)], view
        steps = [e["step"] for e in view["timeline"]]
        if kind is Kind.INSUFFICIENT_FUNDS:
            assert steps == ["accepted"] and view["finalStatus"] == "FAILED"
            assert view["fromAccountNumber"].endswith("-B-LOW")
        elif kind is Kind.UNKNOWN_BANKGOOD:
            assert "forwarded" not in steps and "processed" not in steps
            assert "completed" in steps
        elif kind is Kind.UNKNOWN_PAYEE_ACCOUNT:
            assert "processed" in steps and view["toAccountNumber"].endswith("GHOST")
        else:
            assert view["durationSeconds"] is not None and view["durationSeconds"] > 0
        expected_steps = {"accepted", "initiated", "forwarded", "processed", "completed",
                          "settled"}
        if channel is Channel.KAFKA:
            assert "accepted" not in steps and "settled" not in steps
            expected_steps -= {"accepted", "settled"}
        if kind is Kind.NORMAL:
            assert set(steps) == expected_steps
        row = twin.tracking.ledger.get(payment_id) if twin.tracking.ledger.flush(5) else None
        assert row is not None
        verify_against_emulator(bgmock, row)
    # each is counted once under its own kind, so the success SLO leaves them out
    for (channel, kind) in cases:
        assert sample("bgmock_payments_completed_total", channel=channel.value, kind=kind.value,
                      outcome=EXPECTED[(channel, kind)]) - counted_before[(channel, kind)] == 1
    timeline_csv = api.get(f"/api/v1/transactions/{answers[(Channel.REST, Kind.NORMAL)]}",
                           params={"format": "csv"}).text.splitlines()
    assert timeline_csv[0] == "step,at,since_intended_seconds,duration_seconds"
    csv_steps = [line.split(",")[0] for line in timeline_csv[1:]]
    # in time order; the bank's 202 may reach the twin after the payment's initiated
    # event (its outbox publishes once the payment is stored), the rest is causal
    assert sorted(csv_steps[:2]) == ["accepted", "initiated"]
    assert csv_steps[2:] == ["forwarded", "processed", "completed", "settled"]
    ats = [datetime.fromisoformat(line.split(",")[1]) for line in timeline_csv[1:]]
    assert ats == sorted(ats)
    events = api.get("/api/v1/events", params={"limit": 50, "origin": "twin"}).json()["items"]
    assert events and {e["topic"] for e in events} >= {"transactions.initiated",
                                                        "transactions.completed"}


def test_a_paused_destination_bank_makes_payments_stuck_at_processed_until_it_resumes(
    bgmock: BGMock, make_twin: Callable[..., Twin],
) -> None:
    twin = make_twin(step_deadline_seconds=0.5, payment_sla_seconds=120)
    api = twin.api
    bgmock.emulator.faults.apply("bank_b", {"paused": True})
    sim = api.post("/api/v1/simulations", json={
        "count": 10, "rate": 50, "direction": "a_to_b"}).json()["id"]
    wait_for(lambda: twin.tracking.status().stuck == {"processed": 10}, timeout=15,
             message="stuck at processed")
    assert sample("bgmock_payments_stuck", step="processed") == 10
    # the list is read from the ledger, whose writer batches: wait for it to catch up
    view = wait_for(lambda: next(
        (v for v in api.get("/api/v1/transactions", params={"simulation": sim}).json()["items"]
         if v["stuckStep"] == "processed"), None), timeout=10, message="ledger shows stuck")
    assert view["stuckStep"] == "processed" and view["status"] == "in_flight"
    assert view["state"] == "forwarded"
    bgmock.emulator.faults.apply("bank_b", {"paused": False})
    detail = wait_finished(api, sim, timeout=30)
    assert detail["outcomes"] == {"success": 10, "failed": 0, "rejected": 0, "stuck": 0}
    wait_for(lambda: sample("bgmock_payments_stuck", step="processed") == 0, timeout=5)
    for row in sim_rows(twin, sim):
        assert row.stuck_step is None and (processed := row.step(Step.PROCESSED)) is not None \
            and processed.duration > 0.5
        verify_against_emulator(bgmock, row)


def test_a_restart_in_the_middle_of_a_simulation_loses_no_payment(
    bgmock: BGMock, make_twin: Callable[..., Twin],
) -> None:
    first = make_twin()
    count = 150
    sim = first.api.post("/api/v1/simulations", json={
        "count": count, "rate": 50, "failureShare": 0.1}).json()["id"]
    wait_for(lambda: (s := first.tracking.simulations.get_sim(sim)) is not None
             and s.dispatched >= 50, timeout=20, message="a third sent")
    first.tracking.stop(5)
    first.scheduler.shutdown(wait=False)
    stopped_at = first.tracking.simulations.get_sim(sim)
    assert stopped_at is not None and stopped_at.dispatched < count
    second = make_twin()  # same instance id, ledger and consumer group
    detail = wait_finished(second.api, sim, timeout=60)
    assert detail["resumed"] is True
    progress = detail["progress"]
    assert progress["dispatched"] + progress["dropped"] == count
    rows = sim_rows(second, sim)
    assert len(rows) == progress["dispatched"]
    assert len({r.transaction_id for r in with_id(rows)}) == len(with_id(rows))
    assert all(r.finished for r in rows)
    assert sum(detail["outcomes"].values()) == len(rows)
    for row in with_id(rows):
        assert row.outcome == EXPECTED[(Channel.REST, Kind(row.kind))], row
        verify_against_emulator(bgmock, row)


def test_a_payment_leaves_only_once_its_row_is_stored(
    bgmock: BGMock, make_twin: Callable[..., Twin], tmp_path: Path,
) -> None:
    """A twin killed right after a send must find that payment in its ledger. While
    the ledger's writer cannot commit (another connection holds SQLite's write lock)
    a planned payment waits at its due time; it leaves once its row is stored."""
    twin = make_twin()
    bank_a = bgmock.emulator.engines["bank_a"]
    before = outgoing_count(bank_a)
    sim = twin.api.post("/api/v1/simulations", json={
        "count": 2, "rate": 0.25, "direction": "a_to_b"}).json()["id"]
    wait_for(lambda: outgoing_count(bank_a) == before + 1, timeout=20,
             message="the first payment at the bank")
    submitted = sum(twin.tracking.tracker.submitted.values())
    holder = sqlite3.connect(tmp_path / "ledger.db", timeout=10, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # the writer's commits wait behind it
        wait_for(lambda: sum(twin.tracking.tracker.submitted.values()) == submitted + 1,
                 timeout=20, message="the second payment planned")
        due = twin.tracking.simulations.get_sim(sim)
        assert due is not None
        # due 4 s after the first (time to take the lock first on a loaded machine);
        # held 1.5 s past that, it stays here
        wait_for(lambda: due.dispatched == 2, timeout=20, message="the second payment due")
        held_until = time.monotonic() + 1.5
        while time.monotonic() < held_until:
            assert outgoing_count(bank_a) == before + 1, "sent before its row was stored"
            time.sleep(0.1)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    detail = wait_finished(twin.api, sim, timeout=60)
    assert outgoing_count(bank_a) == before + 2
    assert detail["progress"]["dispatched"] == 2
    assert all(r.outcome == "success" or lost_race(r) for r in sim_rows(twin, sim))


def outgoing_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM outgoing_transactions"))
                   .scalar_one())


def test_pacing_holds_the_rate_while_the_emulator_adds_latency(
    bgmock: BGMock, make_twin: Callable[..., Twin],
) -> None:
    twin = make_twin()
    for bank in ("bank_a", "bank_b"):
        bgmock.emulator.faults.apply(bank, {"latency_seconds": 0.2})
    started = time.monotonic()
    sim = twin.api.post("/api/v1/simulations", json={"count": 100, "rate": 50}).json()["id"]
    run = twin.tracking.simulations.get_sim(sim)
    assert run is not None and run.run is not None
    assert run.run.done.wait(30)
    sending = time.monotonic() - started
    detail = wait_finished(twin.api, sim, timeout=60)
    lag = detail["sendLag"]
    print(f"100 payments at 50/s with 0.2 s REST latency: sent in {sending:.2f} s "
          f"(schedule {detail['expectedDurationSeconds']} s), send lag p50={lag['p50']} "
          f"p99={lag['p99']} max={lag['max']}")
    progress = detail["progress"]
    # the schedule was kept: every payment left (or was dropped) on its own clock; with
    # 32 workers and 0.2 s per call there is room for all of them on a sane machine
    assert progress["dispatched"] + progress["dropped"] == 100
    assert progress["dispatched"] >= 80
    rows = sim_rows(twin, sim)
    assert all(r.outcome == "success" or lost_race(r) for r in rows), rows
    assert detail["outcomes"]["success"] + sum(map(lost_race, rows)) == progress["dispatched"]


def test_when_every_worker_is_busy_payments_are_dropped_and_counted_never_queued(
    bgmock: BGMock, make_twin: Callable[..., Twin],
) -> None:
    twin = make_twin(max_in_flight_requests=2)
    bgmock.emulator.faults.apply("bank_a", {"latency_seconds": 0.5})
    dropped_before = sample("bgmock_payments_dropped_total")
    sim = twin.api.post("/api/v1/simulations", json={
        "count": 40, "rate": 20, "direction": "a_to_b"}).json()["id"]
    detail = wait_finished(twin.api, sim, timeout=60)
    progress = detail["progress"]
    print(f"40 payments at 20/s, 2 workers, 0.5 s latency: dispatched={progress['dispatched']}"
          f" dropped={progress['dropped']}")
    assert progress["dropped"] > 0
    assert progress["dispatched"] + progress["dropped"] == 40
    assert sample("bgmock_payments_dropped_total") - dropped_before == progress["dropped"]
    rows = sim_rows(twin, sim)
    assert all(r.outcome == "success" or lost_race(r) for r in rows), rows
    assert detail["outcomes"]["success"] + sum(map(lost_race, rows)) == progress["dispatched"]


def test_a_slow_bank_holding_every_rest_slot_does_not_make_the_kafka_channel_drop(
    bgmock: BGMock, make_twin: Callable[..., Twin],
) -> None:
    """The channels have their own bounds: REST submissions waiting on a slow bank
    take every ``TWIN_MAX_IN_FLIGHT_REQUESTS`` slot, Kafka payments meanwhile plan
    and produce on ``TWIN_MAX_IN_FLIGHT_KAFKA_PAYMENTS`` ones."""
    twin = make_twin(max_in_flight_requests=2, max_in_flight_kafka_payments=64)
    bgmock.emulator.faults.apply("bank_a", {"latency_seconds": 0.5})
    rest = twin.api.post("/api/v1/simulations", json={
        "count": 40, "rate": 20, "direction": "a_to_b"}).json()["id"]
    kafka = twin.api.post("/api/v1/simulations", json={
        "count": 40, "rate": 20, "direction": "a_to_b", "channel": "kafka"}).json()["id"]
    rest_detail = wait_finished(twin.api, rest, timeout=60)
    kafka_detail = wait_finished(twin.api, kafka, timeout=60)
    print(f"rest: {rest_detail['progress']}; kafka: {kafka_detail['progress']}")
    assert rest_detail["progress"]["dropped"] > 0  # the REST slots were all taken
    assert kafka_detail["progress"]["dropped"] == 0
    assert kafka_detail["progress"]["dispatched"] == 40
    assert kafka_detail["outcomes"]["success"] == 40


def test_background_canary_runs_on_its_own(
    bgmock: BGMock, make_twin: Callable[..., Twin],
) -> None:
    twin = make_twin(load_rate_per_second=10)

    def canaries() -> int:
        twin.tracking.ledger.flush(2)
        rows = twin.tracking.ledger.query(PaymentQuery(status="success", limit=1000))
        return sum(1 for r in rows if r.simulation_id is None)

    wait_for(lambda: canaries() >= 10, timeout=20, message="ten canary payments settled")
    assert "tracking_load" in twin.scheduler.job_names()


BAD_SIMULATIONS: list[tuple[dict[str, Any], str]] = [
    ({"count": 0, "rate": 1}, "count"),
    ({"count": 100001, "rate": 1}, "count"),
    ({"count": 5, "rate": 10001}, "rate"),  # MAX_RATE: 10,000/s
    ({"count": 5, "rate": 0}, "rate"),
    ({"count": 5, "delay": 0.1}, "delay"),
    ({"count": 5, "delay": 11}, "delay"),
    ({"count": 5}, "body"),
    ({"count": 5, "rate": 1, "delay": 1}, "body"),
    ({"count": 5, "rate": 1, "amountMin": "1.001"}, "amountMin"),
    ({"count": 5, "rate": 1, "amountMin": "-1"}, "amountMin"),
    ({"count": 5, "rate": 1, "amountMin": "5", "amountMax": "2"}, "body"),
    ({"count": 5, "rate": 1, "failureShare": 1.5}, "failureShare"),
    ({"count": 5, "rate": 1, "channel": "smoke"}, "channel"),
    ({"count": 5, "rate": 1, "bogus": 1}, "bogus"),
    ({"count": 5, "profile": "ramp"}, "body"),
    ({"count": 5, "profile": "ramp", "ramp": {"fromRate": 1, "toRate": 0, "duration": 1}},
     "toRate"),
    ({"count": 5, "profile": "spike", "rate": 1, "spike": {"rate": 5, "start": -1,
                                                          "duration": 1}}, "start"),
    ({"count": "many", "rate": 1}, "count"),
    ({"count": 5, "rate": 1, "failureKinds": []}, "failureKinds"),
]


def test_bad_simulation_requests_are_422_naming_the_field(
    make_twin: Callable[..., Twin],
) -> None:
    api = make_twin().api
    for body, field in BAD_SIMULATIONS:
        answer = api.post("/api/v1/simulations", json=body)
        assert answer.status_code == 422, (body, answer.text)
        assert field in answer.json()["error"], (body, answer.json())
    assert api.get("/api/v1/simulations").json()["items"] == []


def test_bad_transaction_requests_and_unknown_ids(make_twin: Callable[..., Twin]) -> None:
    api = make_twin().api
    for body in ({"amount": "0"}, {"amount": "1.234"}, {"fromBank": "c"},
                 {"amount": "1e400"}, {"fromAccount": "../etc"}, {"extra": True},
                 {"fromBank": "a", "toBank": "a"}, {"fromAccount": "NOT-OURS-001"}):
        answer = api.post("/api/v1/transactions", json=body)
        assert answer.status_code == 422, (body, answer.text)
        assert "error" in answer.json()
    assert api.post("/api/v1/transactions", content=b"{not json",
                    headers={"Content-Type": "application/json"}).status_code == 422
    unknown = str(uuid.uuid4())
    assert api.get(f"/api/v1/transactions/{unknown}").status_code == 404
    assert api.get("/api/v1/transactions/not-a-uuid").status_code == 422
    assert api.get(f"/api/v1/simulations/{unknown}").status_code == 404
    assert api.delete(f"/api/v1/simulations/{unknown}").status_code == 404
    assert api.get("/api/v1/transactions", params={"limit": 0}).status_code == 422
    assert api.get("/api/v1/transactions", params={"status": "odd"}).status_code == 422
    assert api.get("/api/v1/events", params={"topic": "other"}).status_code == 422


def test_a_simulation_can_be_stopped_and_profiles_are_accepted(
    make_twin: Callable[..., Twin],
) -> None:
    api = make_twin().api
    ramp = api.post("/api/v1/simulations", json={
        "count": 1000, "profile": "ramp", "ramp": {"fromRate": 1, "toRate": 20, "duration": 60},
        "amountMin": "1.00", "amountMax": "2.00", "failureKinds": ["unknown_bankgood"]})
    assert ramp.status_code == 202, ramp.text
    spike = api.post("/api/v1/simulations", json={
        "count": 3, "profile": "spike", "delay": 0.5, "spike": {"rate": 10, "start": 0.2,
                                                                 "duration": 0.1}})
    assert spike.status_code == 202, spike.text
    stopped = api.delete(f"/api/v1/simulations/{ramp.json()['id']}")
    assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
    detail = api.get(f"/api/v1/simulations/{ramp.json()['id']}").json()
    assert detail["spec"]["rampTo"] == 20 and detail["spec"]["amountMax"] == "2.00" and detail["state"] == "stopped"
    assert detail["progress"]["dispatched"] < 1000
    wait_finished(api, spike.json()["id"], timeout=20)


def test_provisioning_reuses_tops_up_and_never_touches_what_it_did_not_create(
    bgmock: BGMock,
) -> None:
    prefix = "PV" + uuid.uuid4().hex[:6].upper()
    clients = bgmock.clients
    # names the twin would use, already taken by somebody else
    clients.bank_a.create_account(f"{prefix}-A-002", "somebody else", Decimal("5.00"))
    clients.clearing.create_mapping(BankMapping(f"{prefix}-BG-B-001", "02", "ELSEWHERE", "X"))
    clients.bank_b.create_account(f"{prefix}-B-GHOST", "somebody else")
    deposits: list[tuple[str, str, Decimal, str]] = []
    provisioner = Provisioner(clients, prefix, 3, Decimal("1000.00"),
                              record_deposit=lambda *d: deposits.append(d))
    fixtures = provisioner.provision()
    assert fixtures.complete()
    assert fixtures.payers == {"01": [f"{prefix}-A-001", f"{prefix}-A-003"],
                               "02": [f"{prefix}-B-001", f"{prefix}-B-002", f"{prefix}-B-003"]}
    assert [p.account_number for p in fixtures.payees["02"]] == [f"{prefix}-B-002",
                                                                 f"{prefix}-B-003"]
    taken = clients.bank_a.get_account(f"{prefix}-A-002")
    assert taken is not None and taken.balance == Decimal("5.00")  # left alone
    mapping = clients.clearing.get_mapping(f"{prefix}-BG-B-001")
    assert mapping is not None and mapping.account_number == "ELSEWHERE"
    ghost = fixtures.ghost_payees["02"]
    assert ghost.account_number == f"{prefix}-B-GHOST-1"
    assert clients.bank_b.get_account(ghost.account_number) is None
    assert fixtures.unknown_bankgood == f"{prefix}-BG-NONE"
    assert clients.clearing.get_mapping(fixtures.unknown_bankgood) is None
    assert fixtures.low_available == {"01": Decimal("0.00"), "02": Decimal("0.00")}
    assert sorted(d[1] for d in deposits) == sorted(fixtures.payers["01"] + fixtures.payers["02"])
    assert all(d[2] == Decimal("1000.00") and d[3] == "initial" for d in deposits)
    # a second run reuses everything
    deposits.clear()
    assert provisioner.provision().payers == fixtures.payers and deposits == []
    # a payer that ran low is topped up to the initial deposit
    bgmock.emulator.faults.corrupt_balance("bank_a", f"{prefix}-A-001", Decimal("-900.00"))
    provisioner.top_up()
    assert deposits == [("01", f"{prefix}-A-001", Decimal("900.00"), "top_up")]
    refilled = clients.bank_a.get_account(f"{prefix}-A-001")
    assert refilled is not None and refilled.balance == Decimal("1000.00")


def test_deposits_are_recorded_in_the_ledger(make_twin: Callable[..., Twin]) -> None:
    prefix = "DP" + uuid.uuid4().hex[:6].upper()
    twin = make_twin(account_prefix=prefix, accounts_per_bank=2,
                     account_initial_deposit="500.00")
    assert twin.tracking.ledger.flush(5)
    deposits = twin.tracking.ledger.load_deposits()
    assert sorted(d["account_number"] for d in deposits) == [
        f"{prefix}-A-001", f"{prefix}-A-002", f"{prefix}-B-001", f"{prefix}-B-002"]
    assert {d["amount"] for d in deposits} == {Decimal("500.00")}


def test_mutations_need_the_token_and_curl_style_bodies_work(
    make_twin: Callable[..., Twin],
) -> None:
    twin = make_twin()
    api = twin.api
    api.app.state.control_token = "s3cret-token"  # type: ignore[attr-defined]
    body = '{"count": 2, "rate": 20}'
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert api.post("/api/v1/simulations", content=body, headers=form).status_code == 401
    assert api.post("/api/v1/transactions", json={}).status_code == 401
    auth = {"Authorization": "Bearer s3cret-token"}
    created = api.post("/api/v1/simulations", content=body, headers={**form, **auth})
    assert created.status_code == 202, created.text  # what `curl -d '{...}'` sends
    sim_id = created.json()["id"]
    assert api.delete(f"/api/v1/simulations/{sim_id}").status_code == 401
    assert api.get(f"/api/v1/simulations/{sim_id}").status_code == 200  # reads are open
    wait_finished(api, sim_id, timeout=20)
    schema = api.get("/openapi.json").json()
    for path, method in [("/api/v1/transactions", "post"), ("/api/v1/transactions", "get"),
                         ("/api/v1/transactions/{transaction_id}", "get"),
                         ("/api/v1/simulations", "post"), ("/api/v1/simulations", "get"),
                         ("/api/v1/simulations/{simulation_id}", "get"),
                         ("/api/v1/simulations/{simulation_id}", "delete"),
                         ("/api/v1/events", "get")]:
        operation = schema["paths"][path][method]
        assert operation["summary"], (path, method)
    detail = schema["components"]["schemas"]["SimulationDetail"]["properties"]
    assert {"latency", "outcomes", "progress", "sendLag"} <= set(detail)


def test_an_unreachable_source_bank_rejects_payments_and_tracking_goes_on(
    bgmock: BGMock, make_twin: Callable[..., Twin],
) -> None:
    twin = make_twin()
    api = twin.api
    bgmock.emulator.faults.apply("bank_a", {"down": True})
    try:
        answer = api.post("/api/v1/transactions", json={"fromBank": "a"})
        assert answer.status_code == 502 and "bank_a" in answer.json()["error"]
        sim = api.post("/api/v1/simulations", json={
            "count": 6, "rate": 20, "direction": "a_to_b"}).json()["id"]
        detail = wait_finished(api, sim, timeout=30)
        assert detail["outcomes"] == {"success": 0, "failed": 0, "rejected": 6, "stuck": 0}
        for row in sim_rows(twin, sim):
            assert row.transaction_id is None
            assert row.message.startswith("not accepted by bank_a")
            # refused connections may hide a request that arrived: the books keep it open
            assert row.refusal_ambiguous
    finally:
        bgmock.emulator.faults.apply("bank_a", {"down": False})
    again = api.post("/api/v1/transactions", json={"fromBank": "a"})
    assert again.status_code == 202
    payment_id = again.json()["paymentId"]
    wait_for(lambda: api.get(f"/api/v1/transactions/{payment_id}").json()["status"]
             == "success", timeout=20, message="success once the bank is back")
    assert twin.tracking.ready()
