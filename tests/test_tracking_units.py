"""Pure logic of tracking: the payment state machine, load profiles, the mix of a run."""

from __future__ import annotations

import itertools
import random
import uuid
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from bgmock_twin.contract import Status
from bgmock_twin.tracking import mix, pacing
from bgmock_twin.tracking.lifecycle import (
    FAILURE_KINDS,
    Channel,
    Kind,
    Outcome,
    Payment,
    Route,
    Step,
    check_deadline,
    observe_step,
    reject,
)

NOW = datetime(2025, 11, 20, 10, 0, tzinfo=UTC)


def payment(channel: Channel = Channel.REST, intended_mono: float = 100.0) -> Payment:
    return Payment(
        payment_id=str(uuid.uuid4()), channel=channel, route=Route.A_TO_B, kind=Kind.NORMAL,
        from_clearing="01", from_account="TWIN-A-001", to_bankgood="TWIN-BG-B-001",
        to_clearing="02", to_account="TWIN-B-001", amount=Decimal("12.50"),
        intended_at=NOW, intended_mono=intended_mono,
    )


# --- lifecycle ------------------------------------------------------------------------
def test_rest_happy_path_measures_each_step_from_the_intended_send_time() -> None:
    p = payment()
    times = {Step.ACCEPTED: 100.05, Step.INITIATED: 101.0, Step.FORWARDED: 101.5,
             Step.PROCESSED: 102.5, Step.COMPLETED: 103.0}
    for step, t in times.items():
        change = observe_step(p, step, t, NOW, Status.SUCCESS if step is Step.COMPLETED else None)
        assert change.new_step is step and change.finished is None
    assert p.awaited is Step.SETTLED and not p.finished
    change = observe_step(p, Step.SETTLED, 103.25, NOW, Status.SUCCESS)
    assert change.finished is Outcome.SUCCESS and change.counted is Outcome.SUCCESS
    assert change.total_duration == pytest.approx(3.25)
    assert p.steps[Step.ACCEPTED].duration == pytest.approx(0.05)
    assert p.steps[Step.PROCESSED].duration == pytest.approx(1.0)
    assert p.steps[Step.SETTLED].since_intended == pytest.approx(3.25)
    assert p.status == "success" and p.state == "settled"


def test_duplicates_are_repeats_and_do_not_count_twice() -> None:
    p = payment()
    for step, t in ((Step.ACCEPTED, 100.1), (Step.INITIATED, 101.0), (Step.FORWARDED, 101.2),
                    (Step.PROCESSED, 101.4)):
        observe_step(p, step, t, NOW)
    first = observe_step(p, Step.COMPLETED, 102.0, NOW, Status.SUCCESS)
    again = observe_step(p, Step.COMPLETED, 102.5, NOW, Status.SUCCESS)
    assert first.new_step is Step.COMPLETED and again.repeat and not again.changed
    observe_step(p, Step.SETTLED, 102.6, NOW, Status.SUCCESS)
    late = observe_step(p, Step.SETTLED, 103.0, NOW, Status.SUCCESS)
    assert late.repeat and late.counted is None


def test_out_of_order_steps_never_give_negative_durations() -> None:
    p = payment(Channel.KAFKA)
    observe_step(p, Step.INITIATED, 100.5, NOW)
    observe_step(p, Step.PROCESSED, 102.0, NOW)
    change = observe_step(p, Step.FORWARDED, 102.1, NOW)  # read late from its topic
    assert change.new_step is Step.FORWARDED
    assert p.steps[Step.PROCESSED].duration == pytest.approx(1.5)
    assert p.steps[Step.FORWARDED].duration == pytest.approx(1.6)
    assert all(mark.duration >= 0 for mark in p.steps.values())
    assert p.awaited is Step.COMPLETED


def test_kafka_channel_finishes_at_completed_and_never_waits_for_the_source_bank() -> None:
    p = payment(Channel.KAFKA)
    assert p.awaited is Step.INITIATED
    assert observe_step(p, Step.ACCEPTED, 100.1, NOW).repeat  # no such step on this channel
    for step, t in ((Step.INITIATED, 100.2), (Step.FORWARDED, 100.4), (Step.PROCESSED, 100.6)):
        observe_step(p, step, t, NOW)
    change = observe_step(p, Step.COMPLETED, 101.0, NOW, Status.SUCCESS)
    assert change.finished is Outcome.SUCCESS and change.total_duration == pytest.approx(1.0)
    assert observe_step(p, Step.SETTLED, 101.5, NOW, Status.SUCCESS).repeat


def test_unknown_bankgood_skips_forwarded_and_processed_and_fails() -> None:
    p = payment()
    observe_step(p, Step.ACCEPTED, 100.1, NOW)
    observe_step(p, Step.INITIATED, 101.0, NOW)
    observe_step(p, Step.COMPLETED, 101.8, NOW, Status.FAILED, "No bank mapping")
    assert p.awaited is Step.SETTLED  # the skipped steps are not waited for
    change = observe_step(p, Step.SETTLED, 102.0, NOW, Status.FAILED)
    assert change.finished is Outcome.FAILED and p.message == "No bank mapping"
    assert Step.FORWARDED not in p.steps


def test_settled_status_wins_over_completed_and_is_noted() -> None:
    p = payment()
    observe_step(p, Step.COMPLETED, 101.0, NOW, Status.SUCCESS)
    change = observe_step(p, Step.SETTLED, 101.2, NOW, Status.FAILED)
    assert change.finished is Outcome.FAILED and "settled FAILED" in (p.message or "")


def test_rejected_payment_is_counted_once() -> None:
    p = payment()
    observe_step(p, Step.ACCEPTED, 100.1, NOW)
    change = reject(p, "insufficient funds", NOW)
    assert change.finished is Outcome.REJECTED and change.counted is Outcome.REJECTED
    assert p.status == "rejected" and p.final_status is Status.FAILED
    assert reject(p, "again", NOW).repeat


def test_stuck_at_the_awaited_step_then_unstuck_when_it_arrives() -> None:
    p = payment()
    for step, t in ((Step.ACCEPTED, 100.1), (Step.INITIATED, 101.0), (Step.FORWARDED, 101.5)):
        observe_step(p, step, t, NOW)
    assert not check_deadline(p, 103.0, step_deadline=2.0, sla=30.0).changed
    change = check_deadline(p, 103.6, step_deadline=2.0, sla=30.0)
    assert change.stuck is Step.PROCESSED and p.stuck_step is Step.PROCESSED
    assert not check_deadline(p, 104.0, 2.0, 30.0).changed  # stuck once, not again
    change = observe_step(p, Step.PROCESSED, 110.0, NOW)
    assert change.unstuck is Step.PROCESSED and p.stuck_step is None
    assert p.status == "in_flight"


def test_sla_counts_stuck_once_and_a_late_finish_still_completes_the_payment() -> None:
    p = payment()
    observe_step(p, Step.ACCEPTED, 100.1, NOW)
    change = check_deadline(p, 131.0, step_deadline=10.0, sla=30.0)
    assert change.stuck is Step.INITIATED and change.counted is Outcome.STUCK
    assert p.status == "stuck"
    assert check_deadline(p, 140.0, 10.0, 30.0).counted is None
    for step, t in ((Step.INITIATED, 141.0), (Step.FORWARDED, 141.1), (Step.PROCESSED, 141.2),
                    (Step.COMPLETED, 141.3)):
        observe_step(p, step, t, NOW, Status.SUCCESS)
    change = observe_step(p, Step.SETTLED, 141.4, NOW, Status.SUCCESS)
    assert change.finished is Outcome.SUCCESS and change.counted is None
    assert p.outcome is Outcome.SUCCESS and p.counted is Outcome.STUCK
    assert p.status == "success"


def test_a_payment_never_accepted_is_stuck_waiting_for_accepted() -> None:
    p = payment()
    assert check_deadline(p, 111.0, 10.0, 30.0).stuck is Step.ACCEPTED


# --- pacing ---------------------------------------------------------------------------
def test_constant_rate_and_fixed_delay() -> None:
    assert list(pacing.offsets(pacing.constant(4.0), 5)) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert list(pacing.offsets(pacing.fixed_delay(0.5), 3)) == [0.0, 0.5, 1.0]
    assert pacing.expected_duration(pacing.constant(50.0), 500) == pytest.approx(9.98)


def test_ramp_accelerates_then_holds_the_target_rate() -> None:
    segments = pacing.ramp(1.0, 9.0, 10.0)  # 50 payments during the ramp
    times = list(pacing.offsets(segments, 70))
    assert times[0] == 0.0 and times == sorted(times)
    assert times[50] == pytest.approx(10.0)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] > gaps[40] > gaps[60] - 1e-9
    assert gaps[60] == pytest.approx(1 / 9)
    # the cumulative count matches the integral of the rate: 1*t + 0.4*t^2
    assert times[20] == pytest.approx((-1 + (1 + 1.6 * 20) ** 0.5) / 0.8)


def test_ramp_down_and_from_zero() -> None:
    down = list(pacing.offsets(pacing.ramp(10.0, 2.0, 5.0), 40))
    assert down[30] == pytest.approx(5.0)
    assert down[31] - down[30] == pytest.approx(0.5)
    up = list(pacing.offsets(pacing.ramp(0.0, 4.0, 2.0), 6))
    assert up[0] == 0.0 and up[4] == pytest.approx(2.0)


def test_spike_raises_the_rate_only_inside_its_window() -> None:
    times = list(pacing.offsets(pacing.spike(2.0, 20.0, start=5.0, duration=1.0), 60))
    in_window = [t for t in times if 5.0 <= t < 6.0]
    before = [t for t in times if t < 5.0]
    assert len(before) == 10 and len(in_window) == 20
    assert times[-1] - times[-2] == pytest.approx(0.5)
    assert Counter(int(t) for t in times if t >= 6.0)[7] == 2


@pytest.mark.parametrize("bad", [
    lambda: pacing.constant(0), lambda: pacing.fixed_delay(-1),
    lambda: pacing.ramp(1, 0, 5), lambda: pacing.spike(1, 5, -1, 2),
    lambda: pacing.ramp(1, 2, float("nan")),
])
def test_profiles_refuse_impossible_parameters(bad: object) -> None:
    with pytest.raises(ValueError):
        bad()  # type: ignore[operator]


# --- the mix of a run -------------------------------------------------------------------
def test_failure_share_is_exact_and_spread_evenly() -> None:
    flags = [mix.is_failure(i, 0.1) for i in range(100)]
    assert sum(flags) == 10
    positions = [i for i, f in enumerate(flags) if f]
    assert [b - a for a, b in itertools.pairwise(positions)] == [10] * 9
    assert sum(mix.is_failure(i, 0.0) for i in range(50)) == 0
    assert sum(mix.is_failure(i, 1.0) for i in range(50)) == 50
    assert sum(mix.is_failure(i, 1 / 3) for i in range(300)) == 100


def test_both_directions_and_every_failure_kind_are_balanced() -> None:
    planned = mix.planned_mix(120, "both", 0.25, FAILURE_KINDS)
    assert sum(planned.values()) == 120
    for route in Route:
        assert planned[(route, Kind.NORMAL)] == 45
        for kind in FAILURE_KINDS:
            assert planned[(route, kind)] == 5
    one_way = mix.planned_mix(10, "b_to_a", 0.0, FAILURE_KINDS)
    assert one_way == Counter({(Route.B_TO_A, Kind.NORMAL): 10})


def test_kafka_channel_cannot_fail_for_funds() -> None:
    assert Kind.INSUFFICIENT_FUNDS not in mix.usable_kinds(Channel.KAFKA, FAILURE_KINDS)
    assert mix.usable_kinds(Channel.KAFKA, [Kind.INSUFFICIENT_FUNDS]) == mix.KAFKA_FAILURE_KINDS
    assert mix.usable_kinds(Channel.REST, FAILURE_KINDS) == FAILURE_KINDS


def test_amounts_are_whole_cents_within_the_range() -> None:
    rng = random.Random(7)
    amounts = [mix.random_amount(rng, Decimal("1.00"), Decimal("2.50")) for _ in range(500)]
    assert all(Decimal("1.00") <= a <= Decimal("2.50") for a in amounts)
    assert all(a == a.quantize(Decimal("0.01")) for a in amounts)
    assert len(set(amounts)) > 50
    assert mix.random_amount(rng, Decimal("3.33"), Decimal("3.33")) == Decimal("3.33")
    with pytest.raises(ValueError):
        mix.random_amount(rng, Decimal("1.001"), Decimal("1.009"))


def test_invalid_message_logging_is_rate_limited() -> None:
    import time

    from bgmock_twin.tracking.follower import LogBudget

    budget = LogBudget("held_back", per_window=2, window_seconds=0.05)
    assert [budget.allow() for _ in range(5)] == [True, True, False, False, False]
    time.sleep(0.06)
    assert budget.allow() and budget.allow() and not budget.allow()


def test_a_settle_request_behind_a_queued_accept_check_is_not_lost() -> None:
    """A settle check asked for while an (earlier) accept check of the same payment
    is queued rides on it: the check that runs is the settle one, which retries
    until the bank's status is final. Losing it left payments unsettled until
    the step deadline."""
    from bgmock_twin.tracking.poller import Purpose
    from tests.support.pollers import purposes_checked

    # a later-due settle check is merged into the accept check, not dropped
    assert purposes_checked([(Purpose.ACCEPT, 0.2), (Purpose.SETTLE, 0.3)]) == [Purpose.SETTLE]


def test_the_poller_subscribes_to_the_trackers_steps_and_settles_a_completed_rest_payment() -> None:
    """No callback is patched onto the tracker: the poller subscribes to its typed
    step events, and a REST payment seen ``completed`` gets a settle check (a
    Kafka one, which finishes at ``completed``, does not)."""
    import threading

    from bgmock_twin.bus.base import Record
    from bgmock_twin.contract import TOPIC_COMPLETED, TransactionResponseEvent
    from bgmock_twin.tracking.poller import Purpose, Result, StatusPoller
    from bgmock_twin.tracking.tracker import StepReached, Tracker

    class Ledger:
        def write_payment(self, payment: Payment, now: datetime) -> None:
            pass

        def write_change(self, payment: Payment, step: object, now: datetime,
                         narrow: bool = False, transaction: bool = False) -> None:
            pass

    checked: list[tuple[str, Purpose]] = []
    done = threading.Event()

    def check(payment_id: str, purpose: Purpose) -> Result:
        checked.append((payment_id, purpose))
        done.set()
        return Result.DONE

    tracker = Tracker(Ledger(), step_deadline=10, sla=30)  # type: ignore[arg-type]
    poller = StatusPoller(check, threads=1)
    seen: list[StepReached] = []
    tracker.subscribe(seen.append)
    tracker.subscribe(poller.on_step)
    rest, kafka = payment(), payment(Channel.KAFKA)
    kafka.transaction_id = uuid.uuid4()
    tracker.register(rest)
    tracker.register(kafka)
    tracker.accepted(rest.payment_id, uuid.uuid4())
    rest_tx = tracker.get(rest.payment_id).transaction_id  # type: ignore[union-attr]
    for tx in (rest_tx, kafka.transaction_id):
        record = Record(TOPIC_COMPLETED, 0, 0, b"01", b"{}")
        tracker.on_event(record, TransactionResponseEvent(tx, Status.SUCCESS))
    assert seen == [
        StepReached(rest.payment_id, Channel.REST, Step.ACCEPTED, False),
        StepReached(rest.payment_id, Channel.REST, Step.COMPLETED, False),
        StepReached(kafka.payment_id, Channel.KAFKA, Step.COMPLETED, True),
    ]
    poller.start()
    try:
        assert done.wait(5)
    finally:
        poller.stop()
    assert checked == [(rest.payment_id, Purpose.SETTLE)]


def test_status_checks_due_while_a_check_hangs_are_taken_by_the_other_threads() -> None:
    """The poller's threads sleep until a check is due (no polling): the one that
    takes a check hands the wait for the next over, so a slow check holds up nothing."""
    import threading

    from bgmock_twin.tracking.poller import Purpose, Result, StatusPoller
    from tests.support.ports import wait_for

    release = threading.Event()
    started: list[str] = []

    def check(payment_id: str, purpose: Purpose) -> Result:
        started.append(payment_id)
        if payment_id == "slow":
            release.wait(30)
        return Result.DONE

    poller = StatusPoller(check, threads=3)
    poller.start()
    try:
        poller.schedule("slow", Purpose.SETTLE, delay=0.05)
        poller.schedule("next", Purpose.SETTLE, delay=0.3)
        poller.schedule("last", Purpose.SETTLE, delay=0.6)
        wait_for(lambda: started == ["slow", "next", "last"], timeout=10,
                 message="the later checks ran beside the hanging one")
    finally:
        release.set()
        poller.stop()


def test_a_route_names_its_banks_by_the_contract_and_channel_is_the_contracts() -> None:
    from bgmock_twin import contract
    from bgmock_twin.contract import BANK_A, BANK_B

    assert Route.A_TO_B.source is BANK_A and Route.A_TO_B.destination is BANK_B
    assert Route.B_TO_A.source is BANK_B and Route.B_TO_A.destination is BANK_A
    assert Channel is contract.Channel
