"""A test-only pause in the sender's path, so a test can kill the twin at a named
point of a payment's life (``TWIN_TEST_PAUSE_AT=<point>:<n>``).

Inert unless that setting is given: ``PauseHook(None).reached`` returns at once. When
set, the n-th payment to reach the point logs ``test_pause_reached`` and its send
waits for good (the test SIGKILLs the daemon while it waits); the sender's other
payments go on. Points of a
REST payment: ``before_post`` (the row is stored, the POST not sent), ``after_post``
(the bank answered 202, the id not recorded), ``after_accept`` (the id recorded in
memory, maybe not yet stored by the ledger); of a Kafka payment: ``before_produce``
(the row is stored, the event not produced).
"""

from __future__ import annotations

import threading

from bgmock_twin.logs import get_logger

log = get_logger(__name__)

POINTS = ("before_post", "after_post", "after_accept", "before_produce")


class PauseHook:
    def __init__(self, spec: str | None) -> None:
        self.point: str | None = None
        self.nth = 0
        if spec:
            point, _, nth = spec.partition(":")
            if point not in POINTS or not nth.isdigit() or int(nth) < 1:
                raise ValueError(f"bad pause spec {spec!r}")
            self.point, self.nth = point, int(nth)
            log.warning("test_pause_armed", point=point, nth=self.nth)
        self._count = 0
        self._lock = threading.Lock()

    def hit(self, point: str) -> bool:
        """Whether the payment reaching ``point`` now is the one to pause (counted)."""
        if self.point != point:
            return False
        with self._lock:
            self._count += 1
            return self._count == self.nth

    def announce(self, point: str, payment_id: str) -> None:
        """Tell the test the pause is reached (the caller then waits for good)."""
        log.warning("test_pause_reached", point=point, payment_id=payment_id)
