"""A status poller run until its first check, for the tests of how it merges checks."""

from __future__ import annotations

import threading

from bgmock_twin.tracking.poller import Purpose, Result, StatusPoller


def purposes_checked(schedules: list[tuple[Purpose, float]]) -> list[Purpose]:
    """Schedule checks of one payment (purpose, delay), in order; the purposes the
    poller's one thread ran by the time the first check was done."""
    seen: list[Purpose] = []
    done = threading.Event()

    def check(payment_id: str, purpose: Purpose) -> Result:
        seen.append(purpose)
        done.set()
        return Result.DONE

    poller = StatusPoller(check, threads=1)
    for purpose, delay in schedules:
        poller.schedule("p1", purpose, delay=delay)
    poller.start()
    try:
        assert done.wait(5)
    finally:
        poller.stop()
    return seen
