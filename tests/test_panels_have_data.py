"""Every query of every dashboard panel returns data from a real twin.

A real ``bgmock-twin run`` (embedded mode, simulation running) is scraped every
second by a real Prometheus; every panel target of every committed dashboard is
then evaluated through Prometheus' HTTP API with the dashboard variables set the
way a user would set them (this namespace, this instance). Each must parse and
return at least one finite value: a panel that shows nothing fails the test.
The same Prometheus loads the alert rules, which must all evaluate without error
against the real series (a matching mistake such as many-to-many only shows there).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence

import pytest

from grafana.queries import (
    PanelQuery,
    Prometheus,
    PrometheusError,
    load_dashboards,
    panel_queries,
    parse_label_values,
    substitute,
    variable_queries,
)
from grafana.stack import JOB, NAMESPACE, LiveStack, poll

pytestmark = pytest.mark.slow

DATA_TIMEOUT = 90.0  # overall bound for every panel to show data
STEP = 2.0


@pytest.fixture(scope="module")
def live() -> Iterator[LiveStack]:
    stack = LiveStack()
    try:
        try:
            stack.start()
        except Exception as exc:
            raise RuntimeError(f"{exc}\n{stack.diagnostics()}") from exc
        yield stack
    finally:
        stack.stop()
        stack.cleanup()


@pytest.fixture(scope="module")
def prom(live: LiveStack) -> Iterator[Prometheus]:
    client = Prometheus(live.prometheus_url)
    try:
        yield client
    finally:
        client.close()


def selection(live: LiveStack) -> dict[str, Sequence[str] | None]:
    """The variables as a user picks them: this scrape job, this deployment, this
    twin, all steps, and cluster left at its default All (this Prometheus sets no
    cluster label, as in a single-cluster setup: All must still match)."""
    return {"cluster": None, "job": [JOB], "namespace": [NAMESPACE],
            "instance": [live.instance], "step": None}


def evaluate(prom: Prometheus, queries: Sequence[PanelQuery],
             variables: Mapping[str, Sequence[str] | None], start: float, step: float,
             scrape_interval: float) -> tuple[dict[str, str], dict[str, str]]:
    """(errors, empty): queries that did not parse/evaluate, and those without data."""
    errors, empty = {}, {}
    end = time.time()
    for q in queries:
        expr = substitute(q.expr, variables, step=step, scrape_interval=scrape_interval,
                          range_seconds=end - start)
        try:
            if q.instant:
                result = prom.query(expr, end)
            else:
                result = prom.query_range(expr, start, end, step)
        except PrometheusError as exc:
            errors[q.name] = f"{exc} in {expr}"
            continue
        if not any(series.finite() for series in result):
            empty[q.name] = expr
    return errors, empty


def test_every_panel_query_returns_data(live: LiveStack, prom: Prometheus) -> None:
    queries = panel_queries(load_dashboards())
    assert len(queries) > 40, "expected the six dashboards' queries"
    variables = selection(live)
    deadline = time.monotonic() + DATA_TIMEOUT
    while True:
        live.check_alive()
        errors, empty = evaluate(prom, queries, variables, live.started_at, STEP,
                                 live.scrape_interval)
        assert not errors, "panel queries that Prometheus rejected:\n" + "\n".join(
            f"- {name}: {err}" for name, err in errors.items())
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not empty, (
        f"{len(empty)} of {len(queries)} panel queries returned no data after "
        f"{DATA_TIMEOUT:.0f}s:\n" + "\n".join(f"- {name}: {expr}" for name, expr in empty.items())
        + "\n" + live.diagnostics())


def test_template_variables_resolve(live: LiveStack, prom: Prometheus) -> None:
    variables = selection(live)
    expected = {"job": JOB, "namespace": NAMESPACE, "instance": live.instance}
    for name, dashboard in load_dashboards().items():
        for var, query in variable_queries(dashboard).items():
            match, label = parse_label_values(query)
            if match is not None:
                match = substitute(match, variables, step=STEP,
                                   scrape_interval=live.scrape_interval, range_seconds=60)
            if var == "cluster":
                # No cluster label here: the variable offers no value and its All
                # (".*") is what the panels above were evaluated with.
                assert prom.label_values(label, match) == [], f"{name}: ${var}"
                continue

            def values(match: str | None = match, label: str = label) -> list[str]:
                return prom.label_values(label, match)

            found = poll(values, DATA_TIMEOUT, f"{name} variable ${var} ({query})",
                         alive=lambda: None if live.twin.poll() is None  # type: ignore[union-attr]
                         else "twin exited")
            if var in expected:
                assert expected[var] in found, f"{name}: ${var} offers {found}"


def test_alert_rules_evaluate_without_errors(live: LiveStack, prom: Prometheus) -> None:
    def evaluated() -> list[dict[str, object]] | None:
        rules = prom.alert_rules()
        return rules if rules and all(r.get("health") != "unknown" for r in rules) else None

    rules = poll(evaluated, 30, "alert rules to be evaluated")
    broken = {r["name"]: r.get("lastError") for r in rules if r.get("health") != "ok"}
    assert not broken, f"alert rules failing against real series: {broken}"
    # The joins work on the twin's real labels: a healthy, scraped twin with its
    # thresholds exported trips none of the alerts about the twin itself, once the
    # rules have been evaluated after its first scrape (before it, absent() is right
    # to be pending) ...
    about_twin = ("BGMockTwinDown", "BGMockTwinAbsent", "BGMockTwinNotReady",
                  "BGMockAlertThresholdsMissing")
    poll(lambda: prom.query(f'up{{instance="{live.instance}"}} == 1'), 30,
         "Prometheus to scrape the twin")
    states: dict[str, object] = {}

    def quiet_about_twin() -> bool:
        states.update({r["name"]: r["state"] for r in prom.alert_rules()})
        return all(states[name] == "inactive" for name in about_twin)

    try:
        poll(quiet_about_twin, 30, "the alerts about a healthy twin to be inactive")
    except TimeoutError:
        raise AssertionError(
            f"for a healthy twin: {({n: states.get(n) for n in about_twin})}") from None

    # ... and the simulation's deliberate failures (failure_share 0.2) neither lower
    # the success ratio nor count as BGMock settling what it must refuse. The ratio's
    # join on the twin's real labels resolves: the rule's left side compared the other
    # way round against the twin's own target returns this twin.
    ratio = ('(sum by (namespace, instance) (rate(bgmock_payments_completed_total'
             '{kind="normal",outcome="success"}[10m])) / sum by (namespace, instance) '
             '(rate(bgmock_payments_completed_total{kind="normal"}[10m]))) >= on (namespace, '
             'instance) max by (namespace, instance) (bgmock_slo_target{slo="success_ratio"})')
    poll(lambda: prom.query(ratio), 45, "the normal success ratio to meet its target",
         alive=lambda: None if live.twin.poll() is None else "twin exited")  # type: ignore[union-attr]
    deliberate = 'sum(bgmock_payments_completed_total{kind!="normal"})'
    poll(lambda: prom.query(deliberate), 45, "deliberate failures to be counted")
    # The burn-rate recording rules join on the twin's real labels: every window has
    # a finite rate for this twin's fleet (its namespace, every replica summed), and
    # the drill's deliberate failures burn nothing.
    for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d"):
        recorded = (f'namespace:bgmock_payments_error_budget:burnrate{window}'
                    f'{{namespace="{NAMESPACE}"}} < 1')
        poll(lambda recorded=recorded: prom.query(recorded), 45, f"{recorded} to be recorded",
             alive=lambda: None if live.twin.poll() is None else "twin exited")  # type: ignore[union-attr]
    # (BGMockPaymentErrorBudgetBurn is one rule per burn window: every one of them.)
    drill = [(r["name"], r.get("labels", {}).get("long"), r["state"]) for r in prom.alert_rules()
             if r["name"] in ("BGMockPaymentErrorBudgetBurn", "BGMockDeliberateFailureSucceeded")]
    assert len(drill) == 5, drill
    assert all(state == "inactive" for _, _, state in drill), f"during a failure drill: {drill}"
