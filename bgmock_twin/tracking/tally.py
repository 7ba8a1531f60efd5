"""The tracker's metrics counted locally and added to prometheus-client in one go.

Each followed event touched two to four metrics (messages, step durations, and at
the end of a flow the completed counter and the payment duration): a lock and a
label lookup inside prometheus-client every time, about 4 us an event. The tracker
counts them here instead and ``flush`` adds the sums once per poll of the Kafka
follower (or at once, for a change that comes alone: a registration, a 202, a
deadline). A scrape sees the figures of the polls done so far, never half a poll.
"""

from __future__ import annotations

import functools
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from prometheus_client import Counter as CounterMetric
from prometheus_client import Histogram

from bgmock_twin import metrics
from bgmock_twin.tracking.lifecycle import Channel, Kind, Outcome, Route


class Tally:
    """Counts and observations waiting for ``flush``. Not thread-safe: the tracker
    uses it under its lock."""

    def __init__(self) -> None:
        self.messages: dict[tuple[str, str, str], int] = {}  # topic, status, origin
        self.step_seconds: dict[str, list[float]] = {}
        self.completed: dict[tuple[Channel, Route, Kind, Outcome], int] = {}
        self.durations: dict[tuple[Channel, Route], list[float]] = {}
        self.in_flight: int | None = None

    def message(self, topic: str, status: str, origin: str) -> None:
        key = (topic, status, origin)
        self.messages[key] = self.messages.get(key, 0) + 1

    def step(self, step: str, seconds: float) -> None:
        values = self.step_seconds.get(step)
        if values is None:
            self.step_seconds[step] = [seconds]
        else:
            values.append(seconds)

    def counted(self, channel: Channel, route: Route, kind: Kind, outcome: Outcome) -> None:
        key = (channel, route, kind, outcome)
        self.completed[key] = self.completed.get(key, 0) + 1

    def duration(self, channel: Channel, route: Route, seconds: float) -> None:
        self.durations.setdefault((channel, route), []).append(seconds)

    def flush(self) -> None:
        """Add everything counted since the last flush to the exported metrics."""
        if self.messages:
            for (topic, status, origin), n in self.messages.items():
                _messages_counter(topic, status, origin).inc(n)
            self.messages.clear()
        if self.step_seconds:
            for step, values in self.step_seconds.items():
                observe_many(_step_histogram(step), values)
            self.step_seconds.clear()
        if self.completed:
            for (channel, route, kind, outcome), n in self.completed.items():
                metrics.PAYMENTS_COMPLETED.labels(
                    channel.value, route.value, kind.value, outcome.value).inc(n)
            self.completed.clear()
        if self.durations:
            for (channel, route), values in self.durations.items():
                observe_many(metrics.PAYMENT_DURATION.labels(channel.value, route.value),
                             values)
            self.durations.clear()
        if self.in_flight is not None:
            metrics.PAYMENTS_IN_FLIGHT.set(self.in_flight)
            self.in_flight = None


def observe_many(histogram: Any, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for every value, as one addition per bucket and one
    to the sum (the buckets and sum ``Histogram.observe`` itself updates)."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:  # not the expected layout
        for value in values:
            histogram.observe(value)
        return
    counts = [0] * len(bounds)
    size = len(bounds)
    for value in values:
        index = bisect_left(bounds, value)
        if index < size:
            counts[index] += 1
    total.inc(sum(values))
    for index, n in enumerate(counts):
        if n:
            buckets[index].inc(n)


# The labelled children, looked up once per label set (every label comes from a small
# fixed set, so the caches stay small).
@functools.lru_cache(maxsize=256)
def _messages_counter(topic: str, status: str, origin: str) -> CounterMetric:
    return metrics.KAFKA_MESSAGES.labels(topic, status, origin)


@functools.lru_cache(maxsize=64)
def _step_histogram(step: str) -> Histogram:
    return metrics.PAYMENT_STEP_DURATION.labels(step)
