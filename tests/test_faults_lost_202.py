"""Fault: the source bank's 202 never reaches the twin (a read timeout).

A proxy in front of Bank A holds every answer longer than the twin's REST timeout,
so each POST reaches the bank, which stores and reserves the payment and publishes
it, while the twin sees only a timeout. Without its transaction id such a payment
used to be unknown to the twin for good while BGMock moved its money. Now the twin
finds it again by its (payer, bankgood, amount) triple, unique among its payments
in flight, from the ``transactions.initiated`` event nobody else claims: it is
followed to the end and the ledger says it was matched that way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import TansuBroker
from tests.support.daemon import running_daemon
from tests.support.emulator_process import running_emulator
from tests.support.faultkit import FAST_ENV, metric_sum, steps, wait_provisioned
from tests.support.ports import wait_for
from tests.support.proxy import TcpProxy

pytestmark = pytest.mark.slow  # started first by make test's workers (conftest)

REST_TIMEOUT = 2.0
LOST = 4


def test_payments_whose_202_was_lost_are_found_again_and_followed(
        tmp_path: Path, kafka_broker: TansuBroker) -> None:
    with running_emulator(tmp_path, KAFKA_BOOTSTRAP_SERVERS=kafka_broker.bootstrap,
                          TWIN_KAFKA_SESSION_TIMEOUT_MS="6000",
                          TWIN_EMULATOR_OUTBOX_INTERVAL_SECONDS="0.2") as bgmock:
        proxy = TcpProxy(bgmock.ports["bank_a"])
        try:
            env = {**FAST_ENV, **bgmock.external_env(),
                   "BANK_A_URL": f"http://127.0.0.1:{proxy.port}",
                   "KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap,
                   "TWIN_REST_TIMEOUT_SECONDS": str(REST_TIMEOUT),
                   "TWIN_DATABASE_URL": f"sqlite:///{tmp_path}/ledger.db"}
            with running_daemon(tmp_path, **env) as twin:
                wait_provisioned(twin)
                wait_for(lambda: twin.get("/api/v1/status").json()["payments"]["following"],
                         timeout=30, interval=0.2, message="the follower positioned")
                proxy.latency = REST_TIMEOUT + 1.5  # every answer of Bank A comes too late
                sent = []
                for _ in range(LOST):
                    answer = twin.post("/api/v1/transactions", {"fromBank": "a"})
                    assert answer.status_code == 202, answer.text
                    sent.append(answer.json()["paymentId"])
                proxy.latency = 0.0

                def followed(payment_id: str) -> dict[str, Any] | None:
                    body: dict[str, Any] = twin.get(
                        f"/api/v1/transactions/{payment_id}").json()
                    return body if body["status"] == "success" else None

                payments = [wait_for(lambda p=p: followed(p), timeout=60, interval=0.25,
                                     message=f"payment {p} followed to the end")
                            for p in sent]
                for payment in payments:
                    assert payment["matchedBy"] == "initiated_event", payment
                    assert payment["transactionId"], payment
                    assert {"accepted", "initiated", "completed", "settled"} \
                        <= set(steps(payment)), payment
                assert len({p["transactionId"] for p in payments}) == LOST
                assert len({(p["fromAccountNumber"], p["toBankgoodNumber"], p["amount"])
                            for p in payments}) == LOST
                assert metric_sum(twin, "bgmock_payments_rematched_total",
                                  matched_by="initiated_event") == LOST
                assert metric_sum(twin, "bgmock_payments_unconfirmed") == 0
                timeouts = metric_sum(twin, "bgmock_rest_requests_total", service="bank_a",
                                      method="POST", code="timeout")
                assert timeouts >= LOST, timeouts
        finally:
            proxy.close()
