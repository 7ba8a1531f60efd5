"""Health probes of the BGMock services, Kafka and the databases.

Each probe is its own scheduled job, so one hung service never delays another.
A check runs on a dedicated thread and is waited for at most the probe timeout;
the clients also carry that timeout, so the thread ends by itself soon after. If a
previous check of the same service is still running, the new run reports a
timeout at once instead of piling up another thread.

State changes (up → down, down → up) are logged once, not on every probe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime

from bgmock_twin import metrics
from bgmock_twin.bus.base import BusError
from bgmock_twin.clients.rest import ServiceError
from bgmock_twin.logs import get_logger

log = get_logger(__name__)

Check = Callable[[float], None]
CHECK_SHARE = 0.9


@dataclass
class ServiceHealth:
    """What the twin currently knows about one service."""

    service: str
    up: bool | None = None  # None until the first probe finished
    last_check: datetime | None = None
    last_up: datetime | None = None
    latency_seconds: float | None = None
    reason: str | None = None
    consecutive_failures: int = 0


def failure_reason(exc: BaseException) -> str:
    """A short, bounded label for why a check failed."""
    if isinstance(exc, ServiceError):
        return exc.reason if not exc.reason.startswith("http_") else f"http_{exc.reason[5]}xx"
    if isinstance(exc, FutureTimeout | TimeoutError):
        return "timeout"
    if isinstance(exc, BusError):
        return "timeout" if "timed out" in str(exc).lower() else "unavailable"
    name = type(exc).__name__
    if name in {"OperationalError", "InterfaceError", "DisconnectionError"}:
        return "timeout" if "timeout" in str(exc).lower() else "connection"
    return "error"


class HealthRegistry:
    """Runs probes and keeps the latest state of every service."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._checks: dict[str, Check] = {}
        self._state: dict[str, ServiceHealth] = {}
        self._running: dict[str, Future[None]] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="probe")

    def register(self, service: str, check: Check) -> None:
        with self._lock:
            self._checks[service] = check
            self._state[service] = ServiceHealth(service)

    @property
    def services(self) -> list[str]:
        return list(self._checks)

    def snapshot(self) -> dict[str, ServiceHealth]:
        with self._lock:
            return {name: ServiceHealth(**vars(state)) for name, state in self._state.items()}

    def probe(self, service: str) -> ServiceHealth:
        """Run one check now (called by the scheduler) and record its result."""
        check = self._checks[service]
        started = time.monotonic()
        error: BaseException | None = None
        with self._lock:
            previous = self._running.get(service)
            busy = previous is not None and not previous.done()
        if busy:
            error = TimeoutError("previous check still running")
        else:
            # the check gets a little less than the probe's budget so that, when the
            # peer hangs, its own timeout fires first and its thread is free again
            future = self._executor.submit(check, self.timeout * CHECK_SHARE)
            with self._lock:
                self._running[service] = future
            try:
                future.result(timeout=self.timeout)
            except FutureTimeout:
                error = TimeoutError(f"no answer within {self.timeout}s")
            except Exception as exc:
                error = exc
        return self._record(service, time.monotonic() - started, error)

    def _record(self, service: str, elapsed: float, error: BaseException | None) -> ServiceHealth:
        now = datetime.now(UTC)
        metrics.PROBE_DURATION.labels(service).observe(elapsed)
        with self._lock:
            state = self._state[service]
            was_up = state.up
            state.last_check = now
            state.latency_seconds = round(elapsed, 6)
            if error is None:
                state.up, state.reason, state.consecutive_failures = True, None, 0
                state.last_up = now
            else:
                state.up = False
                state.reason = failure_reason(error)
                state.consecutive_failures += 1
            result = ServiceHealth(**vars(state))
        metrics.SERVICE_UP.labels(service).set(1 if result.up else 0)
        if result.up:
            metrics.SERVICE_LAST_UP.labels(service).set(now.timestamp())
        else:
            metrics.PROBE_FAILURES.labels(service, result.reason or "error").inc()
        if was_up is not result.up:
            if result.up:
                log.info("service_up", service=service, latency_seconds=result.latency_seconds)
            else:
                log.warning("service_down", service=service, reason=result.reason,
                            error=str(error)[:200])
        return result

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
