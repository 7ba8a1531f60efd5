"""The provisioned dashboards: generated from code, complete, and well-formed.

Checks what Grafana will load (grafana/dashboards/*.json): it matches the code in
grafana/build.py; grafana-foundation-sdk's own models accept it (and reject broken
dashboards); every panel has a unit, a description and thresholds; every query is
filtered by $cluster/$job/$namespace/$instance, uses only series the twin exports,
and parses (promtool); the timezone is set in one place; provisioning points at the
stable data source uid.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from grafana import build, validate
from grafana.catalogue import TARGET_LABELS, exported_series, selectors
from grafana.queries import (
    iter_panels,
    load_dashboards,
    panel_queries,
    parse_label_values,
    substitute,
    variable_queries,
)

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
EXPECTED = {"overview", "payments", "services", "kafka", "books", "twin"}


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    return load_dashboards()


def all_panels(dashboards: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, p) for name, d in dashboards.items() for p in iter_panels(d)]


def test_committed_json_matches_the_code() -> None:
    assert build.stale() == [], "run: .venv/bin/python grafana/build.py"


def test_a_hand_edit_is_detected(tmp_path: Path) -> None:
    for name in build.DASHBOARDS:
        (tmp_path / f"{name}.json").write_text(build.render(name), encoding="utf-8")
    assert build.stale(tmp_path) == []
    edited = json.loads((tmp_path / "kafka.json").read_text())
    edited["panels"][1]["title"] = "edited in the UI"
    (tmp_path / "kafka.json").write_text(json.dumps(edited, indent=2, sort_keys=True) + "\n")
    (tmp_path / "stray.json").write_text("{}\n")
    assert build.stale(tmp_path) == ["kafka", "stray"]


def test_check_mode_exit_code() -> None:
    result = subprocess.run([sys.executable, str(GRAFANA / "build.py"), "--check"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_the_six_dashboards_with_stable_uids(dashboards: dict[str, dict[str, Any]]) -> None:
    assert set(dashboards) == EXPECTED
    uids = {d["uid"] for d in dashboards.values()}
    assert uids == {f"bgmock-{name}" for name in EXPECTED}
    for name, d in dashboards.items():
        assert d["title"].startswith("BGMock"), name
        assert d["description"], name
        assert "bgmock" in d["tags"], name
        assert d["schemaVersion"] >= 36, name


FILTER_VARIABLES = ("cluster", "job", "namespace", "instance")


def test_templating_by_datasource_cluster_job_namespace_and_instance(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    for name, d in dashboards.items():
        variables = {v["name"]: v for v in d["templating"]["list"]}
        names = [v["name"] for v in d["templating"]["list"]]
        assert names[:5] == ["datasource", *FILTER_VARIABLES], name
        ds = variables["datasource"]
        assert ds["type"] == "datasource" and ds["query"] == "prometheus", name
        assert ds["current"]["value"] == build.DATASOURCE_UID, name
        queries = variable_queries(d)
        for i, var in enumerate(FILTER_VARIABLES):
            match, label = parse_label_values(queries[var])
            assert label == var and match is not None, (name, var)
            assert match.startswith("bgmock_twin_ready"), (name, var)
            # All = ".*", which also matches a series without the label (no cluster
            # label outside a multi-cluster setup), and All is the default.
            assert variables[var]["includeAll"] and variables[var]["multi"], (name, var)
            assert variables[var]["allValue"] == ".*", (name, var)
            assert variables[var]["current"]["value"] == ["$__all"], (name, var)
            # each narrows by the ones before it: cluster -> job -> namespace -> instance
            for outer in FILTER_VARIABLES[:i]:
                assert f'{outer}=~"${outer}"' in match, (name, var, outer)
            for inner in FILTER_VARIABLES[i:]:
                assert f"${inner}" not in match, (name, var, inner)


def test_regex_all_matches_an_absent_cluster_label(tmp_path: Path) -> None:
    """What the $cluster default relies on, checked with promtool's own engine: a
    series without a cluster label is selected by cluster=~".*" (All), and not by a
    real cluster name."""
    series = tmp_path / "series.yml"
    series.write_text(yaml.safe_dump({
        "rule_files": [], "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": 'bgmock_twin_ready{job="bgmock-twin", '
                                        'namespace="ns", instance="a:1"}', "values": "1"}],
            "promql_expr_test": [
                {"expr": 'bgmock_twin_ready{cluster=~".*", job=~".*"}', "eval_time": "0m",
                 "exp_samples": [{"labels": 'bgmock_twin_ready{job="bgmock-twin", '
                                            'namespace="ns", instance="a:1"}', "value": 1}]},
                {"expr": 'bgmock_twin_ready{cluster=~"eu-1"}', "eval_time": "0m",
                 "exp_samples": []},
            ],
        }],
    }))
    result = subprocess.run(["/usr/bin/promtool", "test", "rules", str(series)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_is_accepted_by_the_sdk_models(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    """grafana-foundation-sdk's decoder and typed models accept each committed
    dashboard as it is: nothing unknown, nothing of the wrong type."""
    for name, d in dashboards.items():
        assert validate.problems(d) == [], name
    assert validate.main([str(p) for p in sorted(build.DASHBOARD_DIR.glob("*.json"))]) == 0


def _broken(d: dict[str, Any], change: Any) -> dict[str, Any]:
    out = copy.deepcopy(d)
    change(out)
    return out


@pytest.mark.parametrize(("what", "change", "expected"), [
    ("unknown panel type", lambda d: d["panels"][1].update(type="graph-legacy"),
     "unknown panel type 'graph-legacy'"),
    ("grid width as a string", lambda d: d["panels"][1]["gridPos"].update(w="12"),
     "grid_pos.w: expected int"),
    ("title as a number", lambda d: d["panels"][1].update(title=5), "title: expected string"),
    ("unknown legend mode", lambda d: d["panels"][1]["options"]["legend"].update(
        displayMode="fancy"), "is not a LegendDisplayMode"),
    ("field config of the wrong type", lambda d: d["panels"][1]["fieldConfig"]["defaults"]
     ["custom"].update(fillOpacity="10"), "fill_opacity: expected number"),
    ("threshold value as a string", lambda d: d["panels"][1]["fieldConfig"]["defaults"]
     ["thresholds"]["steps"][0].update(value="0"), "value: expected number"),
    ("unknown query format", lambda d: d["panels"][1]["targets"][0].update(format="graph"),
     "is not a PromQueryFormat"),
    ("unknown data source type", lambda d: d["panels"][1].update(
        datasource={"type": "no-such-plugin", "uid": "x"}), "unknown data source type"),
    ("variable refresh out of range", lambda d: d["templating"]["list"][1].update(refresh=7),
     "is not a VariableRefresh"),
    ("legacy field unknown to the schema", lambda d: d["panels"][1].update(minSpan=None),
     "minSpan: not kept by the SDK's model"),
    ("null where an object belongs", lambda d: d["templating"].update(list=None),
     "decoder failed"),
])
def test_validation_rejects_a_broken_dashboard(
    dashboards: dict[str, dict[str, Any]], what: str, change: Any, expected: str,
) -> None:
    base = dashboards["kafka"]  # panel 1: a timeseries with legend and custom config
    assert base["panels"][1]["type"] == "timeseries"
    assert validate.problems(base) == []
    found = validate.problems(_broken(base, change))
    assert any(expected in p for p in found), f"{what}: {found}"


def grafanalib_style(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with the legacy fields grafanalib 0.7 wrote on every dashboard, panel and
    variable (copied from the JSON it generated here before)."""
    out = copy.deepcopy(d)
    out.update({"__inputs": [], "gnetId": None, "hideControls": False, "id": None,
                "rows": [], "sharedCrosshair": False, "style": "dark", "version": 0})
    for panel in out["panels"]:
        panel.update({"cacheTimeout": None, "editable": True, "error": False, "height": None,
                      "interval": None, "maxDataPoints": None, "maxPerRow": None,
                      "minSpan": None, "repeat": None, "span": None, "timeFrom": None,
                      "timeShift": None})
    for var in out["templating"]["list"]:
        var.update({"regex": None, "tagValuesQuery": None, "tagsQuery": None,
                    "useTags": False})
    out["templating"]["list"][0]["datasource"] = None
    return out


def test_validation_rejects_grafanalib_output(dashboards: dict[str, dict[str, Any]],
                                              tmp_path: Path) -> None:
    found = validate.problems(grafanalib_style(dashboards["books"]))
    assert found, "grafanalib-style JSON passed the SDK validation"
    path = tmp_path / "books.json"
    path.write_text(json.dumps(grafanalib_style(dashboards["books"])))
    assert validate.main([str(path)]) == 1
    # without the null data source of the first variable the decoder gets further, and
    # the typed models still refuse the legacy nulls and fields
    lenient = grafanalib_style(dashboards["books"])
    del lenient["templating"]["list"][0]["datasource"]
    found = validate.problems(lenient)
    assert any("style: not kept by the SDK's model" in p for p in found), found
    assert any("cacheTimeout" in p or "cache_timeout" in p for p in found), found


def test_timezone_is_set_in_one_place(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                      dashboards: dict[str, dict[str, Any]]) -> None:
    assert {d["timezone"] for d in dashboards.values()} == {build.DEFAULT_TIMEZONE} == {"utc"}
    monkeypatch.delenv(build.TIMEZONE_ENV, raising=False)
    assert build.timezone() == "utc"
    monkeypatch.setenv(build.TIMEZONE_ENV, "browser")
    assert build.timezone() == "browser"
    assert build.timezone("Europe/Stockholm") == "Europe/Stockholm"  # argument wins
    with pytest.raises(ValueError, match="unknown timezone"):
        build.timezone("Mars/Olympus_Mons")
    # the command line: env var and --timezone reach every dashboard
    env = {**os.environ, build.TIMEZONE_ENV: "Europe/Stockholm"}
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(GRAFANA / "build.py"), "--out", str(out)],
                   check=True, cwd=ROOT, env=env)
    built = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert set(built) == EXPECTED
    assert {d["timezone"] for d in built.values()} == {"Europe/Stockholm"}
    subprocess.run([sys.executable, str(GRAFANA / "build.py"), "--out", str(out),
                    "--timezone", "browser"], check=True, cwd=ROOT, env=env)
    assert {json.loads(p.read_text())["timezone"] for p in out.glob("*.json")} == {"browser"}
    # only the timezone differs from the committed JSON
    for name, d in built.items():
        assert {**d, "timezone": "utc"} == dashboards[name], name
    bad = subprocess.run([sys.executable, str(GRAFANA / "build.py"), "--out", str(out),
                          "--timezone", "Nowhere/Land"], capture_output=True, text=True,
                         cwd=ROOT)
    assert bad.returncode == 2 and "unknown timezone" in bad.stderr


def test_every_panel_has_unit_description_and_thresholds(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    problems = []
    for name, panel in all_panels(dashboards):
        where = f"{name} / {panel['title']}"
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        unit = defaults.get("unit")
        if panel["type"] == "heatmap":
            unit = panel["options"]["yAxis"].get("unit") and unit
        if not unit:
            problems.append(f"{where}: no unit")
        if len(panel.get("description") or "") < 20:
            problems.append(f"{where}: no real description")
        steps = defaults.get("thresholds", {}).get("steps", [])
        if not steps or steps[0].get("value") is not None:
            problems.append(f"{where}: thresholds need a base step")
        values = [s["value"] for s in steps[1:]]
        if values != sorted(values) or any(v is None for v in values):
            problems.append(f"{where}: threshold steps not ascending: {values}")
        if panel.get("datasource") != build.DS:
            problems.append(f"{where}: datasource is not the ${{datasource}} variable")
        if not panel.get("targets"):
            problems.append(f"{where}: no queries")
    assert not problems, "\n".join(problems)


def test_panels_tile_the_grid(dashboards: dict[str, dict[str, Any]]) -> None:
    for name, d in dashboards.items():
        cells: dict[tuple[int, int], str] = {}
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for p in d["panels"]:
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24, (name, p["title"])
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{name}: {p['title']} overlaps {cells[(x, y)]}"
                    cells[(x, y)] = p["title"]


def test_overview_answers_is_payments_working_first(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    panels = dashboards["overview"]["panels"]
    assert panels[0]["type"] == "row" and panels[0]["title"] == "Is payments working?"
    first_row = [p for p in panels[1:] if p["gridPos"]["y"] < panels[0]["gridPos"]["y"] + 6]
    titles = [p["title"] for p in first_row]
    assert titles == ["Services", "Success ratio (10m)", "p95 end-to-end (10m)", "Stuck now",
                      "Violations now"]
    assert all(p["type"] == "stat" for p in first_row)
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert rows == ["Is payments working?", "Throughput", "Latency"]


def test_required_visualisations(dashboards: dict[str, dict[str, Any]]) -> None:
    def types(name: str) -> set[str]:
        return {p["type"] for p in iter_panels(dashboards[name])}

    assert "heatmap" in types("payments")
    assert "state-timeline" in types("services")
    exprs = {name: " ".join(q.expr for q in panel_queries({name: dashboards[name]}))
             for name in dashboards}
    for name, needed in {
        "payments": ["bgmock_payment_step_duration_seconds_bucket", "bgmock_payments_stuck",
                     "bgmock_simulations_active", "sum by (channel, outcome)",
                     "sum by (route, outcome)"],
        "services": ["bgmock_service_up", "bgmock_probe_duration_seconds_bucket",
                     "sum by (service, method, route, code)",
                     "bgmock_rest_request_duration_seconds_bucket"],
        "kafka": ["sum by (topic, status)", "bgmock_kafka_messages_invalid_total",
                  "bgmock_kafka_consumer_lag"],
        "books": ["bgmock_balance_drift", "bgmock_invariant_violations",
                  "bgmock_outbox_pending", "bgmock_outbox_oldest_age_seconds"],
        "twin": ["bgmock_scheduler_job_duration_seconds_bucket",
                 "bgmock_scheduler_job_missed_total", "process_cpu_seconds_total",
                 "process_resident_memory_bytes", "bgmock_kafka_client_errors_total",
                 "sum by (reason) (rate(bgmock_api_auth_failures_total"],
    }.items():
        for text in needed:
            assert text in exprs[name], f"{name} dashboard lacks {text}"


def test_queries_filter_by_cluster_job_namespace_and_instance_and_use_real_series(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    catalogue = exported_series()
    problems = []
    panel_exprs = [(q.name, q.expr, True) for q in panel_queries(dashboards)]
    # Variable queries select from the same series but narrow only by the
    # variables before them (cluster -> job -> namespace -> instance -> step).
    var_exprs = [(f"{n} / ${v}", q, False) for n, d in dashboards.items()
                 for v, q in variable_queries(d).items()]
    for name, expr, filtered in panel_exprs + var_exprs:
        found = selectors(expr)
        if not found:
            problems.append(f"{name}: selects no series: {expr}")
        for sel in found:
            if sel.metric not in catalogue:
                problems.append(f"{name}: {sel.metric} is not exported by the twin")
                continue
            allowed = catalogue[sel.metric] | TARGET_LABELS
            problems += [f"{name}: {sel.metric} has no label {label}"
                         for label in sel.matchers if label not in allowed]
            if not filtered:
                continue
            for var in FILTER_VARIABLES:
                if sel.matchers.get(var) != f'=~"${var}"':
                    problems.append(f"{name}: {sel.metric} not filtered by ${var}")
    assert not problems, "\n".join(problems)


def test_every_query_parses(dashboards: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """promtool parses each panel query (variables filled in as Grafana would)."""
    rules = []
    for i, q in enumerate(panel_queries(dashboards)):
        expr = substitute(q.expr, {"cluster": None, "job": ["bgmock-twin"], "namespace": None,
                                   "instance": ["10.0.0.1:8080"],
                                   "step": ["forwarded", "processed"]},
                          step=15, scrape_interval=15, range_seconds=3600)
        assert "$" not in expr, expr
        rules.append({"record": f"panel:query_{i}", "expr": expr})
    path = tmp_path / "panels.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = subprocess.run(["/usr/bin/promtool", "check", "rules", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_substitution_mirrors_grafana() -> None:
    variables = {"namespace": None, "instance": ["10.0.0.1:8080", "b:1"], "step": ["x"]}
    out = substitute('up{namespace=~"$namespace", instance=~"${instance}", s=~"$step"}'
                     "[$__rate_interval]", variables, step=15, scrape_interval=15,
                     range_seconds=60)
    assert out == r'up{namespace=~".*", instance=~"(10\\.0\\.0\\.1:8080|b:1)", s=~"x"}[60s]'
    with pytest.raises(KeyError):
        substitute("$nope", variables, step=1, scrape_interval=1, range_seconds=1)


def test_provisioning() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/bgmock-prometheus.yml").read_text())
    [source] = ds["datasources"]
    assert source["uid"] == build.DATASOURCE_UID
    assert source["type"] == "prometheus"
    assert source["isDefault"] is False
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/bgmock.yml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]
    assert provider["folder"] == "BGMock"


# Per-payment series: each replica of a fleet exports its own payments only.
PAYMENT_SERIES = ("bgmock_payments_completed_total", "bgmock_payments_submitted_total",
                  "bgmock_payments_dropped_total", "bgmock_payment_duration_seconds",
                  "bgmock_payment_step_duration_seconds", "bgmock_payments_in_flight",
                  "bgmock_payments_stuck", "bgmock_payment_send_lag_seconds")


def test_payment_panels_sum_every_replica(dashboards: dict[str, dict[str, Any]]) -> None:
    """A payment is counted by the one replica that sent it, so a panel shows the
    fleet's payments only summed over the replicas: every panel reading a per-payment
    series sums it, and never splits it by instance or pod."""
    problems = []
    checked = 0
    for q in panel_queries(dashboards):
        metrics = {sel.metric for sel in selectors(q.expr)}
        if not metrics & {m for s in PAYMENT_SERIES for m in (s, f"{s}_bucket")}:
            continue
        checked += 1
        if "sum" not in q.expr:
            problems.append(f"{q.name}: payments read without a sum over replicas: {q.expr}")
        for grouping in re.findall(r"\bby\s*\(([^)]*)\)", q.expr):
            if {label.strip() for label in grouping.split(",")} & {"instance", "pod"}:
                problems.append(f"{q.name}: payments split by replica: {q.expr}")
    assert checked >= 10, "the payment panels were not found"
    assert not problems, "\n".join(problems)
