"""How a fleet splits one simulation (``tracking.fleet_plan``, pure): the blocks,
who claims which and when, the take-over of a gone replica's blocks, and how the
payments a replica had sent are found back from their intended send times."""

from __future__ import annotations

from bgmock_twin.tracking import fleet_plan as plan
from bgmock_twin.tracking import pacing
from bgmock_twin.tracking.fleet_plan import BlockState


def _firsts(offsets: list[float], planned: int) -> list[float]:
    return [offsets[b * plan.BLOCK_SIZE] for b in range(plan.block_count(planned))]


def test_blocks_cover_every_index_once() -> None:
    planned = 3001
    blocks = [list(plan.block_indices(b, planned)) for b in range(plan.block_count(planned))]
    assert [i for block in blocks for i in block] == list(range(planned))
    assert len(blocks[-1]) == 1


def test_rank_counts_the_replica_before_its_first_heartbeat_is_seen() -> None:
    assert plan.rank_of("twin-1", ["twin-0", "twin-1", "twin-2"]) == (1, 3)
    assert plan.rank_of("twin-1", ["twin-0", "twin-2"]) == (1, 3)
    assert plan.rank_of("solo", []) == (0, 1)


def test_three_replicas_claiming_in_turn_get_a_third_each_and_the_whole_schedule() -> None:
    planned = 3000
    offsets = list(pacing.offsets(pacing.constant(150), planned))
    firsts = _firsts(offsets, planned)
    members = ["twin-0", "twin-1", "twin-2"]
    blocks: dict[int, BlockState] = {}
    elapsed = -1.0
    while len(blocks) < plan.block_count(planned):
        for me in members:
            rank, n = plan.rank_of(me, members)
            for b in plan.to_claim(firsts, elapsed, blocks, rank, n):
                blocks.setdefault(b, BlockState(me, False))  # the ledger's primary key
        elapsed += 0.25
    per_replica = {m: sum(len(plan.block_indices(b, planned)) for b, s in blocks.items()
                          if s.holder == m) for m in members}
    assert per_replica == {"twin-0": 1000, "twin-1": 1000, "twin-2": 1000}


def test_a_block_nobody_prefers_is_claimed_by_anyone_once_nearly_due() -> None:
    firsts = [0.0, 1.0, 2.0, 3.0, 4.0]
    # twin-0 alone sees itself as rank 0 of 2 (a member that never came)
    assert plan.to_claim(firsts, 0.0, {}, 0, 2) == [0, 1, 2]  # 1: due within 1 s
    assert plan.to_claim(firsts, 1.5, {0: BlockState("twin-0", True)}, 0, 2) == [1, 2]


def test_blocks_of_a_gone_replica_are_taken_preferred_first_then_by_anyone() -> None:
    firsts = [float(b) for b in range(6)]
    blocks = {0: BlockState("gone", True), 1: BlockState("gone", False),
              2: BlockState("gone", False), 3: BlockState("twin-0", False),
              4: BlockState("gone", False), 5: BlockState("gone", False)}
    live = ["twin-0", "twin-1"]
    mine = plan.to_take_over(firsts, 2.5, blocks, live, "twin-0", 0, 2)
    theirs = plan.to_take_over(firsts, 2.5, blocks, live, "twin-1", 1, 2)
    # done blocks stay; block 1 (twin-1 preferred) is not yet overdue enough for anyone
    assert mine == [(2, "gone"), (4, "gone")]
    assert theirs == [(1, "gone"), (5, "gone")]
    late = plan.to_take_over(firsts, 1.0 + plan.STEAL_LATE_SECONDS, blocks, live, "twin-0", 0, 2)
    assert (1, "gone") in late
    assert plan.to_take_over(firsts, 9.0, blocks, ["gone", "twin-0"], "twin-0", 0, 2) == []


def test_sent_payments_map_back_to_their_indices_and_only_the_rest_is_sent_again() -> None:
    planned = 100
    offsets = list(pacing.offsets(pacing.spike(20, 400, 1.0, 0.1), planned))
    sent_times = [round(offsets[i], 6) for i in (30, 31, 32, 35)]  # microseconds, as stored
    sent = [plan.index_at(offsets, t) for t in sent_times]
    assert sent == [30, 31, 32, 35]
    assert plan.unsent([3], planned, sent) == [33, 34, 36, 37, 38, 39]
    assert plan.index_at(offsets, -1.0) == 0 and plan.index_at(offsets, 99.0) == planned - 1


def test_finished_needs_every_block_claimed_and_done() -> None:
    planned = 25
    done = {b: BlockState("a", True) for b in range(3)}
    assert plan.finished(done, planned)
    assert not plan.finished({0: done[0], 1: done[1]}, planned)
    assert not plan.finished({**done, 2: BlockState("a", False)}, planned)
