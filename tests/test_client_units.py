"""The client's own parsing: the threshold grammar, durations, the profile part of
the request body, plus the client's import boundary (it talks HTTP and imports
nothing of the daemon). How a duration becomes a count is the twin's business
(``tests/test_pacing_wave.py``, ``tests/test_simulation_sizing.py``)."""

from __future__ import annotations

import ast
import io
import math
from pathlib import Path

import pytest

from bgmock_twin.control.durations import parse_duration
from bgmock_twin.control.profiles import profile_fields
from bgmock_twin.control.summary import Summary
from bgmock_twin.control.thresholds import NAMES, ThresholdError, evaluate, parse_threshold

CONTROL = Path(__file__).resolve().parent.parent / "bgmock_twin" / "control"


# --- thresholds -----------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "name", "op", "limit"), [
    ("success_ratio>=0.99", "success_ratio", ">=", 0.99),
    ("p95_total<5", "p95_total", "<", 5.0),
    ("dropped==0", "dropped", "==", 0.0),
    ("stuck == 0", "stuck", "==", 0.0),
    ("  p99_settled <= 1.5e1 ", "p99_settled", "<=", 15.0),
    ("achieved_rate>.5", "achieved_rate", ">", 0.5),
    ("error_ratio!=1", "error_ratio", "!=", 1.0),
    ("failed>-1", "failed", ">", -1.0),
    ("max_send_lag<0.25", "max_send_lag", "<", 0.25),
])
def test_threshold_grammar_reads_name_operator_number(text: str, name: str, op: str,
                                                     limit: float) -> None:
    threshold = parse_threshold(text)
    assert (threshold.name, threshold.op, threshold.limit) == (name, op, limit)
    assert threshold.expression == text.strip()


@pytest.mark.parametrize("text", [
    "", "p95_total", "p95_total<", "<5", "p95_total=5", "p95_total=>5", "p95_total<<5",
    "p95_total<5s", "p95_total<five", "p95_total<5 and 1", "P95_total<5",
    "p95_total<inf", "p95_total<nan", "success_ratio>=0.99,dropped==0",
    "__import__('os').system('true')<1", "dropped==0;", "1<dropped",
])
def test_threshold_grammar_refuses_everything_else(text: str) -> None:
    with pytest.raises(ThresholdError, match="cannot read threshold"):
        parse_threshold(text)


def test_unknown_threshold_name_is_an_error_with_suggestions() -> None:
    with pytest.raises(ThresholdError, match=r"unknown threshold name 'p95_totl'.*p95_total"):
        parse_threshold("p95_totl<5")
    with pytest.raises(ThresholdError, match="unknown threshold name 'latency'"):
        parse_threshold("latency<5")


@pytest.mark.parametrize(("text", "value", "holds"), [
    ("p95_total<5", 4.999, True), ("p95_total<5", 5.0, False),
    ("p95_total<=5", 5.0, True), ("success_ratio>=0.99", 0.99, True),
    ("success_ratio>=0.99", 0.9899, False), ("dropped==0", 0, True), ("dropped==0", 1, False),
    ("stuck!=0", 0, False), ("achieved_rate>10", 10.0, False), ("achieved_rate>10", 10.01, True),
])
def test_threshold_verdicts(text: str, value: float, holds: bool) -> None:
    assert parse_threshold(text).holds(value) is holds


def test_a_threshold_without_a_value_does_not_hold() -> None:
    verdicts = evaluate([parse_threshold("p90_total<100"), parse_threshold("dropped==0")],
                        {"dropped": 0})
    assert [v.ok for v in verdicts] == [False, True]
    assert parse_threshold("p95_total>=0").holds(math.nan) is False


def test_every_threshold_name_gets_a_value_slot_from_a_summary() -> None:
    detail = {
        "planned": 4, "dispatched": 4, "dropped": 0, "unfinished": 0,
        "outcomes": {"success": 3, "failed": 1, "rejected": 0, "stuck": 0},
        "latency": {"total": {"count": 4, "p50": 1.0, "p95": 2.0, "p99": 2.5},
                    "steps": {"settled": {"count": 4, "p50": 0.1, "p95": 0.2, "p99": 0.3}}},
        "sendLag": {"count": 4, "p50": 0.001, "p95": 0.002, "p99": 0.003, "max": 0.004},
    }
    values = Summary(detail, run_seconds=3.0, send_seconds=2.0).values()
    assert set(NAMES) <= set(values)
    assert values["success_ratio"] == 0.75
    assert values["error_ratio"] == 0.25
    assert values["achieved_rate"] == 2.0
    assert values["p95_total"] == 2.0 and values["p99_settled"] == 0.3
    assert values["max_send_lag"] == 0.004
    assert values["mean_total"] is None  # not given by the API: the threshold cannot hold
    assert Summary(detail).missing_stats() == ["min", "mean", "p90", "max"]


# --- durations ------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("2m", 120), ("1h", 3600), ("1h30m", 5400), ("1m30s", 90), ("1.5s", 1.5),
    ("500ms", 0.5), ("90", 90), ("0.25", 0.25), (" 2M ", 120), ("1h0m5s", 3605),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "0", "0s", "-5s", "5x", "s", "1.s", "1 m", "m1",
                                  "inf", "nan", "1e3s", "30sec", "5s-"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("profile", "params", "body"), [
    ("constant", {"rate": 20.0}, {"profile": "constant", "rate": 20.0}),
    ("constant", {"delay": 2.0}, {"profile": "constant", "delay": 2.0}),
    ("ramp", {"ramp_from": 1.0, "ramp_to": 50.0, "ramp_seconds": 60.0},
     {"profile": "ramp", "ramp": {"fromRate": 1.0, "toRate": 50.0, "duration": 60.0}}),
    ("spike", {"rate": 5.0, "spike_rate": 40.0, "spike_start": 0.0, "spike_seconds": 5.0},
     {"profile": "spike", "rate": 5.0, "spike": {"rate": 40.0, "start": 0.0, "duration": 5.0}}),
    ("wave", {"wave_base": 20.0, "wave_amplitude": 10.0, "wave_period": 60.0},
     {"profile": "wave", "wave": {"baseRate": 20.0, "amplitude": 10.0, "periodSeconds": 60.0}}),
])
def test_profile_fields_of_the_request_body(profile: str, params: dict[str, float],
                                            body: dict[str, object]) -> None:
    assert profile_fields(profile, **params) == body


@pytest.mark.parametrize(("profile", "params", "message"), [
    ("constant", {}, "needs --rate or --delay"),
    ("ramp", {"ramp_from": 1.0}, "needs --ramp-from, --ramp-to and --ramp-duration"),
    ("spike", {"rate": 1.0, "spike_rate": 5.0}, "needs --spike-rate"),
    ("wave", {"rate": 1.0}, "needs --wave-base, --wave-amplitude and --wave-period"),
    ("sawtooth", {"rate": 1.0}, "unknown profile"),
])
def test_profiles_missing_their_parameters(profile: str, params: dict[str, float],
                                           message: str) -> None:
    with pytest.raises(ValueError, match=message):
        profile_fields(profile, **params)


# --- boundary -------------------------------------------------------------------------------
def test_the_client_imports_nothing_of_the_daemon() -> None:
    """bgmock_twin.control talks JSON over HTTP: no settings, domain or api imports."""
    offenders = []
    for path in sorted(CONTROL.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] if node.level == 0 else ["(relative)"]
            for name in names:
                if name == "(relative)" or (name.startswith("bgmock_twin") and
                                            not name.startswith("bgmock_twin.control")):
                    offenders.append(f"{path.name}: {name}")
    assert len(list(CONTROL.glob("*.py"))) >= 5
    assert offenders == []


# --- rendering ------------------------------------------------------------------------------
SNAKE_STATUS = {
    "mode": "embedded", "instance": "t", "version": "0.1.0",
    "started_at": "2026-12-06T22:49:25+00:00",
    "services": {"bank_a": {"up": True, "last_check": "2026-12-06T22:50:00+00:00",
                            "latency_seconds": 0.0042, "reason": None,
                            "consecutive_failures": 0},
                 "kafka": {"up": False, "last_check": "2026-12-06T22:50:01+00:00",
                           "latency_seconds": None, "reason": "broker down",
                           "consecutive_failures": 3}},
    "books": {"status": "ok", "violations": 0, "last_run": "2026-12-06T22:51:00+00:00"},
}


def _camel(value: object) -> object:
    if isinstance(value, dict):
        return {(k.split("_")[0] + "".join(p.title() for p in k.split("_")[1:])
                 if k not in ("bank_a",) else k): _camel(v) for k, v in value.items()}
    return value


def test_status_table_reads_the_camelcase_status_body() -> None:
    body = _camel(SNAKE_STATUS)
    assert isinstance(body, dict)
    from rich.console import Console

    from bgmock_twin.control import render

    out = Console(width=160, record=True, file=io.StringIO())
    render.status(out, body)
    text = out.export_text()
    assert "started 2026-12-06T22:49:25+00:00" in text
    assert "2026-12-06T22:50:00+00:00" in text and "0.004 s" in text
    kafka = next(line for line in text.splitlines() if line.startswith("kafka"))
    assert "DOWN" in kafka and "3" in kafka and "broker down" in kafka
    assert "last reconciliation 2026-12-06T22:51:00+00:00" in text
