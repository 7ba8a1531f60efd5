"""The README's books demo on a real daemon: a fault injected through the control
API lights up the matching check within a reconciliation interval, with the
offending account as evidence; bad fault requests are 422."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from tests.support.daemon import running_daemon
from tests.support.ports import wait_for


def test_corrupted_balance_lights_up_balance_drift(tmp_path: Path) -> None:
    with running_daemon(tmp_path, TWIN_LOAD_RATE="1", TWIN_RECONCILE_INTERVAL_SECONDS="2",
                        TWIN_EMULATOR_OUTBOX_INTERVAL_SECONDS="0.2") as daemon:
        wait_for(lambda: daemon.get("/api/v1/reconciliation").json()
                 .get("checks", {}).get("balance_drift", {}).get("status") == "ok",
                 timeout=30, message="a clean reconciliation first")
        answer = daemon.post("/api/v1/emulator/faults", {
            "service": "bank_b",
            "corruptBalance": {"accountNumber": "TWIN-B-002", "delta": "7.25"}})
        assert answer.status_code == 200, answer.text
        assert "newBalance" in answer.json()

        def drift_reported() -> dict[str, object] | None:
            report = daemon.get("/api/v1/reconciliation").json()
            check = report["checks"]["balance_drift"]
            return report if check["status"] == "violated" else None

        report = wait_for(drift_reported, timeout=20, interval=0.2, message="balance_drift")
        evidence = json.dumps(report["checks"]["balance_drift"])
        assert "TWIN-B-002" in evidence and "7.25" in evidence
        assert daemon.metric("bgmock_invariant_violations", check="balance_drift") >= 1
        assert daemon.metric("bgmock_balance_drift", bank="bank_b") == 7.25

        for bad in ({"service": "clearing", "corruptBalance": {"accountNumber": "x",
                                                               "delta": "1"}},
                    {"service": "bank_a", "corruptBalance": {"accountNumber": "NOPE-1",
                                                             "delta": "1"}},
                    {"service": "bank_a", "corruptBalance": {"accountNumber": "TWIN-A-001",
                                                             "delta": "0.001"}}):
            assert daemon.post("/api/v1/emulator/faults", bad).status_code == 422, bad
        dropped = daemon.post("/api/v1/emulator/faults",
                              {"target": "clearing", "drop_outbox_row": True})
        assert dropped.status_code == 200 and "droppedOutboxRow" in dropped.json()
        # the names of earlier versions still work: the same fault, undone
        undone = daemon.post("/api/v1/emulator/faults", {
            "target": "bank_b",
            "corrupt_balance": {"account_number": "TWIN-B-002", "delta": "-7.25"}})
        assert undone.status_code == 200, undone.text
        assert Decimal(undone.json()["newBalance"]) >= 0
