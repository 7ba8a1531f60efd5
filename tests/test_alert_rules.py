"""The Prometheus alert rules: valid, unit-tested, documented, and free of magic numbers.

``promtool check rules`` and ``promtool test rules`` run here, so ``make test``
fails on a broken rule or a unit test that no longer holds, and deliberately broken
copies of the rules must make the unit tests fail. The structural checks make sure
every alert has a severity, a summary and description naming what and where, a
runbook section, a firing and a non-firing unit test, and takes its threshold from
``bgmock_slo_target`` rather than a number in the expression; the success SLO's
burn-rate alerts follow the policy pinned below (their factors and minimum traffic
are the only numbers allowed). The example Alertmanager inhibit_rules name only real
alerts and labels those alerts carry, pass ``amtool check-config``, and a real
Alertmanager (Debian's prometheus-alertmanager) mutes with them exactly what they
are meant to mute.
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from grafana.catalogue import TARGET_LABELS, exported_series, selectors
from tests.support.ports import free_port, wait_for
from tests.support.processes import stop_process

pytestmark = pytest.mark.slow  # started first by make test's workers (conftest)

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "rules" / "bgmock-twin.rules.yml"
TESTS = sorted((PROM / "tests").glob("*.yml"))
RUNBOOK = PROM / "RUNBOOK.md"
INHIBIT = ROOT / "deploy" / "alertmanager" / "inhibit-rules.yml"
PROMTOOL = "/usr/bin/promtool"
AMTOOL = "/usr/bin/amtool"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"

# The required alerts (by what they detect) and the rule that covers each.
REQUIRED = {
    "a BGMock service down": "BGMockServiceDown",
    "Kafka unreachable": "BGMockKafkaUnreachable",
    "success SLO burning its error budget": "BGMockPaymentErrorBudgetBurn",
    "p95 above SLO": "BGMockPaymentLatencyHigh",
    "payments stuck": "BGMockPaymentsStuck",
    "invariant violation": "BGMockInvariantViolation",
    "balance drift": "BGMockBalanceDrift",
    "outbox backlog growing": "BGMockOutboxBacklogGrowing",
    "consumer lag growing": "BGMockConsumerLagGrowing",
    "twin not scraped": "BGMockTwinDown",
    "control API refusals sustained": "BGMockControlApiAuthRefused",
}
# Alerts whose threshold is a setting (compared with bgmock_slo_target{slo=...}).
SLO_ALERTS = {
    "BGMockPaymentErrorBudgetBurn": "success_ratio",
    "BGMockPaymentLatencyHigh": "p95_seconds",
    "BGMockOutboxBacklogGrowing": "outbox_pending",
    "BGMockOutboxStalled": "outbox_age_seconds",
    "BGMockConsumerLagGrowing": "sla_seconds",
    "BGMockReconciliationNotRunning": "reconciliation_max_age_seconds",
}


# The success SLO's multi-window, multi-burn-rate policy (SRE workbook, "Alerting on
# SLOs"): (severity, burn factor, long window, short window, for). The rules' header
# explains the choice; this pins it.
BURN_ALERT = "BGMockPaymentErrorBudgetBurn"
BURN_POLICY = [
    ("critical", 14.4, "1h", "5m", "2m"),
    ("critical", 6, "6h", "30m", "15m"),
    ("warning", 3, "1d", "2h", "1h"),
    ("warning", 1, "3d", "6h", "3h"),
]
# No burn alert fires unless its long window completed this many normal payments.
MIN_PAYMENTS = 100
# The alerts that judge a twin's whole fleet (its namespace) and carry no instance:
# those on the payments, which every replica counts its own of (summed over
# replicas), and the reconciliation's cadence, which one replica of the fleet keeps.
FLEET_ALERTS = {BURN_ALERT, "BGMockPaymentLatencyHigh", "BGMockPaymentsStuck",
                "BGMockPaymentsDropped", "BGMockDeliberateFailureSucceeded",
                "BGMockReconciliationNotRunning"}
# The per-payment series: each replica exports its own payments' share.
PAYMENT_SERIES = ("bgmock_payments_completed_total", "bgmock_payments_dropped_total",
                  "bgmock_payment_duration_seconds", "bgmock_payments_stuck")
# Alerts about money moving wrongly: never inhibited, whatever else is down.
NEVER_INHIBITED = {"BGMockInvariantViolation", "BGMockBalanceDrift",
                   "BGMockDeliberateFailureSucceeded"}


def load_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]


@pytest.fixture(scope="module")
def alerts() -> dict[str, list[dict[str, Any]]]:
    """Alert name -> its rules (one name may have several, e.g. one per burn window)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for rule in load_rules():
        if "alert" in rule:
            out.setdefault(rule["alert"], []).append(rule)
    for name, rules in out.items():
        if len(rules) > 1:
            assert name == BURN_ALERT, f"duplicate alert {name}"
    return out


@pytest.fixture(scope="module")
def recorded() -> dict[str, dict[str, Any]]:
    """Recorded series name -> its recording rule."""
    out: dict[str, dict[str, Any]] = {}
    for rule in load_rules():
        if "record" in rule:
            assert rule["record"] not in out, f"duplicate recording rule {rule['record']}"
            out[rule["record"]] = rule
    return out


def each_alert(alerts: dict[str, list[dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, rules in alerts.items():
        for rule in rules:
            yield name, rule


RECORDED = re.compile(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b")


def full_expr(expr: str, recorded: dict[str, dict[str, Any]]) -> str:
    """The expression with every recorded series it uses expanded, transitively."""
    seen: set[str] = set()
    todo = RECORDED.findall(expr)
    parts = [expr]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        assert name in recorded, f"{name} is used but no rule records it"
        seen.add(name)
        parts.append(recorded[name]["expr"])
        todo += RECORDED.findall(recorded[name]["expr"])
    return "\n".join(parts)


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


GUARD_1H = ("\n          and on (namespace)\n"
            "          namespace:bgmock_payments_completed:increase1h >= 100")
SHORT_5M = ("\n          and on (namespace)\n"
            "          namespace:bgmock_payments_error_budget:burnrate5m > 14.4")
PER_REPLICA_1H = 'sum by (namespace) (increase(bgmock_payments_completed_total{kind="normal"}[1h]))'
# (what is broken, text in the rules (every occurrence is replaced), its broken
# replacement, the alert whose tests must then fail, the unit test that must say so).
BREAKAGES = [
    ("inverted comparison", 'bgmock_service_up{service!="kafka"} == 0',
     'bgmock_service_up{service!="kafka"} == 1', "BGMockServiceDown",
     "service down and Kafka unreachable"),
    ("no minimum-traffic guard", GUARD_1H, "", BURN_ALERT, "the minimum-traffic guard"),
    ("no short window", SHORT_5M, "", BURN_ALERT, "a real outage at canary rate"),
    ("traffic counted per replica", PER_REPLICA_1H,
     PER_REPLICA_1H.replace("(namespace)", "(namespace, instance)"), BURN_ALERT,
     "a fleet's replicas are judged together"),
    ("failures counted whatever their kind",  # in every window
     '{kind="normal",outcome!="success"}', '{outcome!="success"}', BURN_ALERT,
     "deliberate failures never burn budget"),
    ("a stopped group not paged", 'status=~"STALL|STOP"', 'status=~"STALL"',
     "BGMockConsumerGroupStalled", "consumer lag, stalled groups"),
    ("an old backlog being worked off warned about",  # age alone, not the window's verdict
     'bgmock_kafka_consumer_group_status{status="WARN"}) > 0',
     'bgmock_kafka_consumer_group_status{status="WARN"}) >= 0',
     "BGMockConsumerLagGrowing", "consumer lag, stalled groups"),
    ("refusals need not be sustained",
     "increase(bgmock_api_auth_failures_total[5m])) > 0\n        for: 15m",
     "increase(bgmock_api_auth_failures_total[5m])) > 0\n        for: 1m",
     "BGMockControlApiAuthRefused", "not a single typo"),
]


@pytest.mark.parametrize(("what", "text", "broken", "alert", "test_name"), BREAKAGES,
                         ids=[b[0] for b in BREAKAGES])
def test_promtool_unit_tests_catch_a_broken_rule(tmp_path: Path, what: str, text: str,
                                                 broken: str, alert: str,
                                                 test_name: str) -> None:
    """The unit tests can fail: with one rule deliberately broken they do. Only the
    unit test that must catch it runs (the others' verdict proves nothing here, and
    the slow-burn windows make every group cost seconds of promtool's time)."""
    source = RULES.read_text()
    assert text in source, f"{what}: the text to break is not in the rules"
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(source.replace(text, broken))
    (tmp_path / "tests").mkdir()
    files = []
    for test in TESTS:
        spec = yaml.safe_load(test.read_text())
        spec["tests"] = [group for group in spec["tests"] if test_name in group["name"]]
        if spec["tests"]:
            (tmp_path / "tests" / test.name).write_text(yaml.safe_dump(spec, sort_keys=False))
            files.append(test.name)
    assert files, f"{what}: no unit test is named {test_name!r}"
    result = subprocess.run([PROMTOOL, "test", "rules", *files],
                            capture_output=True, text=True, cwd=tmp_path / "tests")
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"{what}: the unit tests still pass"
    assert f"alertname: {alert}" in output, output
    assert test_name in output, output


def test_required_alerts_exist(alerts: dict[str, list[dict[str, Any]]]) -> None:
    missing = {what: name for what, name in REQUIRED.items() if name not in alerts}
    assert not missing


def test_every_alert_is_labelled_and_annotated(alerts: dict[str, list[dict[str, Any]]]) -> None:
    anchors = {github_anchor(line[3:]) for line in RUNBOOK.read_text().splitlines()
               if line.startswith("## ")}
    base = None
    problems = []
    for name, rule in each_alert(alerts):
        labels, notes = rule.get("labels", {}), rule.get("annotations", {})
        if labels.get("severity") not in {"critical", "warning"}:
            problems.append(f"{name}: severity must be critical or warning")
        for key in ("summary", "description", "runbook_url"):
            if not notes.get(key):
                problems.append(f"{name}: no {key}")
        # "what is wrong and where": the description names the twin and namespace
        # (absent() has no labels to name, so it says what to look for instead; the
        # fleet's alerts name the namespace of all its replicas).
        if "absent(" not in rule["expr"]:
            for label in ("namespace",) if name in FLEET_ALERTS else ("instance", "namespace"):
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


def test_runbook_sections_say_what_to_check_first(alerts: dict[str, list[dict[str, Any]]]) -> None:
    text = RUNBOOK.read_text()
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    by_name = {s.splitlines()[0].strip(): s for s in sections}
    for name in alerts:
        section = by_name[name]
        assert "**Meaning.**" in section, name
        assert "**Check first.**" in section, name


def literal_numbers(expr: str) -> list[float]:
    # Drop what is not a threshold: range durations, the quantile asked for, "* 0",
    # and the windows named in recorded series (…:burnrate1h).
    stripped = re.sub(r"\[\d+[smhd]\]", "", expr)
    stripped = RECORDED.sub("", stripped)
    stripped = re.sub(r"histogram_quantile\(\s*0?\.\d+", "histogram_quantile(", stripped)
    stripped = re.sub(r"\*\s*0\b", "", stripped)
    return [float(n) for n in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", stripped)]


def test_thresholds_are_settings_not_numbers(alerts: dict[str, list[dict[str, Any]]],
                                             recorded: dict[str, dict[str, Any]]) -> None:
    """No magic numbers: thresholds come from bgmock_slo_target. The burn-rate alerts'
    factors and minimum traffic are policy, pinned by test_burn_rate_alerts_follow_the_policy;
    the recording rules may only say "1 - target"."""
    problems = []
    factors = {factor for _, factor, *_ in BURN_POLICY}
    for name, rule in each_alert(alerts):
        allowed = {0.0} | (factors | {MIN_PAYMENTS} if name == BURN_ALERT else set())
        numbers = literal_numbers(rule["expr"])
        if set(numbers) - allowed:
            problems.append(f"{name}: literal threshold(s) {numbers} in {rule['expr']}")
        target = f'bgmock_slo_target{{slo="{SLO_ALERTS.get(name)}"}}'
        if name in SLO_ALERTS and target not in full_expr(rule["expr"], recorded):
            problems.append(f"{name}: does not compare with {target}")
    for name, rule in recorded.items():
        if set(literal_numbers(rule["expr"])) - {0.0, 1.0}:
            problems.append(f"{name}: literal number(s) in {rule['expr']}")
    assert not problems, "\n".join(problems)


def test_burn_rate_alerts_follow_the_policy(alerts: dict[str, list[dict[str, Any]]],
                                            recorded: dict[str, dict[str, Any]]) -> None:
    """Each (severity, factor, long, short, for) of the policy is one rule: both
    windows over the factor, at least MIN_PAYMENTS in the long window, labelled with
    its windows so Alertmanager and the runbook can tell them apart."""
    def norm(text: str) -> str:
        return " ".join(text.split())

    found = []
    for rule in alerts[BURN_ALERT]:
        labels = rule["labels"]
        found.append((labels["severity"], labels["long"], labels["short"], rule["for"]))
    assert sorted(found) == sorted((s, lw, sw, f) for s, _, lw, sw, f in BURN_POLICY)
    for _, factor, long, short, _ in BURN_POLICY:
        [rule] = [r for r in alerts[BURN_ALERT] if r["labels"]["long"] == long]
        expected = (f"namespace:bgmock_payments_error_budget:burnrate{long} > {factor:g} "
                    f"and on (namespace) "
                    f"namespace:bgmock_payments_error_budget:burnrate{short} > {factor:g} "
                    f"and on (namespace) "
                    f"namespace:bgmock_payments_completed:increase{long} >= {MIN_PAYMENTS}")
        assert norm(rule["expr"]) == expected
        # Each window's rate is over that window, of normal payments only.
        for window in (long, short):
            ratio = recorded[f"namespace:bgmock_payments_failed:ratio_rate{window}"]["expr"]
            assert re.findall(r"\[(\w+)\]", ratio) == [window] * 3
            assert ratio.count('kind="normal"') == 3
        count = recorded[f"namespace:bgmock_payments_completed:increase{long}"]["expr"]
        assert f'{{kind="normal"}}[{long}]' in count
    # The header says why, in the same numbers.
    header = RULES.read_text().split("groups:", 1)[0]
    for severity, factor, long, short, for_ in BURN_POLICY:
        assert re.search(rf"#\s+{severity}\s+{factor:g}\s+{long}\s+{short}\s+{for_}\s", header), \
            f"the rules' header does not document {severity} {factor:g}x {long}/{short}"
    assert f"at least {MIN_PAYMENTS}" in header


def test_rules_use_only_exported_series(alerts: dict[str, list[dict[str, Any]]],
                                        recorded: dict[str, dict[str, Any]]) -> None:
    catalogue = exported_series()
    problems = []
    named = [(name, rule) for name, rule in each_alert(alerts)] + list(recorded.items())
    for name, rule in named:
        for sel in selectors(rule["expr"]):
            if sel.metric not in catalogue:
                problems.append(f"{name}: {sel.metric} is not exported by the twin")
                continue
            allowed = catalogue[sel.metric] | TARGET_LABELS
            problems += [f"{name}: {sel.metric} has no label {label}"
                         for label in sel.matchers if label not in allowed]
        for series in RECORDED.findall(rule["expr"]):
            if series not in recorded:
                problems.append(f"{name}: {series} is not recorded by any rule")
        for text in rule.get("annotations", {}).values():
            for label in re.findall(r"\$labels\.(\w+)", text):
                if label not in TARGET_LABELS and not any(
                        label in catalogue.get(s.metric, ()) for s in selectors(rule["expr"])):
                    problems.append(f"{name}: annotation uses unknown label {label}")
    used = {s for _, rule in named for s in RECORDED.findall(rule["expr"])}
    problems += [f"{name}: recorded but never used" for name in recorded if name not in used]
    assert not problems, "\n".join(problems)


def unit_test_cases() -> list[dict[str, Any]]:
    return [case for path in TESTS for test in yaml.safe_load(path.read_text())["tests"]
            for case in test.get("alert_rule_test", [])]


def test_every_alert_has_firing_and_quiet_unit_tests(alerts: dict[str, list[dict[str, Any]]]) -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in unit_test_cases():
        (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert set(alerts) - fires == set(), "alerts never shown to fire"
    assert set(alerts) - quiet == set(), "alerts never shown to stay quiet"
    # Every burn window pair is shown firing, not just one of them.
    windows = {alert["exp_labels"].get("long") for case in unit_test_cases()
               if case["alertname"] == BURN_ALERT for alert in case.get("exp_alerts", [])}
    assert windows == {long for _, _, long, _, _ in BURN_POLICY}


# --- Alertmanager inhibition -------------------------------------------------------

MATCHER = re.compile(r'^\s*(?P<label>[a-zA-Z_][a-zA-Z0-9_]*)\s*(?P<op>=~|!~|!=|=)\s*'
                     r'"(?P<value>(?:[^"\\]|\\.)*)"\s*$')


def parse_matcher(text: str) -> tuple[str, str, str]:
    """One Alertmanager matcher in its quoted form, e.g. alertname=~"A|B"."""
    m = MATCHER.match(text)
    assert m, f"not an Alertmanager matcher: {text!r}"
    if m["op"] in ("=~", "!~"):
        re.compile(m["value"])
    return m["label"], m["op"], m["value"]


def matches(matchers: list[tuple[str, str, str]], labels: dict[str, str]) -> bool:
    """Alertmanager's semantics: regexes are anchored; a missing label is ""."""
    for label, op, value in matchers:
        got = labels.get(label, "")
        ok = {"=": got == value, "!=": got != value,
              "=~": re.fullmatch(value, got) is not None,
              "!~": re.fullmatch(value, got) is None}[op]
        if not ok:
            return False
    return True


@pytest.fixture(scope="module")
def inhibit_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(INHIBIT.read_text())
    assert isinstance(doc, dict) and set(doc) == {"inhibit_rules"}, \
        "inhibit-rules.yml holds one key, inhibit_rules, to paste into alertmanager.yml"
    rules = doc["inhibit_rules"]
    assert isinstance(rules, list) and rules
    for rule in rules:
        # The current form only: source_match/target_match(_re) are deprecated.
        assert set(rule) == {"source_matchers", "target_matchers", "equal"}, rule
        assert isinstance(rule["equal"], list) and rule["equal"], rule
        assert all(isinstance(label, str) and re.fullmatch(r"[a-zA-Z_]\w*", label)
                   for label in rule["equal"]), rule
        for side in ("source_matchers", "target_matchers"):
            assert isinstance(rule[side], list) and rule[side], rule
            for matcher in rule[side]:
                assert isinstance(matcher, str), matcher
                parse_matcher(matcher)
    return rules


def firing_label_sets() -> dict[str, list[dict[str, str]]]:
    """Alert name -> the label sets promtool proved it fires with (unit tests)."""
    out: dict[str, list[dict[str, str]]] = {}
    for case in unit_test_cases():
        for alert in case.get("exp_alerts", []):
            labels = {k: str(v) for k, v in alert.get("exp_labels", {}).items()}
            out.setdefault(case["alertname"], []).append({"alertname": case["alertname"], **labels})
    return out


def named_alerts(matchers: list[tuple[str, str, str]], alerts: dict[str, Any]) -> set[str]:
    """The real alerts a side's alertname matchers select (typos in a plain list of
    names are refused: a misspelt name would select nothing, silently)."""
    for label, op, value in matchers:
        if label == "alertname":
            for name in value.split("|") if op in ("=~", "!~") else [value]:
                if re.fullmatch(r"\w+", name):
                    assert name in alerts, f"{label}{op}{value}: no alert {name}"
    names = {n for n in alerts
             if matches([m for m in matchers if m[0] == "alertname"], {"alertname": n})}
    assert names, f"{matchers} select no alert"
    return names


def sides(rule: dict[str, Any]) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    return ([parse_matcher(m) for m in rule["source_matchers"]],
            [parse_matcher(m) for m in rule["target_matchers"]])


def test_inhibit_rules_name_real_alerts(inhibit_rules: list[dict[str, Any]],
                                        alerts: dict[str, list[dict[str, Any]]]) -> None:
    for rule in inhibit_rules:
        source, target = sides(rule)
        sources, targets = named_alerts(source, alerts), named_alerts(target, alerts)
        assert not sources & targets, f"{rule} inhibits its own source"
        assert not targets & NEVER_INHIBITED, f"{targets & NEVER_INHIBITED} must never be inhibited"


def test_inhibited_alerts_carry_the_labels_the_rules_match_on(
        inhibit_rules: list[dict[str, Any]], alerts: dict[str, list[dict[str, Any]]]) -> None:
    """Alertmanager treats a label missing on both sides as equal: an `equal` label
    that alerts lack would inhibit across twins. Every alert a rule selects must
    carry each `equal` label and each label a matcher tests, as it really fires."""
    fired = firing_label_sets()
    problems = []
    for rule in inhibit_rules:
        for side, matchers in zip(("source", "target"), sides(rule), strict=True):
            needed = set(rule["equal"]) | {label for label, _, _ in matchers}
            for name in named_alerts(matchers, alerts):
                for labels in fired[name]:
                    if missing := needed - set(labels):
                        problems.append(f"{name} fires without {missing} ({side} of {rule})")
    # Every alert but absent()'s carries the twin's labels, for any inhibit rule (the
    # fleet's alerts its namespace only: an instance would split the fleet).
    for name, rule in each_alert(alerts):
        if "absent(" in rule["expr"]:
            continue
        needed = {"namespace", "severity"} | (set() if name in FLEET_ALERTS else {"instance"})
        for labels in fired[name]:
            if missing := needed - set(labels):
                problems.append(f"{name} fires without {missing}")
            if name in FLEET_ALERTS and "instance" in labels:
                problems.append(f"{name} fires per instance, not per fleet")
    assert not problems, "\n".join(problems)


def inhibited(target: dict[str, str], firing: list[dict[str, str]],
              rules: list[dict[str, Any]]) -> bool:
    """Alertmanager's inhibition (inhibit/inhibit.go): some firing alert matches a
    rule's source, the target its target side, and all `equal` labels agree ("" if
    missing); an alert matching both sides is not inhibited by one that does too."""
    for rule in rules:
        src, tgt = sides(rule)
        if not matches(tgt, target):
            continue
        for source in firing:
            if source is target or not matches(src, source):
                continue
            if matches(src, target) and matches(tgt, source):
                continue
            if all(source.get(label, "") == target.get(label, "") for label in rule["equal"]):
                return True
    return False


# A service or Kafka down makes these noise, for the same twin.
OUTAGE_SYMPTOMS = {
    BURN_ALERT, "BGMockPaymentLatencyHigh", "BGMockPaymentsStuck", "BGMockPaymentsDropped",
    "BGMockConsumerLagGrowing", "BGMockConsumerGroupStalled",
    "BGMockReconciliationCheckUnknown", "BGMockOutboxBacklogGrowing", "BGMockOutboxStalled",
}
CAUSES = {"BGMockServiceDown", "BGMockKafkaUnreachable", "BGMockTwinDown"}


def test_inhibition_silences_the_storm_and_nothing_else(
        inhibit_rules: list[dict[str, Any]], alerts: dict[str, list[dict[str, Any]]]) -> None:
    """The rules applied to the alerts as promtool makes them fire: a cause on one
    twin silences its symptoms on that twin only, never a cause, never the money."""
    assert set(alerts) >= OUTAGE_SYMPTOMS | CAUSES
    every = [labels for sets in firing_label_sets().values() for labels in sets]

    def silenced_by(cause: str, **extra: str) -> set[str]:
        out = set()
        for target in every:
            # a cause is a twin's: it names its instance (the target's, if it has one)
            source = {"instance": "twin-0:8080", **target, **extra, "alertname": cause,
                      "severity": "critical"}
            if inhibited(target, [source, target], inhibit_rules):
                out.add(target["alertname"])
        return out

    for cause in ("BGMockServiceDown", "BGMockKafkaUnreachable"):
        assert silenced_by(cause) == OUTAGE_SYMPTOMS, cause
    # one replica not scraped says nothing of the payments the others send and count
    everything_else = set(alerts) - CAUSES - NEVER_INHIBITED - FLEET_ALERTS - \
        {"BGMockTwinAbsent"}
    assert silenced_by("BGMockTwinDown") == everything_else
    # ... of the same twin only (the fleet's alerts: of any replica of that twin); and
    # a service's outbox only by that service.
    assert silenced_by("BGMockServiceDown", instance="other:8080") == \
        OUTAGE_SYMPTOMS & FLEET_ALERTS
    assert silenced_by("BGMockServiceDown", instance="other:8080", namespace="other") == set()
    assert silenced_by("BGMockKafkaUnreachable", namespace="other") == set()
    assert silenced_by("BGMockServiceDown", service="other") == \
        OUTAGE_SYMPTOMS - {"BGMockOutboxBacklogGrowing", "BGMockOutboxStalled"}


# --- the inhibit rules in a real Alertmanager ----------------------------------------

def alertmanager_config(tmp_path: Path, inhibit_text: str) -> Path:
    """A minimal alertmanager.yml with the example inhibit_rules pasted in."""
    doc = {"route": {"receiver": "nowhere", "group_wait": "1h"},
           "receivers": [{"name": "nowhere"}], **yaml.safe_load(inhibit_text)}
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_amtool_accepts_the_inhibit_rules(tmp_path: Path,
                                          inhibit_rules: list[dict[str, Any]]) -> None:
    config = alertmanager_config(tmp_path, INHIBIT.read_text())
    result = subprocess.run([AMTOOL, "check-config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(inhibit_rules)} inhibit rules" in result.stdout
    # ... and amtool would say so if a matcher were broken.
    broken = INHIBIT.read_text().replace('alertname="BGMockTwinDown"', 'alertname=~"BGMock(("', 1)
    config = alertmanager_config(tmp_path, broken)
    result = subprocess.run([AMTOOL, "check-config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


def http_json(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    return json.loads(text) if text.strip() else None


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager (no cluster) with the example inhibit rules, on a free port."""
    port = free_port()
    config = alertmanager_config(tmp_path, INHIBIT.read_text())
    log_path = tmp_path / "alertmanager.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [ALERTMANAGER, f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            def ready() -> bool:
                if process.poll() is not None:
                    raise AssertionError(f"alertmanager exited: {log_path.read_text()}")
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                    return bool(response.status == 200)

            wait_for(ready, timeout=30, message="alertmanager to be ready")
            yield url
        finally:
            stop_process(process, grace=10)


def test_real_alertmanager_inhibits_as_intended(alertmanager: str,
                                                inhibit_rules: list[dict[str, Any]],
                                                alerts: dict[str, list[dict[str, Any]]]) -> None:
    """Every alert as promtool makes it fire, on three twins: a (bank_a down), b (no
    cause) and c (not scraped). Alertmanager itself must mute exactly a's outage
    symptoms (of the outboxes only bank_a's) and everything of c's but the causes and
    the money, nothing of b's; and agree with inhibited() above, alert by alert."""
    fired = firing_label_sets()
    symptoms = [labels for name, sets in fired.items() if name not in CAUSES
                for labels in sets[:1] if "instance" in labels]
    outbox = {"BGMockOutboxBacklogGrowing", "BGMockOutboxStalled"}
    posted: list[dict[str, str]] = []
    for twin in ("a:8080", "b:8080", "c:8080"):
        for labels in symptoms:
            services = ["bank_a", "bank_b"] if labels["alertname"] in outbox else [None]
            for service in services:
                alert = {**labels, "namespace": "pay", "instance": twin}
                if service:
                    alert["service"] = service
                posted.append(alert)
    down = {**fired["BGMockServiceDown"][0], "namespace": "pay", "instance": "a:8080",
            "service": "bank_a"}
    not_scraped = {**fired["BGMockTwinDown"][0], "namespace": "pay", "instance": "c:8080"}
    posted += [down, not_scraped]

    expected = {}
    for alert in posted:
        key = json.dumps(alert, sort_keys=True)
        twin, name = alert["instance"], alert["alertname"]
        if alert is down or alert is not_scraped or twin == "b:8080":
            expected[key] = False
        elif twin == "a:8080":
            expected[key] = name in OUTAGE_SYMPTOMS and alert.get("service") != "bank_b"
        else:
            expected[key] = name not in NEVER_INHIBITED
        assert expected[key] == inhibited(alert, posted, inhibit_rules), alert
    assert sum(expected.values()) > len(OUTAGE_SYMPTOMS)

    now = datetime.datetime.now(datetime.UTC)
    http_json(f"{alertmanager}/api/v2/alerts", [
        {"labels": alert, "startsAt": now.isoformat(),
         "endsAt": (now + datetime.timedelta(hours=1)).isoformat()} for alert in posted])

    def states() -> dict[str, bool] | None:
        got = {json.dumps(a["labels"], sort_keys=True): bool(a["status"]["inhibitedBy"])
               for a in http_json(f"{alertmanager}/api/v2/alerts")}
        return got if got == expected else None

    try:
        wait_for(states, timeout=30, interval=0.2, message="Alertmanager's inhibition")
    except TimeoutError:
        got = {json.dumps(a["labels"], sort_keys=True): bool(a["status"]["inhibitedBy"])
               for a in http_json(f"{alertmanager}/api/v2/alerts")}
        wrong = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
        raise AssertionError(f"(Alertmanager, intended) differ for {wrong}") from None



def test_payment_alerts_sum_every_replicas_payments(
        alerts: dict[str, list[dict[str, Any]]], recorded: dict[str, dict[str, Any]]) -> None:
    """Each replica counts only its own payments, so a payment is counted once by the
    fleet and only the sum over the replicas is the truth: every aggregation of a
    per-payment series in the rules drops the instance (and pod), and the alerts on
    them are the fleet's (promtool shows two replicas under the minimum traffic each
    paging together, slo-burn.test.yml)."""
    problems = []
    named = [(name, rule) for name, rule in each_alert(alerts)] + list(recorded.items())
    for name, rule in named:
        expr = full_expr(rule["expr"], recorded)
        if not any(series in expr for series in PAYMENT_SERIES):
            continue
        if name in alerts and name not in FLEET_ALERTS:
            problems.append(f"{name} reads payments but is not a fleet alert")
        for grouping in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
            labels = {label.strip() for label in grouping.split(",")}
            if labels & {"instance", "pod"}:
                problems.append(f"{name}: groups payments by {sorted(labels)}")
        if "sum" not in expr:
            problems.append(f"{name}: payments read without a sum over replicas")
    assert not problems, "\n".join(problems)
    assert set(alerts) >= FLEET_ALERTS
