"""What every fault scenario needs: short intervals, simulations, and the accounting
check that no payment vanished.

All of it reads what the twin *reports* (``/metrics``, ``/api/v1/status``,
``/api/v1/simulations/{id}``, ``/api/v1/transactions``), never its insides.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from tests.support.daemon import Daemon
from tests.support.ports import wait_for

HEALTH_INTERVAL = 1.0
PROBE_TIMEOUT = 1.0
STEP_DEADLINE = 3.0
SLA = 25.0
# a probe runs every interval and takes at most the probe timeout; the slack covers
# scheduling on a busy 2-core machine and the /metrics polling itself
DETECTION_BOUND = HEALTH_INTERVAL + PROBE_TIMEOUT + 1.5

FAST_ENV = {
    "TWIN_HEALTH_INTERVAL_SECONDS": str(HEALTH_INTERVAL),
    "TWIN_PROBE_TIMEOUT_SECONDS": str(PROBE_TIMEOUT),
    "TWIN_RECONCILE_INTERVAL_SECONDS": "2",
    "TWIN_LAG_INTERVAL_SECONDS": "2",
    "TWIN_STEP_DEADLINE_SECONDS": str(STEP_DEADLINE),
    "TWIN_PAYMENT_SLA_SECONDS": str(SLA),
    "TWIN_KAFKA_SESSION_TIMEOUT_MS": "6000",
    "TWIN_LOAD_RATE": "0",
    "TWIN_EMULATOR_OUTBOX_INTERVAL_SECONDS": "0.2",
    "TWIN_REST_TIMEOUT_SECONDS": "2",
    "TWIN_ACCOUNTS_PER_BANK": "2",
}
FINISHED = {"success", "failed", "rejected"}
UNFINISHED = {"in_flight", "stuck"}
FLOW = ["accepted", "initiated", "forwarded", "processed", "completed", "settled"]
KAFKA_FLOW = ["initiated", "forwarded", "processed", "completed"]


def service_up(daemon: Daemon, service: str) -> float | None:
    return daemon.metric("bgmock_service_up", service=service)


def wait_provisioned(daemon: Daemon, timeout: float = 30) -> None:
    wait_for(lambda: daemon.get("/api/v1/status").json()["payments"]["provisioned"],
             timeout=timeout, interval=0.2, message="twin accounts provisioned")


def start_simulation(daemon: Daemon, **body: Any) -> str:
    answer = daemon.post("/api/v1/simulations", body)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def simulation(daemon: Daemon, sim_id: str) -> dict[str, Any]:
    answer = daemon.get(f"/api/v1/simulations/{sim_id}")
    assert answer.status_code == 200, answer.text
    detail: dict[str, Any] = answer.json()
    return detail


def wait_dispatched(daemon: Daemon, sim_id: str, at_least: int, timeout: float = 30) -> None:
    wait_for(lambda: simulation(daemon, sim_id)["dispatched"] >= at_least, timeout=timeout,
             interval=0.1, message=f"{at_least} payments of {sim_id} dispatched")


def wait_finished(daemon: Daemon, sim_id: str, timeout: float) -> dict[str, Any]:
    """The simulation once every payment is counted (finished, or stuck past the SLA)."""
    def finished() -> dict[str, Any] | None:
        detail = simulation(daemon, sim_id)
        return detail if detail["state"] == "finished" else None

    return wait_for(finished, timeout=timeout, interval=0.25, message=f"simulation {sim_id}")


def payments(daemon: Daemon, sim_id: str | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"limit": 10_000}
    if sim_id is not None:
        params["simulation"] = sim_id
    answer = daemon.get("/api/v1/transactions", params=params)
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def steps(payment: dict[str, Any]) -> list[str]:
    return [entry["step"] for entry in payment["timeline"]]


def metric_sum(daemon: Daemon, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(daemon.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                total += sample.value
    return total


def assert_accounted(daemon: Daemon, sim_id: str) -> tuple[dict[str, Any],
                                                            list[dict[str, Any]]]:
    """Every payment of the simulation has an outcome or an honest unfinished state,
    and the twin's counters agree with its ledger. Returns (detail, payments)."""
    detail = simulation(daemon, sim_id)
    rows = payments(daemon, sim_id)
    progress = detail["progress"]
    assert progress["dispatched"] + progress["dropped"] + progress["notYetDue"] \
        == detail["planned"], progress
    assert len(rows) == progress["dispatched"] == progress["recorded"], \
        (len(rows), progress)
    for row in rows:
        assert row["status"] in FINISHED | UNFINISHED, row
        if row["status"] in FINISHED:
            assert row["outcome"] == row["status"] and row["finishedAt"], row
        else:
            # unfinished is only honest with the step it waits for named once stuck
            assert row["outcome"] is None, row
            if row["status"] == "stuck":
                assert row["stuckStep"] is not None, row
    statuses = Counter(row["status"] for row in rows)
    assert sum(detail["outcomes"].values()) == sum(1 for r in rows if r["countedOutcome"]), \
        (detail["outcomes"], statuses)
    return detail, rows


def assert_counters_agree(daemon: Daemon) -> dict[str, Any]:
    """submitted == counted outcomes + payments not counted yet, on /metrics, on
    /api/v1/status and in the ledger alike."""
    all_rows = payments(daemon)
    status = daemon.get("/api/v1/status").json()["payments"]
    submitted = metric_sum(daemon, "bgmock_payments_submitted_total")
    counted = metric_sum(daemon, "bgmock_payments_completed_total")
    uncounted = sum(1 for row in all_rows if row["countedOutcome"] is None)
    assert submitted == status["submitted"] == len(all_rows), \
        (submitted, status["submitted"], len(all_rows))
    assert counted == sum(status["outcomes"].values()), (counted, status["outcomes"])
    assert submitted == counted + uncounted, (submitted, counted, uncounted)
    live = sum(1 for row in all_rows if row["status"] in UNFINISHED)
    assert status["inFlight"] == live, (status["inFlight"], live)
    return status


def elapsed_since(start: float) -> float:
    return round(time.monotonic() - start, 2)


def embedded_urls(daemon: Daemon) -> dict[str, str]:
    """The URLs of the daemon's embedded emulator, from its start-up log line."""
    import json

    for line in daemon.log().splitlines():
        if line.startswith("{") and '"embedded_bgmock_started"' in line:
            urls: dict[str, str] = json.loads(line)["urls"]
            return urls
    raise AssertionError("the daemon did not log its embedded emulator's URLs")


def bgmock_status(urls: dict[str, str], payment: dict[str, Any]) -> str | None:
    """What BGMock itself says about a payment: the source bank's outgoing status
    (REST channel) or the clearing's (Kafka channel); None if it has no record."""
    import requests

    tx = payment["transactionId"]
    if payment["channel"] == "rest":
        bank = "bank_a" if payment["fromClearingNumber"] == "01" else "bank_b"
        answer = requests.get(f"{urls[bank]}/bank/transaction/outgoing/{tx}", timeout=5)
    else:
        answer = requests.get(f"{urls['clearing']}/clearing/transaction/{tx}", timeout=5)
    if answer.status_code == 404:
        return None
    answer.raise_for_status()
    status: str = answer.json()["status"]
    return status


def step_at(payment: dict[str, Any], step: str) -> str | None:
    for entry in payment["timeline"]:
        if entry["step"] == step:
            return str(entry["at"])
    return None


def awaited_step(payment: dict[str, Any]) -> str:
    """The step after the furthest one seen: what an unfinished payment waits for."""
    flow = FLOW if payment["channel"] == "rest" else KAFKA_FLOW
    seen = [flow.index(s) for s in steps(payment) if s in flow]
    return flow[max(seen) + 1] if seen else flow[0]


def lost_race(row: dict[str, Any]) -> bool:
    """The bank's 500 for a payment whose versioned write on its payer lost a race with
    a credit or settlement (BGMock's optimistic lock): certain, nothing stored."""
    return (row["status"] == "rejected" and row["transactionId"] is None
            and (row["message"] or "").endswith(": http_500"))
