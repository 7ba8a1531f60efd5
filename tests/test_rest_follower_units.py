"""The pure parts of following without Kafka: hidden steps in the lifecycle, the
request budget, the follow back-off and how the poller merges a follow check."""

from __future__ import annotations

import random
import threading
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from bgmock_twin.contract import Status
from bgmock_twin.tracking.budget import RequestBudget
from bgmock_twin.tracking.lifecycle import (
    Channel,
    Kind,
    Outcome,
    Payment,
    Route,
    Step,
    check_deadline,
    observe_step,
)
from bgmock_twin.tracking.poller import (
    FOLLOW_MAX_DELAY,
    Purpose,
    Result,
    StatusPoller,
    follow_backoff,
)
from bgmock_twin.tracking.rest_follower import (
    NOT_OBSERVED_WITHOUT_KAFKA,
    Following,
    channels,
    not_observed,
)
from tests.support.pollers import purposes_checked

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def rest_payment(hidden: frozenset[Step] = NOT_OBSERVED_WITHOUT_KAFKA) -> Payment:
    return Payment(
        payment_id=str(uuid.uuid4()), channel=Channel.REST, route=Route.A_TO_B,
        kind=Kind.NORMAL, from_clearing="01", from_account="TWIN-A-001",
        to_bankgood="TWIN-BG-B-001", to_clearing="02", to_account="TWIN-B-001",
        amount=Decimal("12.50"), intended_at=NOW, intended_mono=100.0, hidden=hidden,
    )


def test_without_kafka_a_payment_goes_from_accepted_to_settled_timed_on_the_twins_clock() -> None:
    p = rest_payment()
    observe_step(p, Step.ACCEPTED, 100.02, NOW)
    assert p.awaited is Step.SETTLED  # never waits for a step it cannot see
    change = observe_step(p, Step.SETTLED, 103.5, NOW, Status.SUCCESS)
    assert change.finished is Outcome.SUCCESS
    assert p.steps[Step.SETTLED].duration == pytest.approx(3.48)
    assert change.total_duration == pytest.approx(3.5)
    assert set(p.steps) == {Step.ACCEPTED, Step.SETTLED}


def test_a_failed_settlement_without_events_is_failed_not_invented_success() -> None:
    p = rest_payment()
    observe_step(p, Step.ACCEPTED, 100.02, NOW)
    change = observe_step(p, Step.SETTLED, 102.0, NOW, Status.FAILED)
    assert change.finished is Outcome.FAILED and p.final_status is Status.FAILED


def test_a_stuck_payment_without_kafka_is_stuck_at_settled() -> None:
    p = rest_payment()
    observe_step(p, Step.ACCEPTED, 100.02, NOW)
    change = check_deadline(p, 120.0, step_deadline=10, sla=30)
    assert change.stuck is Step.SETTLED
    assert check_deadline(p, 131.0, step_deadline=10, sla=30).counted is Outcome.STUCK


def test_the_modes_say_what_they_cannot_see_and_which_channels_they_offer() -> None:
    assert not_observed(Following.REST_POLLING, Channel.REST) == NOT_OBSERVED_WITHOUT_KAFKA
    assert not_observed(Following.KAFKA, Channel.REST) == frozenset()
    assert channels(Following.REST_POLLING) == (Channel.REST,)
    assert channels(Following.KAFKA) == (Channel.REST, Channel.KAFKA)


def test_the_request_budget_spends_at_most_its_rate_after_one_seconds_burst() -> None:
    now = [0.0]
    budget = RequestBudget(5, clock=lambda: now[0])
    assert [budget.try_take() for _ in range(5)] == [0.0] * 5  # the one-second burst
    assert budget.try_take() == pytest.approx(0.2)
    taken = 0
    for _ in range(100):  # ten seconds in steps of 0.1 s, asking greedily
        now[0] += 0.1
        while budget.try_take() == 0.0:
            taken += 1
    assert taken == pytest.approx(50, abs=1)
    assert budget.spent == taken + 5


def test_a_budget_wait_gives_up_at_its_timeout_and_when_stopped() -> None:
    budget = RequestBudget(1)
    assert budget.take(0.1)
    assert not budget.take(0.05)
    stop = threading.Event()
    stop.set()
    assert not budget.take(5, stop)
    with pytest.raises(ValueError):
        RequestBudget(0)


def test_follow_backoff_grows_to_a_cap_and_spreads_payments_apart() -> None:
    rng = random.Random(7)
    delays = [follow_backoff(attempt, rng) for attempt in range(12)]
    assert 1.0 <= delays[0] <= 2.0
    assert max(delays) <= FOLLOW_MAX_DELAY * 1.25
    assert delays[6] > delays[0] * 3
    assert len({round(follow_backoff(0, rng), 6) for _ in range(20)}) == 20  # jittered


def test_an_accept_check_scheduled_before_a_follow_check_does_not_lose_it() -> None:
    """The sender's accept check may be due before the follower's first follow check
    of the same payment: the check that runs is the follow one."""
    # an earlier-due accept check replaces the follow check's time, keeping FOLLOW
    assert purposes_checked([(Purpose.FOLLOW, 0.4), (Purpose.ACCEPT, 0.2)]) == [Purpose.FOLLOW]


def test_a_follow_check_retries_without_an_attempt_limit_on_its_own_backoff() -> None:
    attempts: list[int] = []
    done = threading.Event()

    def check(payment_id: str, purpose: Purpose) -> Result:
        attempts.append(len(attempts))
        if len(attempts) >= 15:
            done.set()
            return Result.DONE
        return Result.RETRY

    poller = StatusPoller(check, threads=1, max_attempts=3, follow_delay=lambda _: 0.01)
    poller.schedule("p1", Purpose.FOLLOW, delay=0.0)
    poller.start()
    try:
        assert done.wait(10)
    finally:
        poller.stop()
    assert len(attempts) == 15  # bounded by the checker (final or past SLA), not by 3


def test_the_status_command_names_how_the_twin_follows_and_what_it_cannot_see() -> None:
    import io

    from rich.console import Console

    from bgmock_twin.control import render

    body = {"mode": "external", "following": "rest_polling", "instance": "t",
            "notObserved": ["initiated", "forwarded", "processed", "completed"],
            "channels": ["rest"], "version": "0", "startedAt": "2026-12-06T23:00:00+00:00",
            "services": {}}
    out = Console(width=160, record=True, file=io.StringIO())
    render.status(out, body)
    assert "following payments by rest_polling; not observed: initiated, forwarded, " \
        "processed, completed" in out.export_text()
