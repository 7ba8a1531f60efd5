"""Fault: a bank and the clearing stop answering, answer slowly, answer 500, answer
garbage - both at once, while payments are sent.

A real ``bgmock-twin run`` with its embedded emulator on Tansu. For each fault the
twin must report both services down with the right reason, report each payment's
outcome honestly (refused payments are ``rejected`` naming the service and why; a
payment whose answer never came is not called rejected, since the bank may have
stored it), keep the healthy bank's payments flowing, and hold a bounded number of
threads, file descriptors and sockets: read from ``/proc/<pid>`` before, during and
after, and printed.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import TansuBroker
from tests.support.daemon import Daemon, running_daemon
from tests.support.faultkit import (
    DETECTION_BOUND,
    FAST_ENV,
    STEP_DEADLINE,
    assert_accounted,
    lost_race,
    payments,
    service_up,
    simulation,
    start_simulation,
    steps,
    wait_finished,
    wait_provisioned,
)
from tests.support.ports import wait_for
from tests.support.procstats import Footprint, footprint, peak

pytestmark = pytest.mark.slow  # started first by make test's workers (conftest)

MAX_IN_FLIGHT = 16
# What a fault may add on top of the idle daemon, by construction: the sender's
# workers (MAX_IN_FLIGHT), the embedded emulator's thread per open connection (the
# twin's pool keeps at most MAX_IN_FLIGHT + 8 per service; a timed-out request's
# connection is dropped and the emulator's thread ends with the latency), and the
# probe pool (one running check per service).
BOUND = 4 * MAX_IN_FLIGHT
FAULTS: list[tuple[str, dict[str, Any], set[str], str]] = [
    # name, switches, reasons the probes may give, what a refused payment says
    ("down", {"down": True}, {"connection"}, "connection"),
    ("slow", {"latency_seconds": 3.0}, {"timeout"}, ""),
    ("500", {"error_rate": 1.0}, {"http_5xx"}, "http_500"),
    ("garbage", {"garbage": True}, {"bad_body", "http_2xx"}, "http_200"),
]
TARGETS = ("bank_b", "clearing")


class Sampler:
    """Samples the daemon's footprint every 50 ms while running."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[Footprint] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.samples.append(footprint(self.pid))
            except (FileNotFoundError, ProcessLookupError):
                return

    @contextmanager
    def running(self) -> Iterator[Sampler]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(2)


def settle(daemon: Daemon, seconds: float = 1.0) -> Footprint:
    with Sampler(daemon.process.pid).running() as sampler:
        wait_for(lambda: len(sampler.samples) >= seconds / 0.05, timeout=seconds + 5)
    return peak(sampler.samples)


def set_fault(daemon: Daemon, target: str, switches: dict[str, Any]) -> None:
    answer = daemon.post("/api/v1/emulator/faults", {"target": target, **switches})
    assert answer.status_code == 200, answer.text


def test_bank_and_clearing_faults_are_reported_and_bounded(tmp_path: Path,
                                                           kafka_broker: TansuBroker) -> None:
    env = {**FAST_ENV, "KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap,
           "TWIN_MAX_IN_FLIGHT_REQUESTS": str(MAX_IN_FLIGHT)}
    with running_daemon(tmp_path, **env) as daemon:
        for service in ("bank_a", "bank_b", "clearing", "kafka"):
            wait_for(lambda s=service: service_up(daemon, s) == 1.0, timeout=15,  # type: ignore[misc]
                     message=f"{service} up")
        wait_provisioned(daemon)
        warm = start_simulation(daemon, count=20, rate=20, name="warm-up")
        wait_finished(daemon, warm, timeout=30)
        before = settle(daemon)
        print(f"before: {before}")

        figures: dict[str, Footprint] = {}
        for name, switches, reasons, refusal in FAULTS:
            with Sampler(daemon.process.pid).running() as sampler:
                started = time.monotonic()
                for target in TARGETS:
                    set_fault(daemon, target, switches)
                for target in TARGETS:
                    wait_for(lambda t=target: service_up(daemon, t) == 0.0,  # type: ignore[misc]
                             timeout=DETECTION_BOUND, interval=0.05, message=f"{target} {name}")
                detected = time.monotonic() - started
                status = daemon.get("/api/v1/status").json()["services"]
                for target in TARGETS:
                    assert status[target]["up"] is False
                    assert status[target]["reason"] in reasons, (name, status[target])
                assert status["bank_a"]["up"] is True, status["bank_a"]  # the healthy bank
                # both directions: Bank B's own payments meet the fault at its door,
                # Bank A's payments to Bank B only go through Kafka
                races = lost_races_at_bank_b(daemon)
                sim = start_simulation(daemon, count=20, rate=10, direction="both",
                                       name=f"under-{name}")
                wait_for(lambda s=sim: simulation(daemon, s)["dispatched"]  # type: ignore[misc]
                         + simulation(daemon, s)["dropped"] == 20,
                         timeout=10, interval=0.1, message="every payment due")
                check_outcomes(daemon, sim, name, refusal, races)
                for target in TARGETS:
                    set_fault(daemon, target, {k: False if isinstance(v, bool) else 0
                                               for k, v in switches.items()})
                for target in TARGETS:
                    wait_for(lambda t=target: service_up(daemon, t) == 1.0,  # type: ignore[misc]
                             timeout=DETECTION_BOUND + 3, message=f"{target} back")
            figures[name] = peak(sampler.samples)
            print(f"{name}: detected in {detected:.2f}s (bound {DETECTION_BOUND}s), "
                  f"peak {figures[name]}")

        # after the storm: payments flow again and nothing was left behind
        final = start_simulation(daemon, count=20, rate=20, name="after")
        detail = wait_finished(daemon, final, timeout=30)
        # all through, but for a payment whose versioned write on its payer lost a race
        # with a credit or settlement (BGMock's optimistic lock: 500, nothing stored)
        for row in payments(daemon, final):
            assert row["status"] == "success" or lost_race(row), row
        assert detail["outcomes"]["success"] + detail["outcomes"]["rejected"] == 20, detail
        after = settle(daemon, seconds=2.0)
        # the books are not fooled by it either: payments refused at the door moved
        # nothing, and the ones whose answer never came are uncertain, not drift
        last = daemon.get("/api/v1/reconciliation").json()["ranAt"]
        report = wait_for(lambda: (r := daemon.get("/api/v1/reconciliation").json())
                          ["ranAt"] != last and r, timeout=15, message="a reconciliation")
        print(f"reconciliation after the faults: {report['status']}, "
              f"{ {n: c['status'] for n, c in report['checks'].items()} }")
        assert report["violations"] == 0, report
        print(f"after: {after}; bound during a fault: before + {BOUND}")
        for name, figure in figures.items():
            assert figure.threads <= before.threads + BOUND, (name, figure, before)
            assert figure.fds <= before.fds + BOUND, (name, figure, before)
            assert figure.sockets <= before.sockets + BOUND, (name, figure, before)
        # back to where it started, give or take a few pooled connections and workers
        assert after.threads <= before.threads + MAX_IN_FLIGHT, (after, before)
        assert after.fds <= before.fds + MAX_IN_FLIGHT, (after, before)
        assert daemon.process.poll() is None


def lost_races_at_bank_b(daemon: Daemon) -> float:
    """Payment POSTs Bank B answered 500 so far: their versioned write on the payer
    lost BGMock's optimistic-lock race (a credit from Bank A's payments), nothing
    stored."""
    return daemon.metric("bgmock_emulator_optimistic_lock_failures_total",
                         service="bank_b", origin="rest") or 0.0


def check_outcomes(daemon: Daemon, sim: str, fault: str, refusal: str,
                   races_before: float) -> None:
    """Bank A's payments succeed (but for one that lost BGMock's optimistic-lock race
    with a credit from Bank B: ``lost_race``); Bank B's are refused with the reason,
    or - when no answer came - not refused: the bank stored them after all (its
    latency came first), and the twin finds each again by its initiated event or in
    the bank's table (``rematch``)."""
    def settled() -> list[dict[str, Any]] | None:
        rows = payments(daemon, sim)
        detail = simulation(daemon, sim)
        if len(rows) != detail["dispatched"]:
            return None
        for row in rows:
            if row["route"] == "a_to_b" and row["status"] != "success" \
                    and not lost_race(row):
                return None
            if row["route"] == "b_to_a" and row["status"] == "in_flight" \
                    and row["stuckStep"] is None:
                return None  # refused, or stuck once the step deadline passed
        return rows

    rows = wait_for(settled, timeout=STEP_DEADLINE + 15, interval=0.25,
                    message=f"outcomes under {fault}")
    assert_accounted(daemon, sim)
    detail = simulation(daemon, sim)
    print(f"  under {fault}: {dict(Counter((r['route'], r['status']) for r in rows))}, "
          f"dropped {detail['dropped']}")
    healthy = [row for row in rows if row["route"] == "a_to_b"]
    assert sum(row["status"] == "success" for row in healthy) > len(healthy) // 2, healthy
    for row in rows:
        if row["route"] == "a_to_b":
            continue
        if refusal:
            assert row["status"] == "rejected", row
            assert row["message"] == f"not accepted by bank_b: {refusal}", row
            assert steps(row) == [] and row["transactionId"] is None, row
        else:
            # no answer: the bank may have stored it - never rejected
            assert row["outcome"] != "rejected", row
    if not refusal:
        # but one whose write at the bank lost the race (its 500 came after the twin
        # gave up waiting): the bank stored nothing, and the twin cannot tell it from
        # one still on its way, so it stays unconfirmed, never rejected (above)
        def found_again() -> bool:
            lost = [row for row in payments(daemon, sim) if row["route"] == "b_to_a"
                    and not (row["matchedBy"] in ("initiated_event", "bank_database")
                             and row["transactionId"])]
            return len(lost) <= lost_races_at_bank_b(daemon) - races_before

        wait_for(found_again, timeout=STEP_DEADLINE + 15, interval=0.25,
                 message=f"payments unanswered under {fault} found again")
