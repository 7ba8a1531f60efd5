"""The tracker's metrics added once per poll give the figures one call per event gave."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram

from bgmock_twin.tracking.tally import observe_many


def _samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels.get("le", "")): s.value
            for metric in histogram.collect() for s in metric.samples
            if not s.name.endswith("_created")}


def test_observe_many_fills_the_buckets_and_sum_observe_fills() -> None:
    registry = CollectorRegistry()
    buckets = (0.005, 0.01, 0.02, 0.04, 1.0, 5.0)
    one = Histogram("one_seconds", "x", buckets=buckets, registry=registry)
    many = Histogram("many_seconds", "x", buckets=buckets, registry=registry)
    rng = random.Random(3)
    values = [rng.choice([0.0, 0.005, 0.01, 5.0, 6.0]) for _ in range(50)] + \
        [rng.uniform(0, 7) for _ in range(500)]
    for value in values:
        one.observe(value)
    observe_many(many, values[:200])
    observe_many(many, values[200:])
    got = {(name.replace("many", "one"), le): v for (name, le), v in _samples(many).items()}
    want = _samples(one)
    assert {k: v for k, v in got.items() if not k[0].endswith("_sum")} == \
        {k: v for k, v in want.items() if not k[0].endswith("_sum")}
    assert abs(got[("one_seconds_sum", "")] - want[("one_seconds_sum", "")]) < 1e-9
