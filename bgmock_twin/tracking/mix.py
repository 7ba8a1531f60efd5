"""What the i-th payment of a run is: direction, deliberate failure, amount.

Deterministic spreading instead of dice: with a failure share of 0.1 exactly one
payment in ten fails, evenly spaced, and ``both`` directions alternate, so a run of
N payments has a known balance of outcomes (testable, and the same on every run).
Amounts are drawn from a seeded generator in whole cents.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from typing import Literal

from bgmock_twin.contract import CENT
from bgmock_twin.tracking.lifecycle import Channel, Kind, Route

Direction = Literal["a_to_b", "b_to_a", "both"]

# The Kafka channel bypasses the source bank, so it cannot run out of funds.
KAFKA_FAILURE_KINDS = (Kind.UNKNOWN_BANKGOOD, Kind.UNKNOWN_PAYEE_ACCOUNT)


def route_for(index: int, direction: Direction) -> Route:
    """Direction of the i-th payment of its class (``both`` alternates)."""
    if direction == "a_to_b":
        return Route.A_TO_B
    if direction == "b_to_a":
        return Route.B_TO_A
    return Route.A_TO_B if index % 2 == 0 else Route.B_TO_A


def is_failure(index: int, share: float) -> bool:
    """True for an evenly spread ``share`` of the indices 0, 1, 2, ..."""
    if share <= 0:
        return False
    if share >= 1:
        return True
    return math.floor((index + 1) * share) > math.floor(index * share)


def usable_kinds(channel: Channel, kinds: Sequence[Kind]) -> tuple[Kind, ...]:
    wanted: tuple[Kind, ...] = tuple(k for k in kinds if k is not Kind.NORMAL)
    if channel is Channel.KAFKA:
        wanted = tuple(k for k in wanted if k in KAFKA_FAILURE_KINDS) or KAFKA_FAILURE_KINDS
    return wanted


def _failures_before(index: int, share: float) -> int:
    if share <= 0:
        return 0
    return index if share >= 1 else math.floor(index * share)


def kind_for(index: int, share: float, kinds: Sequence[Kind]) -> Kind:
    """The kind of the i-th payment: failures cycle through ``kinds``."""
    if not kinds or not is_failure(index, share):
        return Kind.NORMAL
    return kinds[_failures_before(index, share) % len(kinds)]


def plan(
    index: int, direction: Direction, share: float, kinds: Sequence[Kind]
) -> tuple[Route, Kind]:
    """Route and kind of the i-th payment. Directions alternate separately among
    the normal and among the failing payments, so both routes see both."""
    kind = kind_for(index, share, kinds)
    failures = _failures_before(index, share) if kinds else 0
    if kind is Kind.NORMAL:
        return route_for(index - failures, direction), kind
    # kinds cycle first, then directions, so every kind goes both ways
    return route_for(failures // len(kinds), direction), kind


def random_amount(rng: random.Random, low: Decimal, high: Decimal) -> Decimal:
    """A uniformly drawn amount in whole cents within [low, high]."""
    low_cents = int((low / CENT).to_integral_value(rounding="ROUND_CEILING"))
    high_cents = int((high / CENT).to_integral_value(rounding="ROUND_FLOOR"))
    if high_cents < low_cents:
        raise ValueError("the amount range holds no whole cent")
    return Decimal(rng.randint(low_cents, high_cents)) * CENT


def planned_mix(
    count: int, direction: Direction, share: float, kinds: Sequence[Kind]
) -> Counter[tuple[Route, Kind]]:
    """How many payments of each (route, kind) a run of ``count`` will send."""
    return Counter(plan(i, direction, share, kinds) for i in range(count))
