"""Jobs the fleet runs once (``tracking.singletons``) on a real ledger (SQLite and
PostgreSQL): one replica runs the job, the others know who; a clean stop or an
expired lease hands it over; a ledger out of reach keeps a holder running only
until its lease runs out; one provisioning pass at a time on an account set.
And the account names of the replicas, which never meet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from bgmock_twin import metrics
from bgmock_twin.clients.rest import ServiceError
from bgmock_twin.tracking.ledger.leases import Leases
from bgmock_twin.tracking.provisioning import opening_deposit_id, replica_account_prefix
from bgmock_twin.tracking.singletons import FleetJob, exclusive_pass
from tests.support.ledgers import running_ledger


class Clocks:
    """The ledger's wall clock and the replicas' monotonic clock, moved together."""

    def __init__(self) -> None:
        self.wall = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
        self.mono = 1000.0

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.mono += seconds


def _gauge(lease: str) -> float:
    return metrics.FLEET_LEASE_HELD.labels(lease)._value.get()


def test_one_replica_runs_the_job_and_hands_it_over(ledger_url: str) -> None:
    clocks = Clocks()
    with running_ledger(ledger_url) as ledger:
        a, b = (FleetJob(Leases(ledger.engine, name, clocks.now), "job-a", 20,
                         clocks.monotonic) for name in ("twin-0", "twin-1"))
        assert a.claim() and not b.claim()
        assert a.holder() == b.holder() == "twin-0"
        clocks.advance(4)
        assert a.claim() and not b.claim()  # answered from the last ask (a quarter: 5 s)
        clocks.advance(4)
        assert a.claim() and not b.claim()  # asked again: a renewed
        a.release()  # a clean stop
        assert a.holder() is None
        clocks.advance(6)
        assert b.claim() and b.holder() == "twin-1"
        # b dies: its lease runs out and a, asking again, takes the job
        clocks.advance(21)
        assert a.claim() and a.holder() == "twin-0"


def test_the_gauge_says_who_holds_it(ledger_url: str) -> None:
    clocks = Clocks()
    with running_ledger(ledger_url) as ledger:
        a = FleetJob(Leases(ledger.engine, "twin-0", clocks.now), "job-g", 20, clocks.monotonic)
        assert _gauge("job-g") == 0
        assert a.claim()
        assert _gauge("job-g") == 1
        a.release()
        assert _gauge("job-g") == 0


def test_a_ledger_out_of_reach(ledger_url: str) -> None:
    """Never reached: the job runs (a twin still watches BGMock). Held, then out of
    reach: it runs until the lease it took runs out, then stops (another replica may
    hold it by then)."""
    clocks = Clocks()
    unreachable = sa.create_engine("sqlite:////nonexistent-dir/ledger.db")
    lone = FleetJob(Leases(unreachable, "twin-0", clocks.now), "job-u", 20, clocks.monotonic)
    assert lone.claim()
    with running_ledger(ledger_url) as ledger:
        job = FleetJob(Leases(ledger.engine, "twin-0", clocks.now), "job-u", 20,
                       clocks.monotonic)
        assert job.claim()
        job.leases = Leases(unreachable, "twin-0", clocks.now)
        clocks.advance(10)
        assert job.claim()  # 10 s into a 20 s lease
        clocks.advance(11)
        assert not job.claim()  # ran out: the others may have it


def test_one_pass_at_a_time_on_an_account_set(ledger_url: str) -> None:
    with running_ledger(ledger_url) as ledger:
        a = Leases(ledger.engine, "twin-a")
        b = Leases(ledger.engine, "twin-b")
        stored: list[str] = []
        with exclusive_pass(a, "accounts:TWIN", 60, 0.5, lambda: stored.append("a")), \
                pytest.raises(ServiceError, match="another replica holds accounts:TWIN"), \
                exclusive_pass(b, "accounts:TWIN", 60, 0.5, lambda: stored.append("b")):
            pass
        assert stored == ["a"]  # a's pass stored its rows before it let go
        with exclusive_pass(b, "accounts:TWIN", 60, 0.5, lambda: stored.append("b")):
            pass
        assert stored == ["a", "b"]


@pytest.mark.parametrize(("instance", "prefix"), [
    ("test", "TWIN"), ("bgmock-twin-0", "TWIN"), ("bgmock-twin-1", "TWIN-R1"),
    ("release-bgmock-twin-12", "TWIN-R12"), ("host", "TWIN"),
])
def test_each_replica_owns_its_account_names(instance: str, prefix: str) -> None:
    assert replica_account_prefix("TWIN", instance) == prefix


def test_an_opening_has_one_id_per_account() -> None:
    assert opening_deposit_id("01", "TWIN-A-001") == opening_deposit_id("01", "TWIN-A-001")
    assert len({opening_deposit_id(c, a) for c in ("01", "02")
                for a in ("TWIN-A-001", "TWIN-R1-A-001")}) == 4
