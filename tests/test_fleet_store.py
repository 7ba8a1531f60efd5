"""The fleet's statements on a real ledger (``tracking.ledger.fleet_store``), on
SQLite and on PostgreSQL: a block claimed by many replicas at once has one holder,
a gone replica's block is taken by one live replica, its unfinished payments move
to exactly one, and the shares add up."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest

from bgmock_twin.tracking.ledger import Ledger
from bgmock_twin.tracking.ledger.fleet_store import FleetRun, FleetStore
from bgmock_twin.tracking.lifecycle import Outcome
from tests.support.ledgers import running_ledger
from tests.test_tracking_ledger import NOW, make_payment


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with running_ledger(ledger_url, buffer_size=1000, flush_interval=0.02) as book:
        yield book


def _run(sim: str = "sim-1") -> FleetRun:
    return FleetRun(simulation_id=sim, creator="twin-0", spec="{}", planned=100, block_size=10,
                    state="running", created_at=NOW, starts_at=NOW + timedelta(seconds=1),
                    finished_at=None)


def test_a_block_claimed_by_several_replicas_at_once_has_one_holder(ledger: Ledger) -> None:
    stores = [FleetStore(ledger.engine, f"twin-{i}") for i in range(3)]
    stores[0].create(_run())
    got: dict[str, list[int]] = {}
    barrier = threading.Barrier(3)

    def claim(store: FleetStore) -> None:
        barrier.wait()
        got[store.holder] = store.claim("sim-1", list(range(10)), NOW)

    threads = [threading.Thread(target=claim, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    claimed = sorted(b for blocks in got.values() for b in blocks)
    assert claimed == list(range(10))
    blocks = stores[1].blocks("sim-1")
    assert {b: s.holder for b, s in blocks.items()} == \
        {b: holder for holder, bs in got.items() for b in bs}


def test_a_gone_replicas_block_is_taken_once_and_done_blocks_stay(ledger: Ledger) -> None:
    gone, a, b = (FleetStore(ledger.engine, h) for h in ("twin-2", "twin-0", "twin-1"))
    a.create(_run())
    assert gone.claim("sim-1", [0, 1], NOW) == [0, 1]
    gone.mark_done("sim-1", [0], NOW)
    assert not a.take("sim-1", 0, "twin-2", NOW)  # done: nothing to take
    assert a.take("sim-1", 1, "twin-2", NOW)
    assert not b.take("sim-1", 1, "twin-2", NOW)
    assert b.blocks("sim-1")[1].holder == "twin-0"
    a.mark_done("sim-1", [1], NOW + timedelta(seconds=3))
    assert all(s.done for s in b.blocks("sim-1").values())
    assert b.last_done("sim-1") == NOW + timedelta(seconds=3)


def test_unfinished_payments_of_a_gone_replica_move_to_exactly_one(ledger: Ledger) -> None:
    payments = [make_payment(i, sim="sim-1") for i in range(20)]
    for p in payments:
        p.instance_id = "twin-2"
    payments[0].outcome = Outcome.SUCCESS
    for p in payments:
        ledger.write_payment(p, NOW)
    assert ledger.flush(5)
    stores = [FleetStore(ledger.engine, f"twin-{i}") for i in range(2)]
    taken: dict[str, list[str]] = {}
    barrier = threading.Barrier(2)

    def take(store: FleetStore) -> None:
        barrier.wait()
        taken[store.holder] = [str(r["payment_id"]) for r in store.take_payments("twin-2")]

    threads = [threading.Thread(target=take, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    moved = taken["twin-0"] + taken["twin-1"]
    assert sorted(moved) == sorted(p.payment_id for p in payments[1:])
    assert ledger.load_unfinished("twin-2") == []
    assert len(ledger.load_unfinished("twin-0")) + len(ledger.load_unfinished("twin-1")) == 19


def test_shares_counts_and_intended_times(ledger: Ledger) -> None:
    a, b = FleetStore(ledger.engine, "twin-0"), FleetStore(ledger.engine, "twin-1")
    a.create(_run())
    a.write_share("sim-1", 5, 1, 4, NOW)
    a.write_share("sim-1", 7, 1, 7, NOW)  # renewed in place
    b.write_share("sim-1", 6, 0, 6, NOW)
    assert [(s.instance_id, s.dispatched, s.dropped, s.sent) for s in b.shares("sim-1")] == \
        [("twin-0", 7, 1, 7), ("twin-1", 6, 0, 6)]
    payments = [make_payment(i, sim="sim-1") for i in range(5)]
    payments[0].counted = payments[0].outcome = None
    for p in payments:
        ledger.write_payment(p, NOW)
    assert ledger.flush(5)
    counts = a.counts("sim-1")
    assert (counts.recorded, counts.unfinished, counts.outcomes) == (5, 5, {})
    payments[1].counted = payments[2].counted = Outcome.REJECTED
    payments[3].counted = Outcome.SUCCESS
    for p in payments[1:4]:
        ledger.write_payment(p, NOW)
    assert ledger.flush(5)
    counts = b.counts("sim-1")  # outcomes and the rest from one moment: they add up
    assert (counts.recorded, counts.unfinished) == (5, 2)
    assert counts.outcomes == {"rejected": 2, "success": 1}
    times = a.intended_times("sim-1", NOW + timedelta(seconds=1), NOW + timedelta(seconds=3))
    assert sorted(times) == [NOW + timedelta(seconds=s) for s in (1, 2, 3)]
    assert a.end("sim-1", "stopped", NOW) and not b.end("sim-1", "finished", NOW)
    run = b.run("sim-1")
    assert run is not None and run.state == "stopped"
    assert [r.simulation_id for r in b.runs(["running"])] == []
