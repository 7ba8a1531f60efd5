"""The Prometheus alert rules: valid, unit-tested, documented, and free of magic numbers.

``promtool check rules`` and ``promtool test rules`` run here, so ``make test``
fails on a broken rule or a unit test that no longer holds. The structural checks
make sure every alert has a severity, a summary and description naming what and
where, a runbook section, a firing and a non-firing unit test, and takes its
threshold from ``bgmock_slo_target`` rather than a number in the expression.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from grafana.catalogue import TARGET_LABELS, exported_series, selectors

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "rules" / "bgmock-twin.rules.yml"
TESTS = sorted((PROM / "tests").glob("*.yml"))
RUNBOOK = PROM / "RUNBOOK.md"
PROMTOOL = "/usr/bin/promtool"

# The issue's required alerts (by what they detect) and the rule that covers each.
REQUIRED = {
    "a BGMock service down": "BGMockServiceDown",
    "Kafka unreachable": "BGMockKafkaUnreachable",
    "success ratio below SLO": "BGMockPaymentSuccessRatioLow",
    "p95 above SLO": "BGMockPaymentLatencyHigh",
    "payments stuck": "BGMockPaymentsStuck",
    "invariant violation": "BGMockInvariantViolation",
    "balance drift": "BGMockBalanceDrift",
    "outbox backlog growing": "BGMockOutboxBacklogGrowing",
    "consumer lag growing": "BGMockConsumerLagGrowing",
    "twin not scraped": "BGMockTwinDown",
}
# Alerts whose threshold is a setting (compared with bgmock_slo_target{slo=...}).
SLO_ALERTS = {
    "BGMockPaymentSuccessRatioLow": "success_ratio",
    "BGMockPaymentLatencyHigh": "p95_seconds",
    "BGMockOutboxBacklogGrowing": "outbox_pending",
    "BGMockOutboxStalled": "outbox_age_seconds",
    "BGMockConsumerLagGrowing": "consumer_lag",
    "BGMockConsumerGroupStalled": "sla_seconds",
}


@pytest.fixture(scope="module")
def alerts() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    out = {}
    for group in doc["groups"]:
        for rule in group["rules"]:
            assert "alert" in rule, f"unexpected recording rule {rule}"
            assert rule["alert"] not in out, f"duplicate alert {rule['alert']}"
            out[rule["alert"]] = rule
    return out


def github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_promtool_check_rules() -> None:
    result = subprocess.run([PROMTOOL, "check", "rules", str(RULES)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    assert TESTS, "no promtool unit tests under deploy/prometheus/tests/"
    result = subprocess.run([PROMTOOL, "test", "rules", *map(str, TESTS)],
                            capture_output=True, text=True, cwd=PROM / "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests can fail: with one threshold comparison inverted they do."""
    broken = RULES.read_text().replace(
        "bgmock_service_up{service!=\"kafka\"} == 0", "bgmock_service_up{service!=\"kafka\"} == 1")
    assert broken != RULES.read_text()
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(broken)
    (tmp_path / "tests").mkdir()
    for test in TESTS:
        (tmp_path / "tests" / test.name).write_text(test.read_text())
    result = subprocess.run([PROMTOOL, "test", "rules", *(t.name for t in TESTS)],
                            capture_output=True, text=True, cwd=tmp_path / "tests")
    assert result.returncode != 0
    assert "BGMockServiceDown" in result.stdout + result.stderr


def test_required_alerts_exist(alerts: dict[str, dict[str, Any]]) -> None:
    missing = {what: name for what, name in REQUIRED.items() if name not in alerts}
    assert not missing


def test_every_alert_is_labelled_and_annotated(alerts: dict[str, dict[str, Any]]) -> None:
    anchors = {github_anchor(line[3:]) for line in RUNBOOK.read_text().splitlines()
               if line.startswith("## ")}
    base = None
    problems = []
    for name, rule in alerts.items():
        labels, notes = rule.get("labels", {}), rule.get("annotations", {})
        if labels.get("severity") not in {"critical", "warning"}:
            problems.append(f"{name}: severity must be critical or warning")
        for key in ("summary", "description", "runbook_url"):
            if not notes.get(key):
                problems.append(f"{name}: no {key}")
        # "what is wrong and where": the description names the twin and namespace
        # (absent() has no labels to name, so it says what to look for instead).
        if "absent(" not in rule["expr"]:
            for label in ("instance", "namespace"):
                if f"$labels.{label}" not in notes.get("description", ""):
                    problems.append(f"{name}: description does not name the {label}")
        url = notes.get("runbook_url", "")
        page, _, anchor = url.partition("#")
        if anchor != name.lower() or anchor not in anchors:
            problems.append(f"{name}: runbook_url {url} has no matching RUNBOOK.md section")
        if not page.endswith("deploy/prometheus/RUNBOOK.md"):
            problems.append(f"{name}: runbook_url does not point at RUNBOOK.md")
        base = base or page
        if page != base:
            problems.append(f"{name}: runbook_url base {page} differs from {base}")
    orphans = anchors - {n.lower() for n in alerts}
    assert not problems, "\n".join(problems)
    assert not orphans, f"RUNBOOK.md sections without an alert: {orphans}"


def test_runbook_sections_say_what_to_check_first(alerts: dict[str, dict[str, Any]]) -> None:
    text = RUNBOOK.read_text()
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    by_name = {s.splitlines()[0].strip(): s for s in sections}
    for name in alerts:
        section = by_name[name]
        assert "**Meaning.**" in section, name
        assert "**Check first.**" in section, name


def test_thresholds_are_settings_not_numbers(alerts: dict[str, dict[str, Any]]) -> None:
    problems = []
    for name, rule in alerts.items():
        expr = rule["expr"]
        # Drop what is not a threshold: range durations, the quantile asked for, "* 0".
        stripped = re.sub(r"\[\d+[smhd]\]", "", expr)
        stripped = re.sub(r"histogram_quantile\(\s*0?\.\d+", "histogram_quantile(", stripped)
        stripped = re.sub(r"\*\s*0\b", "", stripped)
        numbers = re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", stripped)
        if any(float(n) != 0 for n in numbers):
            problems.append(f"{name}: literal threshold(s) {numbers} in {expr}")
        if name in SLO_ALERTS and f'bgmock_slo_target{{slo="{SLO_ALERTS[name]}"}}' not in expr:
            problems.append(f"{name}: does not compare with bgmock_slo_target "
                            f"{{slo=\"{SLO_ALERTS[name]}\"}}")
    assert not problems, "\n".join(problems)


def test_rules_use_only_exported_series(alerts: dict[str, dict[str, Any]]) -> None:
    catalogue = exported_series()
    problems = []
    for name, rule in alerts.items():
        for sel in selectors(rule["expr"]):
            if sel.metric not in catalogue:
                problems.append(f"{name}: {sel.metric} is not exported by the twin")
                continue
            allowed = catalogue[sel.metric] | TARGET_LABELS
            problems += [f"{name}: {sel.metric} has no label {label}"
                         for label in sel.matchers if label not in allowed]
        for text in rule.get("annotations", {}).values():
            for label in re.findall(r"\$labels\.(\w+)", text):
                if label not in TARGET_LABELS and not any(
                        label in catalogue.get(s.metric, ()) for s in selectors(rule["expr"])):
                    problems.append(f"{name}: annotation uses unknown label {label}")
    assert not problems, "\n".join(problems)


def test_every_alert_has_firing_and_quiet_unit_tests(alerts: dict[str, dict[str, Any]]) -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in TESTS:
        doc = yaml.safe_load(path.read_text())
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert set(alerts) - fires == set(), "alerts never shown to fire"
    assert set(alerts) - quiet == set(), "alerts never shown to stay quiet"
