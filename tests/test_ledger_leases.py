"""Leases in the shared ledger (``tracking.ledger.leases``), on SQLite and on a real
PostgreSQL: one holder at a time, renewal, expiry hands a lease over, a race for
one lease has one winner, and the live/expired replica views."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from bgmock_twin.tracking.ledger.leases import Leases, replica_lease
from tests.support.ledgers import running_ledger


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def test_one_holder_renewal_expiry_and_release(ledger_url: str) -> None:
    clock = Clock()
    with running_ledger(ledger_url) as ledger:
        a = Leases(ledger.engine, "twin-0", clock)
        b = Leases(ledger.engine, "twin-1", clock)
        assert a.acquire("canary", 10)
        assert not b.acquire("canary", 10)
        clock.advance(8)
        assert a.acquire("canary", 10)  # renewed: now runs to t+18
        clock.advance(8)
        assert not b.acquire("canary", 10)
        held = b.held("canary")
        assert held is not None and held.holder == "twin-0"
        clock.advance(3)  # t+19: a's lease ran out
        assert b.held("canary") is None
        assert b.acquire("canary", 10)
        assert not a.acquire("canary", 10)
        b.release("canary")
        a.release("canary")  # not a's: nothing happens
        assert a.acquire("canary", 10)


def test_live_and_expired_replicas(ledger_url: str) -> None:
    clock = Clock()
    with running_ledger(ledger_url) as ledger:
        views = [Leases(ledger.engine, f"twin-{i}", clock) for i in range(3)]
        for view in views:
            assert view.acquire(replica_lease(view.holder), 10)
        clock.advance(6)
        for view in views[:2]:  # twin-2 stops renewing
            view.acquire(replica_lease(view.holder), 10)
        clock.advance(6)
        assert [lease.holder for lease in views[0].live()] == ["twin-0", "twin-1"]
        assert [lease.holder for lease in views[0].expired()] == ["twin-2"]
        assert views[0].live("canary") == []


def _race(leases: Leases, name: str, barrier: threading.Barrier, won: list[str]) -> None:
    barrier.wait()
    if leases.acquire(name, 30):
        won.append(leases.holder)  # list.append is atomic


@pytest.mark.parametrize("rounds", [20])
def test_a_race_for_an_expired_lease_has_one_winner(ledger_url: str, rounds: int) -> None:
    clock = Clock()
    with running_ledger(ledger_url) as ledger:
        contenders = [Leases(ledger.engine, f"twin-{i}", clock) for i in range(4)]
        for round_no in range(rounds):
            name = "books" if round_no % 2 else f"fresh-{round_no}"  # expired, or never held
            clock.advance(60)
            barrier = threading.Barrier(len(contenders))
            won: list[str] = []
            threads = [threading.Thread(target=_race, args=(c, name, barrier, won))
                       for c in contenders]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert len(won) == 1, (name, won)
