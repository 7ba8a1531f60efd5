"""How the replicas of a fleet split one simulation's schedule (pure functions).

A simulation's payments are numbered 0..planned-1 and each index has its intended
send offset on the requested profile (``pacing.offsets``). The indices are cut into
blocks of ``BLOCK_SIZE``; a replica sends the blocks it holds in the ledger, at
their own offsets from the simulation's common start, so the payments of all
replicas together are exactly the requested open-model schedule.

Who claims which block: block ``b`` is *preferred* for the live replica of rank
``b % n`` (replicas ranked by instance id). The preferred replica claims a block
``CLAIM_AHEAD_SECONDS`` before its first payment is due; any live replica claims it
from ``STEAL_AHEAD_SECONDS`` before (the preferred one had several polls to do it).
A block held by a replica that is no longer live and is not done is taken over the
same way (preferred first, anyone once it is ``STEAL_LATE_SECONDS`` overdue). A
claim is a row in the ledger, so whoever claims first has it and nobody else.

Which payments of a taken-over block were already sent: their rows in the ledger
hold their intended send time, which maps back to their index (``index_at``).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

BLOCK_SIZE = 10  # at 150/s a block is 1/15 s of the fleet's schedule
CLAIM_AHEAD_SECONDS = 2.0
STEAL_AHEAD_SECONDS = 1.0
STEAL_LATE_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class BlockState:
    holder: str
    done: bool


def block_count(planned: int, size: int = BLOCK_SIZE) -> int:
    return (planned + size - 1) // size


def block_indices(block: int, planned: int, size: int = BLOCK_SIZE) -> range:
    return range(block * size, min(planned, (block + 1) * size))


def rank_of(me: str, live: Iterable[str]) -> tuple[int, int]:
    """This replica's rank among the live replicas and their number (itself counted
    even before its first heartbeat is visible)."""
    members = sorted(set(live) | {me})
    return members.index(me), len(members)


def preferred(block: int, rank: int, n: int) -> bool:
    return block % n == rank


def to_claim(first_offsets: Sequence[float], elapsed: float, blocks: Mapping[int, BlockState],
             rank: int, n: int) -> list[int]:
    """Unclaimed blocks this replica should claim now, ``elapsed`` seconds after the
    start: its preferred ones due within ``CLAIM_AHEAD_SECONDS``, any due within
    ``STEAL_AHEAD_SECONDS``. ``first_offsets[b]``: when block ``b``'s first payment
    is due."""
    horizon = bisect.bisect_right(first_offsets, elapsed + CLAIM_AHEAD_SECONDS)
    return [b for b in range(horizon) if b not in blocks and
            (preferred(b, rank, n) or first_offsets[b] <= elapsed + STEAL_AHEAD_SECONDS)]


def to_take_over(first_offsets: Sequence[float], elapsed: float,
                 blocks: Mapping[int, BlockState], live: Iterable[str], me: str,
                 rank: int, n: int) -> list[tuple[int, str]]:
    """(block, holder) of the blocks held by a replica that is not live, not done,
    that this replica should take: its preferred ones, and any once overdue by
    ``STEAL_LATE_SECONDS``."""
    alive = set(live) | {me}
    return [(b, state.holder) for b, state in sorted(blocks.items())
            if not state.done and state.holder not in alive and
            (preferred(b, rank, n) or first_offsets[b] <= elapsed - STEAL_LATE_SECONDS)]


def index_at(offsets: Sequence[float], seconds: float) -> int:
    """The index whose offset is nearest ``seconds`` (a payment's intended send time
    minus the start): offsets are ascending, an index's own time maps back to it."""
    i = bisect.bisect_left(offsets, seconds)
    if i == 0:
        return 0
    if i >= len(offsets):
        return len(offsets) - 1
    return i if offsets[i] - seconds < seconds - offsets[i - 1] else i - 1


def unsent(blocks: Iterable[int], planned: int, sent: Iterable[int],
           size: int = BLOCK_SIZE) -> list[int]:
    """The indices of ``blocks`` not among ``sent``, ascending."""
    done = set(sent)
    return sorted(i for b in blocks for i in block_indices(b, planned, size) if i not in done)


def finished(blocks: Mapping[int, BlockState], planned: int, size: int = BLOCK_SIZE) -> bool:
    """Every block claimed and sent (the payments' outcomes are checked apart)."""
    return len(blocks) == block_count(planned, size) and all(s.done for s in blocks.values())
