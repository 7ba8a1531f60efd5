"""External mode without Kafka: the twin still sends payments and finds every outcome
by REST polling, within its request budget, and says what it cannot see.

As a team whose network policy keeps the twin away from BGMock's Kafka would run it:
``bgmock-twin emulate`` as its own process (its events on the in-process bus, out
of the twin's reach), and a real ``bgmock-twin run`` given only the three REST URLs
and no ``KAFKA_BOOTSTRAP_SERVERS``. Each URL points at a counting proxy in front of
the emulator, so the test counts the GETs BGMock really receives.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.daemon import Daemon, running_daemon
from tests.support.emulator_process import EmulatorProcess, running_emulator
from tests.support.faultkit import lost_race, payments, start_simulation, steps, wait_finished
from tests.support.http_counter import CountingProxy
from tests.support.ports import wait_for

pytestmark = pytest.mark.slow  # started first by make test's workers (conftest)

TOKEN = "rest-polling-token-0123456789"
BUDGET = 6  # status GETs per second: low, so that the run has to respect it
EVENT_STEPS = ["initiated", "forwarded", "processed", "completed"]
# what REST reveals of each deliberate failure: the bank refuses insufficient funds
# (FAILED at once, unknown to the clearing); the clearing fails the other two
EXPECTED = {"normal": "success", "insufficient_funds": "rejected",
            "unknown_bankgood": "failed", "unknown_payee_account": "failed"}
STATUS_PATHS = ("/bank/transaction/outgoing/", "/clearing/transaction/")


@pytest.fixture(scope="module")
def bgmock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[EmulatorProcess, dict[str, CountingProxy]]]:
    """The emulator process (no Kafka anywhere) behind one counting proxy per service."""
    tmp_path: Path = tmp_path_factory.mktemp("rest-polling-bgmock")
    # not a test of BGMock's optimistic lock: no 500s from its load-to-flush window, so
    # every deliberate failure reaches the step it is meant to fail at
    with running_emulator(tmp_path, TWIN_EMULATOR_OUTBOX_INTERVAL_SECONDS="0.3",
                          TWIN_EMULATOR_FLUSH_WINDOW_SECONDS="0") as emulator:
        proxies = {name: CountingProxy(emulator.ports[name])
                   for name in ("bank_a", "bank_b", "clearing")}
        try:
            yield emulator, proxies
        finally:
            for proxy in proxies.values():
                proxy.close()


def twin_env(proxies: dict[str, CountingProxy], **overrides: str) -> dict[str, str]:
    """A twin pointed at the three REST URLs, with no KAFKA_BOOTSTRAP_SERVERS."""
    return {"BANK_A_URL": proxies["bank_a"].url, "BANK_B_URL": proxies["bank_b"].url,
            "CLEARING_SERVICE_URL": proxies["clearing"].url, "TWIN_MODE": "external",
            "TWIN_CONTROL_TOKEN": TOKEN, "TWIN_PAYMENT_SLA_SECONDS": "60",
            "TWIN_STEP_DEADLINE_SECONDS": "30", "TWIN_ACCOUNTS_PER_BANK": "2",
            "TWIN_RECONCILE_INTERVAL_SECONDS": "2", **overrides}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory,
          bgmock: tuple[EmulatorProcess, dict[str, CountingProxy]]) -> Iterator[
        tuple[Daemon, dict[str, CountingProxy], EmulatorProcess]]:
    emulator, proxies = bgmock
    tmp_path: Path = tmp_path_factory.mktemp("rest-polling-twin")
    env = twin_env(proxies, TWIN_INSTANCE_ID="no-kafka", TWIN_LOAD_RATE="0.5",
                   TWIN_REST_POLL_BUDGET=str(BUDGET))
    with running_daemon(tmp_path, **env) as twin:
        yield twin, proxies, emulator


def _status_gets(proxies: dict[str, CountingProxy]) -> list[float]:
    return sorted(at for proxy in proxies.values() for prefix in STATUS_PATHS
                  for at in proxy.seen("GET", prefix))


def test_a_simulation_runs_to_the_end_with_every_outcome_found_by_rest(
        setup: tuple[Daemon, dict[str, CountingProxy], EmulatorProcess]) -> None:
    twin, _, _ = setup
    wait_for(lambda: twin.get("/api/v1/status").json()["payments"]["provisioned"],
             timeout=60, interval=0.2, message="twin accounts provisioned")
    sim_id = start_simulation(twin, count=40, rate=8, failureShare=0.5, name="no-kafka")
    detail = wait_finished(twin, sim_id, timeout=180)
    assert detail["dispatched"] == 40 and detail["dropped"] == 0, detail
    assert detail["unfinished"] == 0, detail

    items = payments(twin, sim_id)
    assert len(items) == 40
    kinds = Counter(p["kind"] for p in items)
    assert set(kinds) == set(EXPECTED), kinds  # every deliberate failure kind was sent
    for payment in items:
        assert payment["notObserved"] == EVENT_STEPS, payment
        if payment["kind"] == "normal" and lost_race(payment):
            assert steps(payment) == [], payment  # refused by BGMock's optimistic lock
            continue
        assert payment["status"] == EXPECTED[payment["kind"]], payment
        seen = steps(payment)
        assert not set(seen) & set(EVENT_STEPS), payment  # never invented
        if payment["status"] == "rejected":
            assert seen == ["accepted"] and payment["transactionId"], payment
        else:  # success and failed were both seen settled, timed on the twin's clock
            assert seen == ["accepted", "settled"], payment
            assert payment["durationSeconds"] > 0 and payment["finalStatus"], payment
    # the simulation's latency has what REST timed, and nothing of the steps unseen
    steps_timed = {name for name, p in detail["latency"]["steps"].items() if p["count"]}
    assert steps_timed <= {"accepted", "settled"}, detail["latency"]
    assert detail["latency"]["total"]["count"] > 0

    # one payment looked up by its transaction id says the same
    one = twin.get(f"/api/v1/transactions/{items[0]['transactionId']}").json()
    assert one["notObserved"] == EVENT_STEPS

    # the background canary ran too, and its payments reached an outcome
    def canary_done() -> bool:
        return any(p["simulationId"] is None and p["status"] == "success"
                   for p in payments(twin))

    wait_for(canary_done, timeout=60, interval=0.5, message="a canary payment settled")

    # the books keep working on REST-observed outcomes: nothing drifts
    def reconciled() -> dict[str, Any] | None:
        answer = requests.post(twin.url + "/api/v1/reconciliation/run", timeout=60,
                               headers=twin.headers())
        assert answer.status_code == 200, answer.text
        report: dict[str, Any] = answer.json()
        checks = report["checks"]
        return report if checks["balance_drift"]["status"] == "ok" \
            and checks["conservation"]["status"] == "ok" else None

    wait_for(reconciled, timeout=60, interval=1, message="books reconcile")


def test_polling_stays_within_its_request_budget(
        setup: tuple[Daemon, dict[str, CountingProxy], EmulatorProcess]) -> None:
    twin, proxies, _ = setup
    gets = _status_gets(proxies)
    assert gets, "no status GET reached BGMock"
    # a token bucket of BUDGET a second holding at most one second's worth: no window
    # of w seconds ever sees more than BUDGET * (w + 1) GETs (+2 for the jitter of
    # the way from taking a token to the request's arrival). Measured here: 66 GETs,
    # at most 12 in one second and 23 in three, so the run did press on the budget.
    for window in (1.0, 3.0, 10.0):
        j = 0
        for i, start in enumerate(gets):
            while j < len(gets) and gets[j] < start + window:
                j += 1
            assert j - i <= BUDGET * (window + 1) + 2, (window, j - i)
    # bounded per payment too: far fewer GETs than a poll every 50 ms would make
    submitted = twin.get("/api/v1/status").json()["payments"]["submitted"]
    assert len(gets) <= submitted * 8, (len(gets), submitted)
    assert twin.get("/api/v1/status").json()["payments"]["pollRequests"] >= len(gets) * 0.9


def test_the_kafka_channel_is_refused_naming_why(
        setup: tuple[Daemon, dict[str, CountingProxy], EmulatorProcess]) -> None:
    twin, _, _ = setup
    one = twin.post("/api/v1/transactions", {"channel": "kafka"})
    assert one.status_code == 409, one.text
    assert "KAFKA_BOOTSTRAP_SERVERS" in one.text and "kafka channel" in one.text
    many = twin.post("/api/v1/simulations", {"count": 5, "rate": 1, "channel": "kafka"})
    assert many.status_code == 409, many.text
    assert "KAFKA_BOOTSTRAP_SERVERS" in many.text
    assert all(s["channel"] == "rest" for s in
               twin.get("/api/v1/simulations").json()["items"])  # nothing was started


def test_status_log_and_info_metric_name_the_mode(
        setup: tuple[Daemon, dict[str, CountingProxy], EmulatorProcess]) -> None:
    twin, _, _ = setup
    status = twin.get("/api/v1/status").json()
    assert status["mode"] == "external"
    assert status["following"] == "rest_polling"
    assert status["notObserved"] == EVENT_STEPS
    assert status["channels"] == ["rest"]
    assert status["payments"]["following"] is True
    assert status["payments"]["kafkaConnected"] is False
    assert twin.metric("bgmock_twin_info", mode="external", following="rest_polling",
                       instance_id="no-kafka") == 1.0
    lines = [json.loads(line) for line in twin.log().splitlines()
             if line.startswith("{") and '"twin_mode"' in line]
    assert len(lines) == 1, lines
    assert lines[0]["following"] == "rest_polling"
    assert lines[0]["not_observed"] == EVENT_STEPS
    assert "KAFKA_BOOTSTRAP_SERVERS" in lines[0]["reason"]
    # ready, honestly: the threads that send and poll run
    assert twin.get("/readyz").status_code == 200


def test_a_restarted_twin_without_kafka_follows_the_payments_it_left_in_flight(
        bgmock: tuple[EmulatorProcess, dict[str, CountingProxy]], tmp_path: Path) -> None:
    """Stopped mid-simulation, the twin leaves accepted payments unsettled in its
    ledger; started again, it polls them (and sends the rest of the run) until each
    has its outcome. Its own accounts (another prefix) keep it apart from the twin
    of the tests above."""
    _, proxies = bgmock
    env = twin_env(proxies, TWIN_INSTANCE_ID="no-kafka-restart", TWIN_ACCOUNT_PREFIX="TWINR",
                   TWIN_LOAD_RATE="0", TWIN_DATABASE_URL=f"sqlite:///{tmp_path}/ledger.db")
    with running_daemon(tmp_path, **env) as first:
        wait_for(lambda: first.get("/api/v1/status").json()["payments"]["provisioned"],
                 timeout=60, interval=0.2, message="twin accounts provisioned")
        sim_id = start_simulation(first, count=30, rate=10, name="restart")
        wait_for(lambda: first.get(f"/api/v1/simulations/{sim_id}").json()["dispatched"]
                 >= 12, timeout=60, interval=0.05, message="12 payments sent")
        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(60) == 0
    with running_daemon(tmp_path, **env) as second:
        detail = wait_finished(second, sim_id, timeout=180)
        resumed = [json.loads(line) for line in second.log().splitlines()
                   if '"tracking_resumed"' in line]
        assert resumed and resumed[0]["payments_in_flight"] > 0, second.log()[-2000:]
        assert detail["unfinished"] == 0, detail
        items = payments(second, sim_id)
        assert detail["dispatched"] + detail["dropped"] == 30, detail
        assert len(items) == detail["dispatched"]
        for payment in items:
            if lost_race(payment):
                continue  # refused by BGMock's optimistic lock: nothing to follow
            assert payment["status"] == "success", payment
            assert steps(payment) == ["accepted", "settled"], payment


def test_a_payment_late_to_settle_says_where_the_clearing_has_it(
        bgmock: tuple[EmulatorProcess, dict[str, CountingProxy]], tmp_path: Path) -> None:
    """Bank B's consumers paused: the payment waits at the clearing (PENDING there).
    Without Kafka the twin cannot see the steps, but past the step deadline it asks
    the clearing and shows its answer, timed on its own clock; once Bank B resumes,
    the payment settles as usual."""
    emulator, proxies = bgmock
    admin = emulator.urls["admin"] + "/_emulator/faults"
    env = twin_env(proxies, TWIN_INSTANCE_ID="no-kafka-stuck", TWIN_ACCOUNT_PREFIX="TWINS",
                   TWIN_LOAD_RATE="0", TWIN_STEP_DEADLINE_SECONDS="2")
    with running_daemon(tmp_path, **env) as twin:
        wait_for(lambda: twin.get("/api/v1/status").json()["payments"]["provisioned"],
                 timeout=60, interval=0.2, message="twin accounts provisioned")
        paused = requests.post(admin, json={"service": "bank_b", "paused": True}, timeout=10)
        assert paused.status_code == 200, paused.text
        try:
            sent = twin.post("/api/v1/transactions", {"fromBank": "a", "toBank": "b"})
            assert sent.status_code == 202, sent.text
            payment_id = sent.json()["paymentId"]

            def diagnosed() -> dict[str, Any] | None:
                view: dict[str, Any] = twin.get(f"/api/v1/transactions/{payment_id}").json()
                return view if view["clearing"] is not None else None

            view = wait_for(diagnosed, timeout=60, interval=0.25, message="clearing asked")
            assert view["status"] == "in_flight" and view["stuckStep"] == "settled", view
            assert view["clearing"]["status"] == "PENDING", view
            assert view["clearing"]["sinceIntendedSeconds"] >= 2.0, view
            assert steps(view) == ["accepted"]
        finally:
            resumed = requests.post(admin, json={"service": "bank_b", "paused": False},
                                    timeout=10)
            assert resumed.status_code == 200, resumed.text

        def settled() -> dict[str, Any] | None:
            view: dict[str, Any] = twin.get(f"/api/v1/transactions/{payment_id}").json()
            return view if view["status"] == "success" else None

        done = wait_for(settled, timeout=90, interval=0.5, message="settled after the pause")
        assert steps(done) == ["accepted", "settled"] and done["stuckStep"] is None
