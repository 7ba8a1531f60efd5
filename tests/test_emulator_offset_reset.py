"""BGMock's consumers start at ``latest``: after the broker lost its data, an event
published before a consumer rejoined is never read, and the twin must say so.

A real ``bgmock-twin run`` (embedded emulator) on a real broker (Tansu, which keeps
everything in memory: a restart loses every record and committed offset). The
clearing's consumers are held (the emulator's ``paused`` fault: they do not poll,
so they cannot rejoin) while the broker restarts empty and a payment's initiated
event reaches the new log; then they rejoin as a group the broker does not know,
start at the end, and skip it. BGMock keeps that payment PENDING forever with its
amount reserved; the twin, which read the event, reports it stuck waiting for
``forwarded``, counts it stuck after the SLA, and its reconciliation names it as a
stale PENDING transaction. A payment sent after the rejoin goes through.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.broker import TansuBroker
from tests.support.daemon import Daemon, running_daemon
from tests.support.faultkit import FAST_ENV, embedded_urls, service_up, steps, wait_provisioned
from tests.support.ports import wait_for

pytestmark = pytest.mark.slow  # started first by make test's workers (conftest)

SLA = 12.0


def _pay(daemon: Daemon) -> str:
    answer = daemon.post("/api/v1/transactions", {"fromBank": "a", "toBank": "b",
                                                  "amount": "12.34"})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["paymentId"])


def _payment(daemon: Daemon, payment_id: str) -> dict[str, Any]:
    answer = daemon.get(f"/api/v1/transactions/{payment_id}")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def _fault(daemon: Daemon, **body: Any) -> None:
    answer = daemon.post("/api/v1/emulator/faults", {"service": "clearing", **body})
    assert answer.status_code == 200, answer.text


def test_events_published_before_the_clearing_rejoins_are_lost_and_reported_stuck(
    tmp_path: Path, kafka_broker: TansuBroker,
) -> None:
    env = {**FAST_ENV, "KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap,
           "TWIN_PAYMENT_SLA_SECONDS": str(SLA)}
    with running_daemon(tmp_path, **env) as daemon:
        wait_for(lambda: service_up(daemon, "kafka") == 1.0, timeout=20, message="kafka up")
        wait_provisioned(daemon)
        before = _pay(daemon)
        wait_for(lambda: _payment(daemon, before)["status"] == "success", timeout=30,
                 interval=0.2, message="a payment before the broker restart")

        _fault(daemon, paused=True)
        kafka_broker.stop()
        kafka_broker.start()  # an empty broker: no record, no committed offset
        wait_for(lambda: daemon.get("/api/v1/status").json()["payments"]["kafkaConnected"],
                 timeout=30, interval=0.2, message="the twin's follower on the new broker")
        lost = _pay(daemon)
        # the bank published it to the new log and the twin read it there
        wait_for(lambda: "initiated" in steps(_payment(daemon, lost)), timeout=30,
                 interval=0.2, message="the initiated event on the new broker")
        _fault(daemon, paused=False)

        # payments published before the clearing has rejoined are lost too: send one
        # every two seconds until one goes through (the rejoin takes a moment)
        def one_through() -> str | None:
            wanted = [_pay(daemon)]
            for _ in range(10):
                if _payment(daemon, wanted[0])["status"] == "success":
                    return wanted[0]
                time.sleep(0.2)
            return None

        wait_for(one_through, timeout=60, interval=0, message="a payment after the rejoin")

        # BGMock never handles the lost one: PENDING at the bank, unknown to the clearing
        urls = embedded_urls(daemon)
        row = _payment(daemon, lost)
        tx = row["transactionId"]
        outgoing = requests.get(f"{urls['bank_a']}/bank/transaction/outgoing/{tx}", timeout=5)
        assert outgoing.status_code == 200 and outgoing.json()["status"] == "PENDING"
        assert requests.get(f"{urls['clearing']}/clearing/transaction/{tx}",
                            timeout=5).status_code == 404

        # the twin reports it: stuck at forwarded, then counted stuck after the SLA
        stuck = wait_for(lambda: (lambda p: p if p["status"] == "stuck" else None)(
            _payment(daemon, lost)), timeout=SLA + 30, interval=0.5,
            message="the lost payment counted stuck")
        assert stuck["stuckStep"] == "forwarded", stuck
        assert stuck["countedOutcome"] == "stuck", stuck
        assert steps(stuck) == ["accepted", "initiated"], stuck

        def stale_reported() -> dict[str, Any] | None:
            answer = daemon.post("/api/v1/reconciliation/run")
            assert answer.status_code == 200, answer.text
            check = answer.json()["checks"]["stale_pending"]
            named = [v for v in check.get("offending", [])
                     if str(tx) in str(v)]
            return check if named else None

        wait_for(stale_reported, timeout=30, interval=1,
                 message="reconciliation names the lost payment as stale PENDING")
