"""Fault: the twin is SIGKILLed in the middle of a simulation and started again.

BGMock outlives the twin here: ``bgmock-twin emulate`` runs as its own process on
Tansu, its databases on PostgreSQL, and the twin runs in external mode against it.
The restarted twin (same instance id, same ledger, same consumer group) must resume
the simulation from its ledger and its committed offsets: every payment sent, the
ones BGMock finished while no twin was watching included, ends accounted for - and
BGMock's own tables agree with the twin's ledger, payment by payment.

The second scenario kills the twin at each named point of a payment's life
(``TWIN_TEST_PAUSE_AT``, a test-only pause: the stored row before the POST, the
bank's 202 not yet recorded, the id recorded but maybe not stored, a Kafka payment's
row stored before its event left) and at a random moment with payments between
their events, nine times over one ledger: every payment the banks and the clearing
hold is the twin's, found again by its unique (payer, bankgood, amount) triple when
its 202 was lost, every REST payment never sent is a certain rejection, every Kafka
payment never produced is produced again, and the books reconcile with no drift.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bgmock_twin.contract import TOPIC_INITIATED
from bgmock_twin.settings.bus import BusSettings
from tests.support.broker import TansuBroker
from tests.support.daemon import Daemon, running_daemon
from tests.support.emulator_process import running_emulator
from tests.support.faultkit import (
    FAST_ENV,
    FLOW,
    KAFKA_FLOW,
    assert_accounted,
    lost_race,
    metric_sum,
    payments,
    simulation,
    start_simulation,
    steps,
    wait_dispatched,
    wait_finished,
    wait_provisioned,
)
from tests.support.ports import wait_for
from tests.support.postgres import PostgresServer, writable_engine

pytestmark = pytest.mark.slow  # started first by make test's workers (conftest)

NOT_SENT = "not sent: the twin stopped before the source bank stored the payment"
# Latency is not the subject here: on a loaded machine a payment may take longer than
# the usual test SLA, and must then still count as the success it is.
SLA = 90.0


def test_sigkill_mid_simulation_resumes_from_ledger_and_offsets(
        tmp_path: Path, kafka_broker: TansuBroker, postgres: PostgresServer) -> None:
    databases = {name: postgres.create_database(f"kill_{name}")
                 for name in ("bank_a", "bank_b", "switch")}
    emulator_env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap,
                    "TWIN_KAFKA_SESSION_TIMEOUT_MS": "6000",
                    "TWIN_EMULATOR_OUTBOX_INTERVAL_SECONDS": "0.2",
                    "TWIN_EMULATOR_DB_BANK_A": databases["bank_a"],
                    "TWIN_EMULATOR_DB_BANK_B": databases["bank_b"],
                    "TWIN_EMULATOR_DB_SWITCH": databases["switch"]}
    with running_emulator(tmp_path, **emulator_env) as bgmock:
        env = {**FAST_ENV, **bgmock.external_env(), **bgmock_databases(databases),
               "TWIN_PAYMENT_SLA_SECONDS": str(SLA),
               "KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap,
               "TWIN_INSTANCE_ID": "killed", "TWIN_DATABASE_URL": f"sqlite:///{tmp_path}/ledger.db"}
        with running_daemon(tmp_path, **env) as first:
            wait_provisioned(first)
            rest = start_simulation(first, count=40, rate=5, channel="rest", name="killed-rest")
            kafka = start_simulation(first, count=12, rate=1.5, channel="kafka",
                                     name="killed-kafka")
            wait_dispatched(first, rest, 15)
            created = datetime.fromisoformat(simulation(first, rest)["createdAt"])
            # the worst moment: 30 ms after a payment left, its rows still in the
            # ledger's write buffer (no API call in between: a read flushes it)
            due = created + timedelta(seconds=17 / 5 + 0.03)
            time.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()))
            first.process.send_signal(signal.SIGKILL)
            late_ms = (datetime.now(UTC) - due).total_seconds() * 1000
            assert first.process.wait(timeout=10) == -signal.SIGKILL
            killed = time.monotonic()
        print(f"SIGKILL {late_ms + 30:.0f} ms after payment 18 of the REST simulation was due")
        # BGMock goes on alone: what was in flight finishes without a twin watching
        restart_at = datetime.now(UTC).isoformat()
        with running_daemon(tmp_path, **env) as second:
            restarted = time.monotonic() - killed
            status = second.get("/api/v1/status").json()["payments"]
            print(f"restarted in {restarted:.1f}s: {status['inFlight']} payments resumed "
                  f"in flight")
            details = {sim: wait_finished(second, sim, timeout=SLA + 90)
                       for sim in (rest, kafka)}
            for sim, flow in ((rest, FLOW), (kafka, KAFKA_FLOW)):
                # a payment may finish on the bank's answer before the follower, busy
                # catching up, has read its last event: every step is waited for
                wait_for(lambda s=sim, f=flow: not incomplete_payments(second, s, f),
                         timeout=60, interval=0.5, message=f"every step of {sim}")
                detail, rows = assert_accounted(second, sim)
                print(f"{detail['channel']}: resumed={detail['resumed']} "
                      f"{dict(Counter(r['status'] for r in rows))} "
                      f"latency {detail['latency']['total']}")
                assert detail["resumed"] is True, detail
                assert detail["dispatched"] == detail["planned"], detail
                assert detail["dropped"] == 0, detail
                assert not incomplete_payments(second, sim, flow)
            # BGMock's optimistic lock may refuse a REST payment (a 500, nothing
            # stored): a certain rejection, the only other end a payment may have here
            every = [row for sim in (rest, kafka) for row in payments(second, sim)]
            refused = [row for row in every if lost_race(row)]
            assert all(row["channel"] == "rest" for row in refused), refused
            assert details[rest]["outcomes"]["success"] + len(refused) == 40
            assert details[kafka]["outcomes"]["success"] == 12
            ledger = {row["transactionId"]: row for row in every if not lost_race(row)}
            # the counters restarted with the process: they hold what it sent itself
            sent_again = sum(1 for row in every if row["intendedAt"] >= restart_at)
            assert metric_sum(second, "bgmock_payments_submitted_total") == sent_again
            assert len(ledger) + len(refused) == 52, (len(ledger), len(refused))

    # BGMock's own records, payment by payment: nothing the twin sent is unknown to it
    at_banks = outgoing_ids(databases["bank_a"]) | outgoing_ids(databases["bank_b"])
    at_clearing = outgoing_ids(databases["switch"])
    rest_ids = {tx for tx, row in ledger.items() if row["channel"] == "rest"}
    kafka_ids = {tx for tx, row in ledger.items() if row["channel"] == "kafka"}
    assert at_banks == rest_ids, (sorted(at_banks - rest_ids), sorted(rest_ids - at_banks))
    assert at_clearing == rest_ids | kafka_ids, sorted(at_clearing ^ (rest_ids | kafka_ids))


def incomplete_payments(twin: Daemon, sim: str, flow: list[str]) -> list[object]:
    """The payments of ``sim`` not finished with every step of ``flow``: BGMock
    worked on, the twin caught up from its committed offsets and the banks' own
    records. A payment whose 202 was lost to the kill is found again at the bank, and
    the events the dead twin consumed are not seen twice: it needs its acceptance
    and its final step."""
    return [(r["status"], steps(r)) for r in payments(twin, sim) if not lost_race(r) and (
            r["status"] != "success" or not (set(steps(r)) == set(flow)
                    or (r["matchedBy"] and {"accepted", flow[-1]} <= set(steps(r)))))]


def outgoing_ids(url: str) -> set[str]:
    engine = writable_engine(url)
    try:
        with engine.connect() as conn:
            return {str(row[0]) for row in conn.execute(
                sa.text("SELECT transaction_id FROM outgoing_transactions"))}
    finally:
        engine.dispose()


def bgmock_databases(databases: dict[str, str]) -> dict[str, str]:
    """The seed's DB_* settings for BGMock's databases, in the seed's plain form."""
    return {"DB_BANK_A": databases["bank_a"], "DB_BANK_B": databases["bank_b"],
            "DB_SWITCH": databases["switch"]}


# (pause point or None for a kill mid-event, the n-th REST payment of the process to
# pause at or the dispatched count to kill at, whether to stay paused until the lost
# payment's events were called foreign); each point twice, at different payments.
# Paused that long (past the tracker's park time), and once the group's offsets are
# committed past those events, only the bank's table can tell its transaction after
# the restart.
KILLS = [("before_post", 3, False), ("after_post", 2, False), ("after_accept", 4, False),
         (None, 5, False), ("after_post", 5, True), ("before_post", 6, False),
         ("after_accept", 2, False), (None, 3, False), ("before_produce", 3, False)]


def test_sigkill_at_every_point_of_a_payment_loses_nothing(
        tmp_path: Path, kafka_broker: TansuBroker, postgres: PostgresServer) -> None:
    databases = {name: postgres.create_database(f"kills_{name}")
                 for name in ("bank_a", "bank_b", "switch")}
    emulator_env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap,
                    "TWIN_KAFKA_SESSION_TIMEOUT_MS": "6000",
                    "TWIN_EMULATOR_OUTBOX_INTERVAL_SECONDS": "0.2",
                    "TWIN_EMULATOR_DB_BANK_A": databases["bank_a"],
                    "TWIN_EMULATOR_DB_BANK_B": databases["bank_b"],
                    "TWIN_EMULATOR_DB_SWITCH": databases["switch"]}
    sims: list[str] = []
    with running_emulator(tmp_path, **emulator_env) as bgmock:
        env = {**FAST_ENV, **bgmock.external_env(), **bgmock_databases(databases),
               "TWIN_PAYMENT_SLA_SECONDS": str(SLA),
               "KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap,
               "TWIN_INSTANCE_ID": "killed-often",
               "TWIN_DATABASE_URL": f"sqlite:///{tmp_path}/ledger.db"}
        for round_no, (point, nth, until_foreign) in enumerate(KILLS):
            pause = {"TWIN_TEST_PAUSE_AT": f"{point}:{nth}"} if point else {}
            with running_daemon(tmp_path, **env, **pause) as twin:
                wait_provisioned(twin)
                channel = "kafka" if point == "before_produce" else "rest"
                sims.append(start_simulation(twin, count=8, rate=4, channel=channel,
                                             name=f"kill-{round_no}"))
                if point is not None:
                    wait_for(lambda t=twin: "test_pause_reached" in t.log(), timeout=60,
                             interval=0.05, message=f"the sender paused at {point}")
                    if until_foreign:  # the last event of the lost payment, unclaimed
                        wait_for(lambda t=twin: metric_sum(
                            t, "bgmock_kafka_messages_total", topic="transactions.completed",
                            origin="foreign") >= 1, timeout=60, interval=0.2,
                            message="the lost payment's completed event called foreign")
                        # ... and the twin committed past its initiated event (commits
                        # follow the ledger's write, asynchronously): only then does the
                        # restarted twin not read that event again
                        wait_for(lambda: kafka_broker.committed_through_end(
                            BusSettings(TWIN_INSTANCE_ID=env["TWIN_INSTANCE_ID"]).consumer_group,
                            TOPIC_INITIATED), timeout=30, interval=0.2,
                            message="the twin's offsets committed past the lost payment")
                else:  # payments between their events, none paused
                    wait_dispatched(twin, sims[-1], nth)
                kill(twin)
        with running_daemon(tmp_path, **env) as last:
            details = {sim: wait_finished(last, sim, timeout=SLA + 90) for sim in sims}
            rows = [row for sim in sims for row in assert_accounted(last, sim)[1]]
            outcomes = Counter((r["status"], r["matchedBy"], r["message"] == NOT_SENT)
                               for r in rows)
            print(f"{len(KILLS)} kills, {len(rows)} payments: {dict(outcomes)}")
            for detail in details.values():
                assert detail["dispatched"] == detail["planned"], detail
            # every payment ended: a success, or refused (never sent, or the service's
            # own refusal); none left stuck or in flight
            unsettled = [r for r in rows if r["status"] not in ("success", "rejected")]
            assert not unsettled, unsettled
            paused_before_post = sum(1 for point, _, _ in KILLS if point == "before_post")
            paused_after_post = sum(1 for point, _, _ in KILLS if point == "after_post")
            assert sum(1 for r in rows if r["message"] == NOT_SENT) >= paused_before_post
            assert sum(1 for r in rows if r["matchedBy"]) >= paused_after_post
            assert any(r["matchedBy"] == "bank_database" for r in rows), outcomes
            report = reconcile(last)
            drift = report["checks"]["balance_drift"]
            assert drift["status"] == "ok", drift
            assert report["checks"]["conservation"]["status"] == "ok", report["checks"]
    # every payment a bank or the clearing holds is one of the twin's, and the other
    # way round (a Kafka payment bypasses the source bank)
    rest_ids = {r["transactionId"] for r in rows if r["transactionId"] and r["channel"] == "rest"}
    kafka_ids = {r["transactionId"] for r in rows if r["channel"] == "kafka"}
    at_banks = outgoing_ids(databases["bank_a"]) | outgoing_ids(databases["bank_b"])
    assert at_banks == rest_ids, (sorted(at_banks - rest_ids), sorted(rest_ids - at_banks))
    at_clearing = outgoing_ids(databases["switch"])
    assert at_clearing == rest_ids | kafka_ids, sorted(at_clearing ^ (rest_ids | kafka_ids))
    assert not [r for r in rows if r["status"] == "success" and not r["transactionId"]]


def test_a_simulation_answered_202_survives_a_sigkill_right_after(tmp_path: Path) -> None:
    """The 202 comes once the simulation's row is stored: killed the moment after,
    the twin still knows every id it gave, and goes on with them."""
    ids = []
    with running_daemon(tmp_path, **FAST_ENV) as twin:
        wait_provisioned(twin)
        for n in range(3):
            ids.append(start_simulation(twin, count=400, rate=2, name=f"killed-after-{n}"))
        kill(twin)
    with running_daemon(tmp_path, **FAST_ENV) as again:
        for sim in ids:
            answer = again.get(f"/api/v1/simulations/{sim}")
            assert answer.status_code == 200, (sim, answer.text)
            wait_for(lambda s=sim: simulation(again, s)["resumed"], timeout=30,  # type: ignore[misc]
                     message=f"simulation {sim} resumed")


def kill(twin: Daemon) -> None:
    twin.process.send_signal(signal.SIGKILL)
    assert twin.process.wait(timeout=10) == -signal.SIGKILL


def reconcile(twin: Daemon) -> dict[str, Any]:
    """A reconciliation run now, once nothing the twin sent is still in flight."""
    answer = twin.post("/api/v1/reconciliation/run")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body
