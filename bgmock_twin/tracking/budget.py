"""A global budget of requests per second: a token bucket shared by every thread
that asks BGMock how a payment is doing.

Without Kafka the twin follows each payment by polling, so its polls grow with the
payments in flight; thousands in flight must not turn into thousands of GETs a
second against BGMock. Every status look-up takes a token first; when the bucket is
empty the caller waits (the poller's queue is ordered by due time, so the checks
most overdue go first): the polls spread out instead of piling up. The bucket holds
at most one second's worth, so no burst exceeds the rate by more than that.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RequestBudget:
    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        if per_second <= 0:
            raise ValueError("a request budget needs a rate above 0")
        self.per_second = per_second
        self.capacity = max(1.0, per_second)
        self._clock = clock
        self._tokens = self.capacity
        self._stamp = clock()
        self._lock = threading.Lock()
        self.spent = 0

    def _refill(self, now: float) -> None:
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.per_second)
        self._stamp = now

    def try_take(self) -> float:
        """Take one token now and return 0, or return the seconds until one is due."""
        with self._lock:
            self._refill(self._clock())
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                self.spent += 1
                return 0.0
            return (1.0 - self._tokens) / self.per_second

    def take(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Wait for a token for at most ``timeout`` seconds (less once ``stop`` is
        set); True when one was taken."""
        deadline = self._clock() + timeout
        while True:
            wait = self.try_take()
            if wait == 0.0:
                return True
            remaining = deadline - self._clock()
            if remaining <= 0 or (stop is not None and stop.is_set()):
                return False
            pause = min(wait, remaining, 0.5)
            if stop is not None:
                stop.wait(pause)
            else:
                time.sleep(pause)
