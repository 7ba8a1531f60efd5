"""The twin's own concurrent load meets BGMock's optimistic locking, end to end.

A real ``bgmock-twin run`` (embedded emulator) sends simulations both ways between
two accounts per bank, so every payer is also a payee: a payment's reservation
races the listeners' credits and settlements on the same account, and some lose
with a 500, as in BGMock. The twin must call each of those a certain rejection by
the bank (nothing reserved, no transaction id), count it, and keep its books exact:
the reconciliation that follows finds no drift and no violation at all.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.daemon import running_daemon
from tests.support.faultkit import (
    FAST_ENV,
    assert_accounted,
    assert_counters_agree,
    metric_sum,
    payments,
    start_simulation,
    steps,
    wait_finished,
    wait_provisioned,
)
from tests.support.ports import wait_for

OUTGOING = "/bank/transaction/outgoing"
MAX_ROUNDS = 6


def test_optimistic_lock_500s_are_certain_rejections_and_the_books_stay_exact(
    tmp_path: Path,
) -> None:
    env = {**FAST_ENV, "TWIN_PAYMENT_SLA_SECONDS": "60", "TWIN_STEP_DEADLINE_SECONDS": "30"}
    with running_daemon(tmp_path, **env) as daemon:
        wait_provisioned(daemon)
        sent = 0
        sims: list[str] = []
        for _ in range(MAX_ROUNDS):  # bounded: the races come at a rate, not on cue
            sim = start_simulation(daemon, count=200, rate=40, channel="rest",
                                   direction="both", name="optimistic")
            sims.append(sim)
            detail = wait_finished(daemon, sim, timeout=120)
            sent += detail["dispatched"]
            if metric_sum(daemon, "bgmock_rest_requests_total", route=OUTGOING,
                          code="500") >= 3:
                break
        lost = metric_sum(daemon, "bgmock_rest_requests_total", route=OUTGOING, code="500")
        emulator_lost = metric_sum(daemon, "bgmock_emulator_optimistic_lock_failures_total",
                                   origin="rest")
        listener_lost = metric_sum(daemon, "bgmock_emulator_optimistic_lock_failures_total",
                                   origin="listener")
        print(f"{sent} payments, {lost:.0f} lost the race on REST "
              f"({100 * lost / max(sent, 1):.2f} %), {listener_lost:.0f} listener retries")
        assert lost >= 3, "no optimistic-lock 500 under the twin's own load"
        assert emulator_lost >= lost  # every 500 on a payment was a lost race

        refused = []
        for sim in sims:
            _detail, rows = assert_accounted(daemon, sim)
            for row in rows:
                assert row["status"] in ("success", "rejected"), row
                if row["status"] == "rejected":
                    refused.append(row)
        assert len(refused) == lost
        for row in refused:
            # refused by the bank itself: no transaction id, nothing reserved, certain
            assert row["message"] == "not accepted by bank_a: http_500" or \
                row["message"] == "not accepted by bank_b: http_500", row
            assert row["transactionId"] is None and row["countedOutcome"] == "rejected", row
            assert steps(row) == [], row
        assert_counters_agree(daemon)
        assert len(payments(daemon)) == sent

        def clean() -> dict[str, object] | None:
            answer = daemon.post("/api/v1/reconciliation/run")
            assert answer.status_code == 200, answer.text
            report: dict[str, object] = answer.json()
            return report if report["violations"] == 0 else None

        report = wait_for(clean, timeout=30, interval=1, message="a clean reconciliation")
        checks = report["checks"]
        assert isinstance(checks, dict)
        for check in ("balance_drift", "conservation", "reserved_bounds"):
            assert checks[check]["status"] == "ok", (check, checks[check])
        for bank in ("bank_a", "bank_b"):
            assert daemon.metric("bgmock_balance_drift", bank=bank) == 0.0
