"""The benchmarks run: ``python -m tests.benchmarks --quick`` starts every benchmark in
its seconds-long mode, each prints its figure lines with the machine's conditions,
and the summary is written to ``--out``. Speed is never asserted here: the figures
of a quick run on a busy machine mean nothing, only that they are produced."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # started first by make test's workers (conftest)

ROOT = Path(__file__).resolve().parents[1]
# The stable names (issue 12), then the older figures kept beside them.
STABLE = (
    "events.followed_per_cpu_second", "pacing.max_rate_within_1pct",
    "pacing.send_lag_p99_seconds", "pacing.sink_max_rate_within_1pct",
    "pacing.sink_send_lag_p99_seconds", "locust.ratio_per_request", "kafka_channel.max_rate",
    "ledger.pg_rows_per_second", "scrape.p99_seconds", "idle.cpu_share",
    "footprint.rss_bytes_1m",
)
FIGURES = (
    *STABLE,
    "pacing.rate_50.achieved", "pacing.rate_50.send_lag_p99", "pacing.max_sustained_rate",
    "pacing.sink_max_sustained_rate",
    "events.followed_per_second", "events.per_cpu_second", "events.persisted_per_second",
    "events.decode_correlate_only",
    "locust.twin_payments_per_core", "locust.fasthttpuser_requests_per_core",
    "locust.ratio_twin_vs_fasthttpuser",
    "footprint.idle_cpu", "footprint.metrics_scrape_median", "footprint.rss_finished",
    "footprint.rss_in_flight",
    # issue 13: one simulation run by a fleet of 1, 2 and 3 replicas
    "fleet.rate_1", "fleet.rate_2", "fleet.rate_3",
)
# Figures that are a count of work done or memory held: never zero when the run worked
# (a rate ladder may honestly pass no rung in a seconds-long run on a busy machine).
POSITIVE = {name for name in FIGURES if not name.endswith(
    ("max_sustained_rate", "max_rate_within_1pct", "max_rate", "idle_cpu", "cpu_share",
     "send_lag_p99", "send_lag_p99_seconds"))}
ROW_KEYS = {"name", "value", "unit", "target", "met", "detail", "conditions"}
LINE = re.compile(
    r"^RESULT (?P<name>\S+) = (?P<value>[-\d,.]+|nan) (?P<unit>.+?)(  \[target .+: (MET|MISSED)\])?"
    r"(  \(.*\))?  \{cores=\d+ load1/5/15=[\d.]+/[\d.]+/[\d.]+ python=[\d.]+ cpu='.+'\}$")


def test_every_benchmark_prints_its_figures_in_quick_mode(tmp_path: Path) -> None:
    out = tmp_path / "summary.txt"
    results = tmp_path / "results.jsonl"
    completed = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks", "--quick", "--out", str(out),
         "--results", str(results)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    values: dict[str, float] = {}
    for line in completed.stdout.splitlines():
        if line.startswith("RESULT "):
            match = LINE.match(line)
            assert match, f"malformed result line: {line}"
            values[match["name"]] = float(match["value"].replace(",", ""))
    assert set(FIGURES) <= set(values), f"missing: {sorted(set(FIGURES) - set(values))}"
    for name in FIGURES:
        assert math.isfinite(values[name]) and values[name] >= 0, (name, values[name])
    for name in POSITIVE:
        assert values[name] > 0, (name, values[name])
    rows = {row["name"]: row for row in map(json.loads, results.read_text().splitlines())}
    for name in STABLE:
        row = rows[name]
        assert set(row) == ROW_KEYS, (name, sorted(row))
        assert row["target"] and isinstance(row["met"], bool), (name, row)
        assert row["conditions"]["cores"] >= 1 and len(row["conditions"]["load"]) == 3, row
    summary = out.read_text()
    assert "machine at start: cores=" in summary
    assert all(name in summary for name in FIGURES)
    assert "failed to run" not in summary
