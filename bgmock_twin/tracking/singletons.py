"""Jobs the fleet runs once, not once per replica: the background canary and the
reconciliation run on whichever replica holds the job's lease in the shared ledger
(``ledger.leases``).

A replica asks ``FleetJob.claim()`` before each run: the lease is taken or renewed
for ``ttl_seconds`` (a few of the job's intervals), so the holder keeps it as long
as it runs, and a replica that dies hands it over when it expires, to whichever
replica asks next. A clean stop releases it at once.

When the ledger cannot be reached the lease cannot be asked: a replica that held
it keeps running the job until the lease it took runs out (the others cannot take
it before then either), one that did not hold it stays out; a replica that never
reached the ledger at all runs the job (a twin whose ledger is down at start still
watches BGMock: two replicas both starting without their ledger may both run it
until they reach it).

Exported: ``bgmock_fleet_lease_held{lease}``, 1 on the replica holding the lease
and 0 on the others (summed over the fleet it is 1 while the job has a runner).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from bgmock_twin import metrics
from bgmock_twin.clients.rest import ServiceError
from bgmock_twin.logs import get_logger
from bgmock_twin.tracking.ledger.leases import Leases

log = get_logger(__name__)

CANARY_LEASE = "canary"
BOOKS_LEASE = "books"
BOOKS_LEASE_INTERVALS = 3  # the books' lease lasts this many reconciliation intervals
PASS_POLL_SECONDS = 0.25


class FleetJob:
    """The lease of one fleet-wide job, as this replica sees it."""

    def __init__(self, leases: Leases, name: str, ttl_seconds: float,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.leases = leases
        self.name = name
        self.ttl_seconds = ttl_seconds
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._asked_at: float | None = None  # monotonic time of the last ask
        self._answer = False
        self._held_until: float | None = None  # monotonic end of the lease we took
        self._holder: str | None = None  # who held it at the last answer
        self._reached = False
        self._unreachable_logged = False
        metrics.FLEET_LEASE_HELD.labels(name).set(0)

    @property
    def me(self) -> str:
        return self.leases.holder

    def claim(self) -> bool:
        """Take or renew the lease: True when this replica runs the job now. Asks the
        ledger at most every quarter of the lease's time (a job running every second
        renews it every few seconds), answering as last time in between."""
        with self._lock:
            started = self.monotonic()
            if self._asked_at is not None and started < self._asked_at + self.ttl_seconds / 4:
                return self._answer
            self._asked_at = started
            self._answer = self._ask(started)
            return self._answer

    def _ask(self, started: float) -> bool:
        try:
            held = self.leases.acquire(self.name, self.ttl_seconds)
            holder = self.me if held else self._current_holder()
        except Exception as exc:
            return self._unreachable(started, exc)
        if self._unreachable_logged:
            log.info("fleet_lease_reachable", lease=self.name)
            self._unreachable_logged = False
        self._reached = True
        if holder != self._holder:
            log.info("fleet_lease_holder", lease=self.name, holder=holder, here=held)
        self._holder = holder
        self._held_until = started + self.ttl_seconds if held else None
        metrics.FLEET_LEASE_HELD.labels(self.name).set(1 if held else 0)
        return held

    def _current_holder(self) -> str | None:
        lease = self.leases.held(self.name)
        return lease.holder if lease is not None else None

    def _unreachable(self, started: float, exc: Exception) -> bool:
        if not self._unreachable_logged:
            log.warning("fleet_lease_unreachable", lease=self.name, error=str(exc)[:200])
            self._unreachable_logged = True
        if not self._reached:
            runs = True  # never reached the ledger: watch BGMock rather than nothing
        else:
            runs = self._held_until is not None and started < self._held_until
        metrics.FLEET_LEASE_HELD.labels(self.name).set(1 if runs else 0)
        return runs

    def holder(self) -> str | None:
        """The replica that ran (or runs) the job at the last claim; None before it."""
        with self._lock:
            return self._holder

    def release(self) -> None:
        """Give the lease up (a clean stop) so another replica takes it at its next run."""
        with self._lock:
            if self._holder != self.me:
                return
            try:
                self.leases.release(self.name)
            except Exception as exc:
                log.warning("fleet_lease_release_failed", lease=self.name, error=str(exc)[:200])
            self._holder = None
            self._held_until = None
            self._asked_at = None
            self._answer = False
            metrics.FLEET_LEASE_HELD.labels(self.name).set(0)


@contextmanager
def exclusive_pass(leases: Leases, name: str, ttl_seconds: float, wait_seconds: float,
                   stored: Callable[[], object]) -> Iterator[None]:
    """Run the body while holding the lease ``name``, waiting up to ``wait_seconds``
    for another replica's pass to end (then ``ServiceError`` ``ledger``/``busy``,
    retried like an unreachable service); ``stored()`` (the ledger's flush) runs
    before the lease is released, so the next holder reads what this pass wrote.
    With the ledger out of reach the body runs unguarded, as a lone twin's would."""
    deadline = time.monotonic() + wait_seconds
    held = False
    while True:
        try:
            held = leases.acquire(name, ttl_seconds)
        except Exception as exc:
            log.warning("fleet_lease_unreachable", lease=name, error=str(exc)[:200])
            break
        if held:
            break
        if time.monotonic() >= deadline:
            raise ServiceError("ledger", "busy", f"another replica holds {name}")
        time.sleep(PASS_POLL_SECONDS)
    try:
        yield
    finally:
        if held:
            stored()
            with suppress(Exception):
                leases.release(name)
