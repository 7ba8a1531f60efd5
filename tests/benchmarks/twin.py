"""The twin's sending side as the daemon wires it, in the benchmark process, with
instrumentation that records when each payment was *meant* to leave and when its
``POST /bank/transaction/outgoing`` was actually handed to the HTTP client.

``TwinHarness`` builds the real ``Tracking`` facade (ledger, tracker, sender, status
poller, Kafka follower, simulations, scheduled jobs) from settings at their defaults,
against an emulator process. Payments are started as simulations, so the pacing is
the twin's own (``pacing.offsets`` → ``Sender``). With ``kafka`` the follower reads
the emulator's events from the broker and every payment finishes as in production;
without it the twin cannot see events, so each payment costs a status look-up
instead of the settle look-up (the same number of HTTP requests).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from bgmock_twin.bus.base import EventBus
from bgmock_twin.clients.bgmock import BGMockClients
from bgmock_twin.contract import TOPICS
from bgmock_twin.scheduler import JobScheduler
from bgmock_twin.settings import Settings, load_settings
from bgmock_twin.tracking.lifecycle import Payment
from bgmock_twin.tracking.service import Tracking
from bgmock_twin.tracking.simulations import SimulationSpec
from tests.benchmarks.common import own_cpu_seconds, percentile
from tests.support.ports import wait_for


@dataclass
class RunFigures:
    """One constant-rate run of the twin's sender."""

    rate: float
    planned: int
    sent: int
    dropped: int
    achieved: float          # payments/s actually sent (see sending_rate)
    lag_p50: float           # intended → POST handed to the HTTP client, seconds
    lag_p99: float
    lag_max: float
    twin_lag_p99: float      # what the twin itself exports (bgmock_payment_send_lag_seconds)
    post_p50: float          # duration of the POST, seconds
    post_p99: float
    window_payments: int     # sends within the steady window
    window_requests: float   # REST requests the twin made within the window
    window_cpu: float        # CPU seconds of this process within the window
    window_wall: float

    @property
    def rate_error(self) -> float:
        return abs(self.achieved - self.rate) / self.rate

    @property
    def payments_per_core(self) -> float:
        return self.window_payments / self.window_cpu if self.window_cpu > 0 else float("nan")

    @property
    def requests_per_core(self) -> float:
        return self.window_requests / self.window_cpu if self.window_cpu > 0 else float("nan")

    @property
    def cpu_share(self) -> float:
        return self.window_cpu / self.window_wall if self.window_wall > 0 else float("nan")


def sending_rate(times: list[float]) -> float:
    """Payments per second over sorted actual send times: the least-squares slope of
    the running count against time, so every send counts (a dropped payment lowers
    it, a sender falling behind flattens it) and no single late send at either end
    decides it."""
    n = len(times)
    if n < 2:
        return float("nan")
    mean_t = sum(times) / n
    mean_i = (n - 1) / 2
    var_t = sum((t - mean_t) ** 2 for t in times)
    cov = sum((t - mean_t) * (i - mean_i) for i, t in enumerate(times))
    return cov / var_t if var_t > 0 else float("nan")


def rest_requests_total() -> float:
    """Every REST request the twin made so far (``bgmock_rest_requests_total``)."""
    total = 0.0
    for family in REGISTRY.collect():
        if family.name == "bgmock_rest_requests":
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return total


class TwinHarness:
    def __init__(self, urls: dict[str, str], workdir: Path, bus: EventBus,
                 **overrides: Any) -> None:
        values: dict[str, Any] = {
            "bank_a_url": urls["bank_a"], "bank_b_url": urls["bank_b"],
            "clearing_url": urls["clearing"],
            "twin_database_url": f"sqlite:///{workdir}/twin-ledger.db",
            "instance_id": "bench", "load_rate_per_second": 0,
        }
        values.update(overrides)
        self.settings: Settings = load_settings(**values)
        self.bus = bus
        self.bus.ensure_topics(list(TOPICS))
        self.clients = BGMockClients.build(
            urls, self.settings.rest_timeout_seconds,
            pool_size=self.settings.max_in_flight_requests + 8)
        self.scheduler = JobScheduler()
        self.tracking = Tracking(self.settings.tracking, self.clients, bus)
        self.sends: list[tuple[float, float]] = []  # (intended, handed to the HTTP client)
        self.post_seconds: list[float] = []
        self._instrument()

    def _instrument(self) -> None:
        local = threading.local()
        tracker = self.tracking.tracker
        register = tracker.register

        def registering(payment: Payment) -> None:
            local.intended = payment.intended_mono
            register(payment)

        tracker.register = registering  # type: ignore[method-assign]
        for bank in (self.clients.bank_a, self.clients.bank_b):
            submit = bank.submit_payment

            def submitting(*args: Any, _submit: Any = submit, **kwargs: Any) -> Any:
                started = time.monotonic()
                self.sends.append((getattr(local, "intended", started), started))
                try:
                    return _submit(*args, **kwargs)
                finally:
                    self.post_seconds.append(time.monotonic() - started)

            bank.submit_payment = submitting  # type: ignore[method-assign]

    def start(self) -> TwinHarness:
        self.scheduler.start()
        self.tracking.start()
        self.scheduler.add(self.tracking.jobs())
        wait_for(lambda: self.tracking.status().provisioned, timeout=30,
                 message="twin accounts provisioned")
        wait_for(self.tracking.following, timeout=30, message="follower positioned")
        return self

    def stop(self) -> None:
        self.tracking.stop(5)
        self.scheduler.shutdown(wait=False)
        self.clients.close()

    def run(self, rate: float, seconds: float, warmup: float = 1.0) -> RunFigures:
        """Send ``rate`` payments/s for ``seconds`` as one simulation; CPU and request
        counts are taken over the steady window after ``warmup``."""
        count = max(2, round(rate * seconds))
        self.sends.clear()
        self.post_seconds.clear()
        sim = self.tracking.simulations.create(SimulationSpec(
            count=count, amount_min=self.settings.load_amount_min,
            amount_max=self.settings.load_amount_max, rate=rate, name="bench"))
        run = sim.run
        assert run is not None
        started = run.start_mono
        warmup = min(warmup, seconds / 3)
        time.sleep(max(0.0, started + warmup - time.monotonic()))
        cpu0, wall0, req0 = own_cpu_seconds(), time.monotonic(), rest_requests_total()
        if not run.done.wait(timeout=seconds * 4 + 30):
            raise TimeoutError(f"the run at {rate}/s did not finish")
        cpu1, wall1, req1 = own_cpu_seconds(), time.monotonic(), rest_requests_total()
        wait_for(lambda: run.sent >= run.dispatched, timeout=30, message="workers done")
        sends = list(self.sends)
        posts = list(self.post_seconds)
        lags = [max(0.0, actual - intended) for intended, actual in sends]
        actual = sorted(a for _, a in sends)
        achieved = sending_rate(actual)
        return RunFigures(
            rate=rate, planned=count, sent=run.sent, dropped=run.dropped, achieved=achieved,
            lag_p50=percentile(lags, 50), lag_p99=percentile(lags, 99),
            lag_max=max(lags, default=float("nan")),
            twin_lag_p99=percentile(run.lags, 99),
            post_p50=percentile(posts, 50), post_p99=percentile(posts, 99),
            window_payments=sum(1 for a in actual if wall0 <= a <= wall1),
            window_requests=req1 - req0, window_cpu=cpu1 - cpu0, window_wall=wall1 - wall0,
        )

