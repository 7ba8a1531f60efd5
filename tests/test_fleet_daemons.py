"""Three real ``bgmock-twin run`` replicas run one simulation together (issue 13).

One emulator process on a real Tansu broker, one real PostgreSQL ledger, three
daemons with their own instance ids (as a StatefulSet names its pods). A
simulation posted to replica 1 is run by all three, each a third of it, and every
replica shows the same figures; a replica killed mid-run has its share and its
payments in flight taken over by the others, with nothing lost or sent twice.

CPU-heavy on a small machine: run it under the shared lock (``flock``). The books
of the fleet (one set of accounts, reconciliation once per fleet) are the subject
of ``test_fleet_singletons``.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from tests.support.broker import TansuBroker
from tests.support.daemon import Daemon, running_daemon
from tests.support.emulator_process import running_emulator
from tests.support.fleet import held, reconciled
from tests.support.ports import wait_for
from tests.support.postgres import PostgresServer, writable_engine

pytestmark = pytest.mark.slow  # started first by make test's workers (conftest)

REPLICAS = ("twin-0", "twin-1", "twin-2")
FLEET = {"TWIN_FLEET_HEARTBEAT_SECONDS": "1", "TWIN_FLEET_LEASE_SECONDS": "5",
         "TWIN_LOAD_RATE": "0", "TWIN_KAFKA_SESSION_TIMEOUT_MS": "6000",
         "TWIN_MAX_IN_FLIGHT_REQUESTS": "256", "TWIN_RECONCILE_INTERVAL_SECONDS": "2"}
# what every replica must show alike (the send lag is each replica's own)
SHARED_FIELDS = ("state", "planned", "dispatched", "dropped", "unfinished", "progress",
                 "outcomes", "currentStatus", "latency", "results", "achievedRate")


class Fleet:
    def __init__(self, twins: list[Daemon], ledger: str) -> None:
        self.twins = twins
        self.ledger = ledger

    def detail(self, twin: Daemon, sim_id: str) -> dict[str, Any]:
        answer = twin.get(f"/api/v1/simulations/{sim_id}")
        assert answer.status_code == 200, answer.text
        detail: dict[str, Any] = answer.json()
        return detail

    def finished(self, twin: Daemon, sim_id: str, timeout: float) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            detail = self.detail(twin, sim_id)
            return detail if detail["state"] == "finished" else None

        return wait_for(done, timeout=timeout, interval=1.0, message=f"{sim_id} finished")

    def rows(self, sim_id: str) -> list[Any]:
        engine = writable_engine(self.ledger)
        try:
            with engine.connect() as conn:
                return list(conn.execute(sa.text(
                    "SELECT payment_id, intended_at, instance_id, finished, counted_outcome, "
                    "status, stuck_step "
                    "FROM twin_payments WHERE simulation_id = :s"), {"s": sim_id}))
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, kafka_broker: TansuBroker,
          postgres: PostgresServer) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet")
    ledger = postgres.create_database("fleet")
    with ExitStack() as stack:
        (tmp / "emulator").mkdir()
        bgmock = stack.enter_context(running_emulator(
            tmp / "emulator", KAFKA_BOOTSTRAP_SERVERS=kafka_broker.bootstrap,
            TWIN_KAFKA_SESSION_TIMEOUT_MS="6000"))
        twins = []
        for name in REPLICAS:
            (tmp / name).mkdir()
            twins.append(stack.enter_context(running_daemon(
                tmp / name, TWIN_INSTANCE_ID=name, TWIN_DATABASE_URL=ledger,
                KAFKA_BOOTSTRAP_SERVERS=kafka_broker.bootstrap, **FLEET,
                **bgmock.external_env())))

        def ready() -> bool:
            return all(t.get("/api/v1/status").json()["payments"]["provisioned"] and
                       t.get("/api/v1/status").json()["payments"]["following"] for t in twins)

        wait_for(ready, timeout=90, interval=0.5, message="three replicas provisioned")
        yield Fleet(twins, ledger)


def _completed(twin: Daemon) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(twin.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "bgmock_payments_completed_total":
                total += sample.value
    return total


def test_one_simulation_is_run_by_all_three_replicas_a_third_each(fleet: Fleet) -> None:
    first, _, third = fleet.twins
    answer = first.post("/api/v1/simulations", json={"count": 3000, "rate": 150,
                                                     "name": "fleet-of-three"})
    assert answer.status_code == 202, answer.text
    sim_id = answer.json()["id"]
    # known at once on the others (found in the ledger, not only at their next poll)
    assert fleet.detail(third, sim_id)["planned"] == 3000

    done = fleet.finished(first, sim_id, timeout=180)
    print(f"fleet of three: {done['results']} shares={done['shares']} "
          f"latency p95={done['latency']['total']['p95']}")
    assert done["dispatched"] + done["dropped"] == 3000, done
    assert done["unfinished"] == 0
    assert sum(done["outcomes"].values()) == done["dispatched"]
    shares = {s["instanceId"]: s for s in done["shares"]}
    assert set(shares) == set(REPLICAS)
    for name, share in shares.items():
        assert abs(share["dispatched"] + share["dropped"] - 1000) <= 100, (name, shares)
        assert share["sent"] == share["dispatched"] and share["live"]
    assert sum(s["dispatched"] for s in shares.values()) == done["dispatched"]

    rows = fleet.rows(sim_id)
    assert len(rows) == done["dispatched"]
    assert len({r.intended_at for r in rows}) == len(rows), "an index sent twice"
    unaccounted = [r for r in rows if not r.counted_outcome]
    assert not unaccounted, (done["outcomes"], unaccounted[:5])
    # a payment counted stuck may finish later (a loaded machine): counted once, stuck
    stuck = [r for r in rows if r.counted_outcome == "stuck"]
    assert len(stuck) == done["outcomes"]["stuck"], stuck[:5]
    assert all(r.counted_outcome == "stuck" for r in rows if not r.finished)

    seen = fleet.detail(third, sim_id)
    for field in SHARED_FIELDS:
        assert seen[field] == done[field], field
    assert seen["shares"] == done["shares"]
    # each payment counted once, in the metrics of the replica that sent it
    assert sum(_completed(t) for t in fleet.twins) == done["dispatched"]
    listed = {s["id"]: s for s in third.get("/api/v1/simulations").json()["items"]}
    assert listed[sim_id]["dispatched"] == done["dispatched"]
    # one set of books for the fleet, exact over every replica's accounts and payments
    holders = wait_for(lambda: held(fleet.twins, "books") or None, timeout=20, interval=0.5,
                       message="a books runner")
    assert len(holders) == 1, holders
    report = reconciled(fleet.twins[REPLICAS.index(holders[0])])
    assert report["reconciledBy"] == holders[0]


def test_a_replica_killed_mid_run_has_its_share_and_payments_taken_over(
        fleet: Fleet) -> None:
    first, second, third = fleet.twins
    answer = first.post("/api/v1/simulations", json={"count": 1500, "rate": 100,
                                                     "name": "fleet-kill"})
    assert answer.status_code == 202, answer.text
    sim_id = answer.json()["id"]

    def under_way() -> bool:
        shares = {s["instanceId"]: s for s in fleet.detail(first, sim_id)["shares"]}
        return shares.get("twin-1", {}).get("dispatched", 0) >= 150

    wait_for(under_way, timeout=60, interval=0.2, message="replica 2 sending")
    second.process.send_signal(signal.SIGKILL)
    second.process.wait(10)
    killed_with = [r for r in fleet.rows(sim_id) if r.instance_id == "twin-1"]
    assert any(not r.finished for r in killed_with), "nothing in flight at the kill"

    done = fleet.finished(third, sim_id, timeout=180)
    print(f"after the kill: {done['results']} shares={done['shares']}")
    rows = fleet.rows(sim_id)
    assert len({r.intended_at for r in rows}) == len(rows), "an index sent twice"
    assert all(r.counted_outcome for r in rows), "a payment left behind"
    assert not [r for r in rows if r.instance_id == "twin-1" and not r.finished]
    assert len(rows) == done["dispatched"]
    shares = {s["instanceId"]: s for s in done["shares"]}
    assert not shares["twin-1"]["live"]
    # every index is in the ledger once, or was dropped by a replica (counted)
    assert done["dispatched"] + done["dropped"] >= 1500 - shares["twin-1"]["dropped"]
    assert len(rows) + sum(s["dropped"] for s in shares.values()) >= 1500
    assert done["unfinished"] == 0
    assert sum(done["outcomes"].values()) == done["dispatched"]
    assert fleet.detail(first, sim_id)["dispatched"] == done["dispatched"]
    assert "fleet_replica_gone" in first.log() + third.log()


def test_delete_on_one_replica_stops_the_simulation_everywhere(fleet: Fleet) -> None:
    first, _, third = fleet.twins  # the second was killed above; two remain
    answer = third.post("/api/v1/simulations", json={"count": 2000, "rate": 50})
    assert answer.status_code == 202, answer.text
    sim_id = answer.json()["id"]
    wait_for(lambda: fleet.detail(first, sim_id)["dispatched"] >= 50, timeout=30,
             interval=0.2, message="under way")
    stopped = requests.delete(f"{first.url}/api/v1/simulations/{sim_id}",
                              headers=first.headers(), timeout=10)
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["state"] == "stopped"

    def quiet() -> dict[str, Any] | None:
        a, b = fleet.detail(first, sim_id), fleet.detail(third, sim_id)
        return a if a["state"] == b["state"] == "stopped" and \
            a["dispatched"] == b["dispatched"] else None

    wait_for(quiet, timeout=20, interval=0.5, message="stopped on both")
    settled = fleet.detail(third, sim_id)["dispatched"]
    wait_for(lambda: fleet.detail(third, sim_id)["dispatched"] == settled, timeout=5,
             interval=1.0, message="nothing more sent")
    assert settled < 2000

