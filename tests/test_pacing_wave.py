"""Unit tests of the wave profile, duration sizing and the drop-burst log lines."""

from __future__ import annotations

import itertools
import math

import pytest

from bgmock_twin.tracking import pacing
from bgmock_twin.tracking.drops import DropBursts


def _numeric_integral(wave: pacing.Wave, t: float, steps: int = 200_000) -> float:
    h = t / steps
    return math.fsum(wave.rate((i + 0.5) * h) for i in range(steps)) * h


@pytest.mark.parametrize(("base", "amplitude", "period", "t"), [
    (10.0, 5.0, 20.0, 47.3),  # never reaches zero
    (10.0, 10.0, 8.0, 19.0),  # touches zero
    (2.0, 6.0, 10.0, 33.3),  # rests at zero for part of each period
    (5.0, 0.0, 3.0, 7.0),  # no amplitude: constant
])
def test_wave_integral_is_the_closed_form_of_the_clipped_sine(
        base: float, amplitude: float, period: float, t: float) -> None:
    wave = pacing.wave(base, amplitude, period)
    assert wave.integral(t) == pytest.approx(_numeric_integral(wave, t), rel=1e-6)
    # over whole periods the sine cancels when it never clips
    if amplitude <= base:
        assert wave.integral(3 * period) == pytest.approx(3 * period * base, rel=1e-12)
    assert all(wave.rate(x / 10) >= 0 for x in range(int(t * 10)))


def test_clipped_wave_rests_at_zero_and_sends_nothing_meanwhile() -> None:
    wave = pacing.wave(2.0, 6.0, 10.0)
    # sin < -1/3 from about 5.54 s to 9.46 s into each period: rate 0
    assert wave.rate(7.5) == 0.0
    assert wave.integral(9.0) == pytest.approx(wave.integral(6.0), abs=1e-12)
    times = list(pacing.offsets(wave, 200))
    assert not [x for x in times if 5.6 < x % 10 < 9.4]


def test_wave_schedule_is_the_inverse_of_its_integral() -> None:
    wave = pacing.wave(20.0, 15.0, 6.0)
    times = list(pacing.offsets(wave, 1000))
    assert times[0] == 0.0
    assert all(b > a for a, b in itertools.pairwise(times))
    for i in (1, 17, 119, 500, 999):
        assert wave.integral(times[i]) == pytest.approx(i, abs=1e-6)
    # faster at the crest (t = period/4) than in the trough (t = 3*period/4)
    crest = [b - a for a, b in itertools.pairwise(times) if 1.3 < a < 1.7]
    trough = [b - a for a, b in itertools.pairwise(times) if 4.3 < a < 4.7]
    assert max(crest) < min(trough)
    assert 1 / (sum(crest) / len(crest)) == pytest.approx(35.0, rel=0.02)
    assert 1 / (sum(trough) / len(trough)) == pytest.approx(5.0, rel=0.05)


@pytest.mark.parametrize("profile", [
    pacing.constant(20.0), pacing.ramp(1.0, 9.0, 10.0), pacing.spike(2.0, 20.0, 5.0, 1.0),
    pacing.wave(10.0, 8.0, 7.0), pacing.wave(3.0, 9.0, 4.0),
])
def test_count_for_duration_is_the_payments_due_strictly_before_it(
        profile: pacing.Profile) -> None:
    for seconds in (0.7, 3.0, 12.5, 30.0):
        count = pacing.count_for_duration(profile, seconds)
        due = list(pacing.offsets(profile, count + 1))
        assert due[count - 1] < seconds or count == 1
        assert due[count] >= seconds - 1e-9
        assert count == max(1, math.ceil(pacing.due_within(profile, seconds) - 1e-9))


def test_duration_counts_and_windows_of_the_seed_examples() -> None:
    assert pacing.count_for_duration(pacing.constant(20.0), 30.0) == 600
    # a wave over whole periods is its base rate times the duration
    assert pacing.count_for_duration(pacing.wave(20.0, 10.0, 10.0), 30.0) == 600
    assert pacing.window_for(pacing.constant(20.0), 600) == pytest.approx(30.0)
    assert pacing.window_for(pacing.wave(20.0, 10.0, 10.0), 600) == pytest.approx(30.0)
    assert pacing.expected_duration(pacing.wave(20.0, 10.0, 10.0), 600) < 30.0


@pytest.mark.parametrize("make", [
    lambda: pacing.wave(0.0, 1.0, 5.0), lambda: pacing.wave(1.0, -1.0, 5.0),
    lambda: pacing.wave(1.0, 1.0, 0.0), lambda: pacing.wave(1.0, float("nan"), 5.0),
])
def test_wave_refuses_what_is_not_a_wave(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


def test_a_burst_of_drops_is_one_line_with_its_count() -> None:
    bursts = DropBursts(interval=10.0)
    assert all(bursts.dropped("concurrency bound reached", 100 + i * 0.01) is None
               for i in range(300))
    line = bursts.sent(103.5)
    assert line is not None
    assert (line.count, line.reason, line.reasons) == (300, "concurrency bound reached", 1)
    assert line.seconds == pytest.approx(2.99)
    assert bursts.sent(103.6) is None  # nothing dropped since


def test_drop_lines_are_rate_limited_and_nothing_is_lost() -> None:
    bursts = DropBursts(interval=10.0)
    lines = []
    now = 0.0
    for i in range(2000):  # alternating drops and sends for 40 s, and one other reason
        now = i * 0.02
        lines.append(bursts.dropped("no slot" if i % 7 else "no accounts", now))
        lines.append(bursts.sent(now + 0.01))
    lines.append(bursts.flush(now + 1))
    given = [line for line in lines if line is not None]
    assert 4 <= len(given) <= 6  # about one per 10 s, not 2000
    assert sum(line.count for line in given) == 2000
    assert given[0].count == 1 and given[1].reasons == 2


def test_a_long_burst_is_reported_while_it_lasts() -> None:
    bursts = DropBursts(interval=10.0)
    given = [bursts.dropped("no slot", i * 0.1) for i in range(250)]
    lines = [line for line in given if line is not None]
    assert [line.count for line in lines] == [101, 101]  # at 10.0 s and 20.1 s
    tail = bursts.flush(25.0)
    assert tail is not None and tail.count == 48
