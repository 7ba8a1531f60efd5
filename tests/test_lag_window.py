"""The Burrow-style evaluator and lag in seconds, on recorded series of readings.

Each series is what the lag job would read every interval: (committed offset, high
watermark) of one partition. Real brokers are not needed here (Tansu's watermarks
count batches, so its lag values would not mean what the series mean); the
plumbing is tested on the in-process bus and the real broker in test_books_lag.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from bgmock_twin.books.lag_window import (
    LagStatus,
    Mark,
    Reading,
    advance,
    lag_seconds,
    partition_status,
    remember,
    worst,
)

SIZE = 5
INTERVAL = 15.0


def window(series: Sequence[tuple[int, int]], size: int = SIZE) -> tuple[Reading, ...]:
    """The window after reading (offset, high) pairs one interval apart."""
    out: tuple[Reading, ...] = ()
    for i, (offset, high) in enumerate(series):
        out = advance(out, Reading(i * INTERVAL, offset, high), size)
    return out


def status(series: Sequence[tuple[int, int]], size: int = SIZE) -> LagStatus:
    return partition_status(window(series, size), size)


# --- each status ---------------------------------------------------------------------

def test_caught_up_at_any_reading_is_ok() -> None:
    assert status([(10, 10), (10, 12), (10, 14), (10, 16), (10, 18)]) is LagStatus.OK
    assert status([(10, 12), (10, 14), (18, 18), (18, 20), (18, 22)]) is LagStatus.OK


def test_busy_but_keeping_up_is_ok() -> None:
    """Never caught up at a reading, but the lag falls now and then: a busy consumer."""
    assert status([(100, 103), (140, 145), (180, 182), (230, 236), (260, 263)]) is LagStatus.OK
    # a steady backlog that moves is not "falling behind" either
    assert status([(100, 104), (140, 144), (180, 184), (220, 224), (260, 264)]) is LagStatus.OK


def test_offsets_frozen_while_events_arrive_is_stall() -> None:
    assert status([(50, 52), (50, 55), (50, 55), (50, 61), (50, 70)]) is LagStatus.STALL


def test_offsets_and_lag_frozen_over_a_full_window_is_stop() -> None:
    assert status([(50, 58)] * SIZE) is LagStatus.STOP


def test_lag_growing_across_the_whole_window_is_warn() -> None:
    assert status([(100, 102), (110, 115), (120, 125), (130, 139), (140, 150)]) is LagStatus.WARN


def test_lag_that_falls_once_is_not_warn() -> None:
    assert status([(100, 102), (110, 115), (120, 124), (130, 139), (140, 150)]) is LagStatus.OK


# --- the window's edges ----------------------------------------------------------------

def test_a_partial_window_with_lag_is_unknown_and_a_full_one_is_judged() -> None:
    frozen = [(50, 58)] * SIZE
    for n in range(1, SIZE):
        assert status(frozen[:n]) is LagStatus.UNKNOWN, n
    assert status(frozen) is LagStatus.STOP
    assert partition_status((), SIZE) is LagStatus.UNKNOWN


def test_a_caught_up_reading_counts_until_it_slides_out() -> None:
    series = [(50, 50), *[(50, 50 + i) for i in range(1, SIZE)]]
    assert status(series) is LagStatus.OK  # the oldest reading had no lag
    assert status([*series, (50, 50 + SIZE)]) is LagStatus.STALL  # ... and now it is gone


def test_the_window_keeps_the_last_readings_only() -> None:
    readings = window([(i, i + 1) for i in range(12)])
    assert [r.offset for r in readings] == [7, 8, 9, 10, 11]


def test_a_window_of_two() -> None:
    assert status([(5, 9), (5, 9)], size=2) is LagStatus.STOP
    assert status([(5, 9), (5, 12)], size=2) is LagStatus.STALL
    assert status([(5, 9), (6, 12)], size=2) is LagStatus.WARN


# --- restarts --------------------------------------------------------------------------

def test_a_group_that_restarts_from_latest_is_ok_at_once() -> None:
    """Stalled, then the group is recreated: it starts at the end (``latest``), so the
    backlog is skipped - and those payments stay PENDING (the tracker reports them
    stuck; the group itself is healthy again)."""
    stalled = [(50, 52), (50, 55), (50, 58), (50, 61), (50, 64)]
    assert status(stalled) is LagStatus.STALL
    assert status([*stalled, (64, 64)]) is LagStatus.OK
    assert status([*stalled, (64, 64), (64, 67), (64, 69), (64, 72), (64, 75)]) is LagStatus.OK


def test_a_broker_that_lost_its_data_starts_a_new_window() -> None:
    """The topic is recreated and the group rejoins at latest: offsets and ends go
    backwards. Readings from before say nothing about the new epoch."""
    before = [(500, 520)] * SIZE
    assert status(before) is LagStatus.STOP
    after = window([*before, (3, 4)])
    assert [(r.offset, r.high) for r in after] == [(3, 4)]
    assert partition_status(after, SIZE) is LagStatus.UNKNOWN
    assert status([*before, (3, 4), (3, 6), (3, 6), (3, 8), (3, 9)]) is LagStatus.STALL
    # the end alone going backwards (data lost, committed offset kept) resets too
    assert len(window([*before, (500, 10)])) == 1


def test_the_group_is_as_bad_as_its_worst_partition() -> None:
    assert worst([LagStatus.OK, LagStatus.STALL, LagStatus.WARN]) is LagStatus.STALL
    assert worst([LagStatus.OK, LagStatus.UNKNOWN]) is LagStatus.UNKNOWN
    assert worst([LagStatus.STALL, LagStatus.STOP]) is LagStatus.STOP
    assert worst([LagStatus.STOP, LagStatus.MISSING]) is LagStatus.MISSING
    assert worst([]) is LagStatus.UNKNOWN


# --- lag in seconds --------------------------------------------------------------------

def marks(series: Sequence[tuple[float, int]], keep: int = 100) -> tuple[Mark, ...]:
    out: tuple[Mark, ...] = ()
    for at, high in series:
        out = remember(out, at, high, keep)
    return out


def test_no_lag_is_zero_seconds() -> None:
    history = marks([(0, 10), (15, 20)])
    assert lag_seconds(history, 20, 30) == 0.0
    assert lag_seconds(history, 25, 30) == 0.0  # an odd broker: offset past the end
    assert lag_seconds((), 5, 30) == 0.0


def test_the_oldest_unconsumed_event_is_dated_between_two_readings() -> None:
    # the end stood at 10 from t=0 to t=30, was 20 at t=45
    history = marks([(0, 10), (15, 10), (30, 10), (45, 20), (60, 20)])
    assert history == (Mark(10, 0, 30), Mark(20, 45, 60))
    # offset 10 is the first of the ten records that arrived between t=30 and t=45
    assert lag_seconds(history, 10, 100) == pytest.approx(100 - (30 + 0.1 * 15))
    assert lag_seconds(history, 19, 100) == pytest.approx(100 - 45)
    # it grows with the clock while nothing is consumed
    assert lag_seconds(history, 10, 200) == pytest.approx(lag_seconds(history, 10, 100) + 100)


def test_a_backlog_older_than_the_history_is_at_least_its_age() -> None:
    history = marks([(0, 10), (15, 12), (30, 14), (45, 16)], keep=2)
    assert [m.high for m in history] == [14, 16]
    assert lag_seconds(history, 3, 60) == pytest.approx(60 - 30)


def test_an_end_that_goes_backwards_forgets_the_history() -> None:
    history = marks([(0, 500), (15, 600), (30, 4)])
    assert history == (Mark(4, 30, 30),)
    assert lag_seconds(history, 0, 45) == pytest.approx(15)
