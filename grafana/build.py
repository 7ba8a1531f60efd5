"""The six bgmock-twin dashboards, written as code with grafana-foundation-sdk.

Run ``python grafana/build.py`` to regenerate ``grafana/dashboards/*.json`` and
``python grafana/build.py --check`` to verify the committed JSON is current (the
test suite does the latter). Every query is written against the metric names in
``bgmock_twin/metrics.py`` and filtered by the ``$cluster`` / ``$job`` /
``$namespace`` / ``$instance`` variables, so one Grafana serves several twins.

The dashboards' timezone comes from one place, ``timezone()``: ``--timezone``, else
the ``BGMOCK_DASHBOARD_TIMEZONE`` environment variable, else ``utc`` (what the
committed JSON uses). Any IANA zone name, ``utc`` or ``browser`` is accepted.

Query conventions:
- counters that may legitimately have no series yet (errors, misses, invalid
  messages) fall back to an honest zero: ``X or (Y * 0)`` where ``Y`` proves the
  twin is up and doing that kind of work, or ``vector(0)`` when no such ``Y`` exists;
- ratios keep a zero numerator when nothing succeeded (``success or total * 0``),
  so "everything failed" shows 0 %, not an empty panel;
- SLO lines come from ``bgmock_slo_target{slo}`` (the twin's settings), and static
  panel thresholds mirror the default settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import heatmap as heatmap_b
from grafana_foundation_sdk.builders import prometheus as prom_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import statetimeline as statetimeline_b
from grafana_foundation_sdk.builders import timeseries as timeseries_b
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as heatmap_m
from grafana_foundation_sdk.models import prometheus as prom_m

ROOT = Path(__file__).resolve().parent
DASHBOARD_DIR = ROOT / "dashboards"

DATASOURCE_UID = "bgmock-prometheus"
DS: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
DS_REF = dm.DataSourceRef(type_val=DS["type"], uid=DS["uid"])
# The variables every query is narrowed by, outermost first (as kube-prometheus-stack:
# cluster, then the scrape job, then namespace and the twin instance).
FILTER_VARIABLES = ("cluster", "job", "namespace", "instance")
FILTER = ", ".join(f'{v}=~"${v}"' for v in FILTER_VARIABLES)
RI = "$__rate_interval"
TAGS = ["bgmock", "bgmock-twin"]

# The committed JSON's timezone; see timezone().
DEFAULT_TIMEZONE = "utc"
TIMEZONE_ENV = "BGMOCK_DASHBOARD_TIMEZONE"

GREEN, ORANGE, RED, BLUE, PURPLE = "green", "orange", "red", "blue", "purple"
OUTCOME_COLORS = {"success": GREEN, "failed": RED, "rejected": ORANGE, "stuck": PURPLE}


def value_map(options: dict[str, tuple[str, str]]) -> list[dm.ValueMapping]:
    """A value mapping: raw value -> (text, color), in the given order."""
    return [dm.ValueMap(options={
        raw: dm.ValueMappingResult(text=text, color=color, index=i)
        for i, (raw, (text, color)) in enumerate(options.items())})]


UP_DOWN = value_map({"0": ("DOWN", RED), "1": ("UP", GREEN)})


def timezone(explicit: str | None = None) -> str:
    """The dashboards' timezone: ``explicit``, else $BGMOCK_DASHBOARD_TIMEZONE, else utc."""
    tz = explicit or os.environ.get(TIMEZONE_ENV) or DEFAULT_TIMEZONE
    if tz not in ("utc", "browser"):
        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {tz!r}: use utc, browser or an IANA "
                             "zone such as Europe/Stockholm") from None
    return tz


# --- PromQL helpers -------------------------------------------------------------------
def sel(metric: str, *matchers: str) -> str:
    """``metric{cluster=~"$cluster", job=~"$job", namespace=~"$namespace",
    instance=~"$instance", <matchers>}``."""
    return metric + "{" + ", ".join([FILTER, *matchers]) + "}"


def rate(metric: str, *matchers: str, window: str = RI, fn: str = "rate") -> str:
    return f"{fn}({sel(metric, *matchers)}[{window}])"


def quantile(q: float, histogram: str, by: Sequence[str] = (), *matchers: str,
             window: str = RI) -> str:
    labels = ", ".join([*by, "le"])
    return (f"histogram_quantile({q}, sum by ({labels}) "
            f"({rate(histogram + '_bucket', *matchers, window=window)}))")


def slo(name: str) -> str:
    return f'max({sel("bgmock_slo_target", f"slo={json.dumps(name)}")})'


# --- panel helpers ----------------------------------------------------------------------
Steps = list[tuple[str, float | None]]


def thresholds(*steps: tuple[str, float | None]) -> Steps:
    """Threshold steps (color, value); the first is the base (value None)."""
    return list(steps)


OK_ONLY = thresholds((GREEN, None))


def thresholds_config(steps: Steps) -> dash.ThresholdsConfig:
    return (dash.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE)
            .steps([dm.Threshold(value=value, color=color) for color, value in steps]))


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False,
           fmt: prom_m.PromQueryFormat = prom_m.PromQueryFormat.TIME_SERIES
           ) -> prom_b.Dataquery:
    query = (prom_b.Dataquery().expr(expr).legend_format(legend).ref_id(ref)
             .datasource(DS_REF).format(fmt).interval_factor(1))
    return query.instant() if instant else query.range()


def targets(*pairs: tuple[str, str]) -> list[prom_b.Dataquery]:
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(pairs)]


def color_override(name: str, color: str) -> tuple[str, list[dm.DynamicConfigValue]]:
    return name, [dm.DynamicConfigValue(id_val="color",
                                        value={"mode": "fixed", "fixedColor": color})]


def slo_line_override(name: str) -> tuple[str, list[dm.DynamicConfigValue]]:
    """Draw an SLO series as a dashed red reference line, outside any stacking."""
    return name, [
        dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": RED}),
        dm.DynamicConfigValue(id_val="custom.lineStyle",
                              value={"fill": "dash", "dash": [10, 10]}),
        dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
        dm.DynamicConfigValue(id_val="custom.stacking", value={"mode": "none", "group": "A"}),
    ]


PanelBuilder = (timeseries_b.Panel | stat_b.Panel | statetimeline_b.Panel
                | heatmap_b.Panel)


@dataclass
class P:
    """A panel and its size; positions are assigned by ``layout``."""

    panel: PanelBuilder
    w: int
    h: int


def timeseries(title: str, description: str, unit: str, tgts: list[prom_b.Dataquery], *,
               steps: Steps = OK_ONLY, w: int = 12, h: int = 8,
               stack: bool = False,
               overrides: Iterable[tuple[str, list[dm.DynamicConfigValue]]] = (),
               line_thresholds: bool = False, decimals: int | None = None,
               minimum: int | None = 0, max_value: int | None = None) -> P:
    panel = (
        timeseries_b.Panel().title(title).description(description).datasource(DS_REF)
        .targets(list(tgts)).unit(unit).thresholds(thresholds_config(steps))
        .color_scheme(dash.FieldColor().mode(dm.FieldColorModeId.PALETTE_CLASSIC))
        .draw_style(cm.GraphDrawStyle.LINE).line_interpolation(cm.LineInterpolation.LINEAR)
        .line_width(1).fill_opacity(25 if stack else 10).gradient_mode(cm.GraphGradientMode.NONE)
        .show_points(cm.VisibilityMode.NEVER).point_size(5).span_nulls(False)
        .axis_placement(cm.AxisPlacement.AUTO)
        .scale_distribution(cb.ScaleDistributionConfig().type(cm.ScaleDistribution.LINEAR))
        .hide_from(cb.HideSeriesConfig().legend(False).tooltip(False).viz(False))
        .thresholds_style(cb.GraphThresholdsStyleConfig().mode(
            cm.GraphThresholdsStyleMode.DASHED if line_thresholds
            else cm.GraphThresholdsStyleMode.OFF))
        .stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL).group("A") if stack
                  else cb.StackingConfig().mode(cm.StackingMode.NONE))
        .legend(cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.LIST)
                .placement(cm.LegendPlacement.BOTTOM).show_legend(True).calcs([]))
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI)
                 .sort(cm.SortOrder.DESCENDING))
    )
    for name, properties in overrides:
        panel.override_by_name(name, properties)
    if decimals is not None:
        panel.decimals(decimals)
    if minimum is not None:
        panel.min(minimum)
    if max_value is not None:
        panel.max(max_value)
    return P(panel, w, h)


def stat(title: str, description: str, unit: str, tgts: list[prom_b.Dataquery], *,
         steps: Steps, w: int = 4, h: int = 5,
         mappings: list[dm.ValueMapping] | None = None, decimals: int | None = None,
         text_mode: cm.BigValueTextMode = cm.BigValueTextMode.AUTO,
         no_value: str = "no data") -> P:
    panel = (
        stat_b.Panel().title(title).description(description).datasource(DS_REF)
        .targets(list(tgts)).unit(unit).thresholds(thresholds_config(steps))
        .mappings(mappings or [])
        .color_scheme(dash.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
        .color_mode(cm.BigValueColorMode.BACKGROUND).graph_mode(cm.BigValueGraphMode.NONE)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)
                        .fields(""))
        .text_mode(text_mode).justify_mode(cm.BigValueJustifyMode.AUTO)
        .orientation(cm.VizOrientation.AUTO).no_value(no_value)
    )
    if decimals is not None:
        panel.decimals(decimals)
    return P(panel, w, h)


def state_timeline(title: str, description: str, tgts: list[prom_b.Dataquery], *,
                   mappings: list[dm.ValueMapping], steps: Steps,
                   unit: str = "none", w: int = 24, h: int = 7) -> P:
    panel = (
        statetimeline_b.Panel().title(title).description(description).datasource(DS_REF)
        .targets(list(tgts)).unit(unit).thresholds(thresholds_config(steps))
        .mappings(mappings)
        .color_scheme(dash.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
        .fill_opacity(80).line_width(0).row_height(0.8).show_value(cm.VisibilityMode.NEVER)
        .merge_values(True).align_value(cm.TimelineValueAlignment.LEFT)
        .legend(cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.LIST)
                .placement(cm.LegendPlacement.BOTTOM).show_legend(True))
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.SINGLE)
                 .sort(cm.SortOrder.NONE))
    )
    return P(panel, w, h)


def heatmap(title: str, description: str, expr: str, *, unit: str,
            w: int = 12, h: int = 8) -> P:
    """The modern heatmap reading Prometheus histogram buckets as they are (le rows)."""
    panel = (
        heatmap_b.Panel().title(title).description(description).datasource(DS_REF)
        .targets([target(expr, "{{le}}", fmt=prom_m.PromQueryFormat.HEATMAP)])
        .unit(unit).thresholds(thresholds_config(OK_ONLY))
        .scale_distribution(cb.ScaleDistributionConfig().type(cm.ScaleDistribution.LINEAR))
        .hide_from(cb.HideSeriesConfig().legend(False).tooltip(False).viz(False))
        .calculate(False).cell_gap(1)
        .color(heatmap_b.HeatmapColorOptions().mode(heatmap_m.HeatmapColorMode.SCHEME)
               .scheme("Oranges").steps(64).exponent(0.5).fill("dark-orange")
               .scale(heatmap_m.HeatmapColorScale.EXPONENTIAL).reverse(False))
        .filter_values(heatmap_b.FilterValueRange().le(1e-9))
        .rows_frame(heatmap_b.RowsHeatmapOptions().layout(cm.HeatmapCellLayout.LE))
        .y_axis(heatmap_b.YAxisConfig().axis_placement(cm.AxisPlacement.LEFT).unit(unit)
                .reverse(False))
        .mode(cm.TooltipDisplayMode.SINGLE).show_y_histogram().show_color_scale(True)
        .show_legend().exemplars_color("rgba(255,0,255,0.7)")
        .cell_values(heatmap_b.CellValues().unit("short"))
    )
    return P(panel, w, h)


@dataclass
class Row:
    title: str
    panels: list[P] = field(default_factory=list)


def layout(board: dash.Dashboard, rows: Sequence[Row]) -> None:
    """Add the rows and their panels to ``board``: panels left to right, wrapping at 24
    columns, each row with a header; explicit positions and ids (1, 2, ... in order)."""
    y, next_id = 0, 1
    for row in rows:
        board.with_row(dash.Row(row.title).id(next_id).collapsed(False)
                       .grid_pos(dm.GridPos(h=1, w=24, x=0, y=y)))
        next_id += 1
        y += 1
        x, line_h = 0, 0
        for item in row.panels:
            if x + item.w > 24:
                y += line_h
                x, line_h = 0, 0
            board.with_panel(item.panel.id(next_id)
                             .grid_pos(dm.GridPos(h=item.h, w=item.w, x=x, y=y)))
            next_id += 1
            x += item.w
            line_h = max(line_h, item.h)
        y += line_h


def multi_var(name: str, label: str, query: str) -> dash.QueryVariable:
    """A multi-value query variable defaulting to All (regex ``.*``, which also matches
    a series without that label, e.g. no ``cluster`` outside a multi-cluster setup)."""
    return (
        dash.QueryVariable(name).label(label).datasource(DS_REF)
        .query({"query": query, "refId": name, "qryType": 1})
        .include_all(True).multi(True).all_value(".*")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


def narrowed(metric: str, *outer: str) -> str:
    """``metric{v=~"$v", ...}`` over the given outer variables (or just ``metric``)."""
    if not outer:
        return metric
    return metric + "{" + ", ".join(f'{v}=~"${v}"' for v in outer) + "}"


def filter_variables() -> list[dash.QueryVariable]:
    """cluster -> job -> namespace -> instance, each narrowed by those before it."""
    labels = {"cluster": "Cluster", "job": "Job", "namespace": "Namespace",
              "instance": "Twin instance"}
    return [multi_var(var, labels[var], f"label_values("
                      f"{narrowed('bgmock_twin_ready', *FILTER_VARIABLES[:i])}, {var})")
            for i, var in enumerate(FILTER_VARIABLES)]


def datasource_var() -> dash.DatasourceVariable:
    return (dash.DatasourceVariable("datasource").label("Data source").type("prometheus")
            .current(dm.VariableOption(selected=True, text=DATASOURCE_UID,
                                       value=DATASOURCE_UID)))


def dashboard(uid: str, title: str, description: str, rows: Sequence[Row],
              extra_vars: Sequence[dash.QueryVariable] = ()) -> dash.Dashboard:
    board = (
        dash.Dashboard(title).uid(uid).description(description).tags(TAGS)
        .time("now-1h", "now").refresh("30s").editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .variables([datasource_var(), *filter_variables(), *extra_vars])
        .link(dash.DashboardLink("BGMock dashboards").type(dm.DashboardLinkType.DASHBOARDS)
              .tags(["bgmock"]).as_dropdown(True).include_vars(True).keep_time(True)
              .target_blank(False).icon("external link"))
    )
    layout(board, rows)
    return board


# --- the dashboards ------------------------------------------------------------------------
COMPLETED = "bgmock_payments_completed_total"
SUCCESS = 'outcome="success"'
NORMAL = 'kind="normal"'
DELIBERATE = 'kind!="normal"'
NOT_2XX = 'code!~"2.."'


def success_ratio(by: str = "", window: str = RI) -> str:
    """Share of completed normal payments that succeeded (deliberate failures are
    excluded: they are meant to fail); 0 (not empty) when none did."""
    agg = f"sum by ({by})" if by else "sum"
    total = f"{agg} ({rate(COMPLETED, NORMAL, window=window)})"
    success = f"{agg} ({rate(COMPLETED, NORMAL, SUCCESS, window=window)})"
    return f"({success} or {total} * 0) / {total}"


def overview() -> dash.Dashboard:
    now = Row("Is payments working?", [
        stat("Services", "Last health probe of each BGMock service (banks, clearing, Kafka, "
             "databases): UP when it succeeded. Alert BGMockServiceDown / "
             "BGMockKafkaUnreachable after 1 minute DOWN.", "none",
             [target(f"min by (service) ({sel('bgmock_service_up')})", "{{service}}")],
             steps=thresholds((RED, None), (GREEN, 1)), mappings=UP_DOWN, w=8,
             text_mode=cm.BigValueTextMode.VALUE_AND_NAME),
        stat("Success ratio (10m)", "Share of the twin's synthetic payments that reached "
             "SUCCESS over the last 10 minutes (failed, rejected and stuck count against "
             "it). Deliberate failures of simulations (failure_share) are left out: they "
             "are meant to fail. Thresholds mirror the default TWIN_SLO_SUCCESS_RATIO=0.99; "
             "the alert compares with bgmock_slo_target{slo=\"success_ratio\"}.", "percentunit",
             [target(success_ratio(window="10m"), "success ratio")],
             steps=thresholds((RED, None), (ORANGE, 0.95), (GREEN, 0.99)), decimals=2),
        stat("p95 end-to-end (10m)", "95th percentile of the time from the twin's intended "
             "send time to settlement at the source bank, last 10 minutes, on the twin's "
             "own clock. Thresholds mirror the default TWIN_SLO_P95_SECONDS=10.", "s",
             [target(quantile(0.95, "bgmock_payment_duration_seconds", (), window="10m"),
                     "p95")],
             steps=thresholds((GREEN, None), (ORANGE, 5), (RED, 10)), decimals=2),
        stat("Stuck now", "Payments waiting longer than the step deadline "
             "(TWIN_STEP_DEADLINE_SECONDS) for their next step. Anything above 0 means "
             "BGMock lost or stalled an event; see the Payments dashboard for the step.",
             "none", [target(f"sum({sel('bgmock_payments_stuck')}) or vector(0)", "stuck")],
             steps=thresholds((GREEN, None), (RED, 1)), decimals=0),
        stat("Violations now", "Current invariant violations (all reconciliation checks) "
             "plus twin accounts whose balance differs from the model. Anything above 0 "
             "means money or state disagrees; see the Books dashboard.", "none",
             [target(f"(sum({sel('bgmock_invariant_violations')}) or vector(0)) + "
                     f"(sum({sel('bgmock_balance_drifting_accounts')}) or vector(0))",
                     "violations")],
             steps=thresholds((GREEN, None), (RED, 1)), decimals=0),
    ])
    throughput = Row("Throughput", [
        timeseries("Payments by outcome", "Synthetic payments reaching an outcome per "
                   "second, stacked by outcome, with the submission rate for comparison.",
                   "ops", targets(
                       (f"sum by (outcome) ({rate(COMPLETED)})", "{{outcome}}"),
                       (f"sum({rate('bgmock_payments_submitted_total')})", "submitted"),
                   ), stack=True, overrides=[
                       *(color_override(k, v) for k, v in OUTCOME_COLORS.items()),
                       ("submitted", [
                           dm.DynamicConfigValue(id_val="custom.stacking",
                                                 value={"mode": "none", "group": "A"}),
                           dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
                           dm.DynamicConfigValue(id_val="color", value={
                               "mode": "fixed", "fixedColor": BLUE})]),
                   ]),
        timeseries("In flight", "Synthetic payments sent but not yet finished, and the "
                   "simulations running. In-flight growing without completions means the "
                   "flow is stalled.", "none", targets(
                       (f"sum({sel('bgmock_payments_in_flight')})", "in flight"),
                       (f"sum({sel('bgmock_simulations_active')})", "simulations running"),
                   ), steps=thresholds((GREEN, None), (ORANGE, 500)), decimals=0),
    ])
    latency = Row("Latency", [
        timeseries("End-to-end latency percentiles", "Percentiles of intended send time to "
                   "settlement at the source bank; the dashed line is the p95 SLO "
                   "(bgmock_slo_target{slo=\"p95_seconds\"}).", "s", targets(
                       *((quantile(q, "bgmock_payment_duration_seconds"), f"p{int(q * 100)}")
                         for q in (0.5, 0.9, 0.95, 0.99)),
                       (slo("p95_seconds"), "p95 SLO"),
                   ), steps=thresholds((GREEN, None), (RED, 10)),
                   overrides=[slo_line_override("p95 SLO")]),
        timeseries("p95 by channel and route", "95th percentile end-to-end time per "
                   "submission channel (REST or Kafka) and route.", "s", [target(
                       quantile(0.95, "bgmock_payment_duration_seconds", ("channel", "route")),
                       "{{channel}} {{route}}")],
                   steps=thresholds((GREEN, None), (RED, 10))),
    ])
    return dashboard("bgmock-overview", "BGMock overview",
                     "Is payments working? Health, success, speed and correctness of BGMock "
                     "as seen by bgmock-twin's synthetic payments.",
                     [now, throughput, latency])


def payments() -> dash.Dashboard:
    step_var = multi_var("step", "Step", "label_values(bgmock_payment_step_duration_seconds_count"
                         '{namespace=~"$namespace", instance=~"$instance"}, step)')
    step_hist = "bgmock_payment_step_duration_seconds"
    step_m = 'step=~"$step"'
    per_step = Row("Per-step latency", [
        heatmap("Step latency heatmap", "Distribution of the time from the previous step "
                "to the selected step(s) ($step), from the histogram buckets (5 ms doubling "
                "to 82 s).",
                f"sum by (le) ({rate(step_hist + '_bucket', step_m, fn='increase')})",
                unit="s"),
        timeseries("Step latency p95 by step", "95th percentile of each step's latency "
                   "(time since the previous step). The dashed line is the step deadline "
                   "after which a payment counts as stuck.", "s", targets(
                       (quantile(0.95, step_hist, ("step",), step_m), "{{step}}"),
                       (slo("step_deadline_seconds"), "step deadline"),
                   ), steps=thresholds((GREEN, None), (RED, 10)),
                   overrides=[slo_line_override("step deadline")]),
        timeseries("Step latency p50 by step", "Median latency of each step.", "s",
                   [target(quantile(0.5, step_hist, ("step",), step_m), "{{step}}")],
                   steps=thresholds((GREEN, None), (ORANGE, 5), (RED, 10))),
        timeseries("Step latency p99 by step", "99th percentile latency of each step.", "s",
                   [target(quantile(0.99, step_hist, ("step",), step_m), "{{step}}")],
                   steps=thresholds((GREEN, None), (ORANGE, 5), (RED, 10))),
    ])
    outcomes = Row("Outcomes", [
        timeseries("Outcomes by channel", "Payments reaching an outcome per second, by "
                   "submission channel (REST at the source bank, or Kafka straight to the "
                   "clearing).", "ops",
                   [target(f"sum by (channel, outcome) ({rate(COMPLETED)})",
                           "{{channel}} {{outcome}}")], stack=True),
        timeseries("Outcomes by route", "Payments reaching an outcome per second, by route "
                   "(source and destination bank).", "ops",
                   [target(f"sum by (route, outcome) ({rate(COMPLETED)})",
                           "{{route}} {{outcome}}")], stack=True),
        timeseries("Deliberate failures by kind and outcome", "Payments a simulation sent "
                   "to fail on purpose (failure_share), by kind and by how they ended: "
                   "insufficient_funds should end rejected, unknown_bankgood and "
                   "unknown_payee_account failed. Any success here means BGMock accepted a "
                   "payment it must refuse (alert BGMockDeliberateFailureSucceeded).", "ops",
                   [target(f"sum by (kind, outcome) ({rate(COMPLETED, DELIBERATE)})",
                           "{{kind}} {{outcome}}")], stack=True),
        timeseries("Success ratio by channel and route", "Share of completed normal payments "
                   "that succeeded, per channel and route (deliberate failures left out). "
                   "0 % (not empty) when none did.",
                   "percentunit", [target(success_ratio("channel, route"),
                                          "{{channel}} {{route}}")],
                   steps=thresholds((RED, None), (ORANGE, 0.95), (GREEN, 0.99)),
                   max_value=1, line_thresholds=True),
        timeseries("Submitted by channel and route", "Synthetic payments submitted per "
                   "second (background load and simulations).", "ops",
                   [target(f"sum by (channel, route) "
                           f"({rate('bgmock_payments_submitted_total')})",
                           "{{channel}} {{route}}")], stack=True),
    ])
    stuck = Row("Stuck and running", [
        timeseries("Stuck payments by step", "Payments past the step deadline, by the step "
                   "they are waiting for. The step tells where BGMock stalls: initiated = "
                   "source bank outbox, forwarded = clearing, processed = destination bank, "
                   "completed/settled = clearing back to the source bank.", "none",
                   [target(f"sum by (step) ({sel('bgmock_payments_stuck')})", "{{step}}")],
                   steps=thresholds((GREEN, None), (RED, 1)), line_thresholds=True,
                   decimals=0, w=8),
        timeseries("Simulations running", "Simulations started through the control API "
                   "that are still sending or tracking payments.", "none",
                   [target(f"sum({sel('bgmock_simulations_active')})", "running")],
                   decimals=0, w=8),
        timeseries("Dropped payments", "Payments that were due but not sent because "
                   "their channel's bound was reached (TWIN_MAX_IN_FLIGHT_REQUESTS, or "
                   "TWIN_MAX_IN_FLIGHT_KAFKA_PAYMENTS for the Kafka channel; never delayed: "
                   "dropped and counted, so latency stays honest).", "ops",
                   [target(f"sum({rate('bgmock_payments_dropped_total')}) or vector(0)",
                           "dropped")],
                   steps=thresholds((GREEN, None), (RED, 0.01)), line_thresholds=True, w=8),
    ])
    return dashboard("bgmock-payments", "BGMock payments",
                     "Synthetic payments step by step: latency per step, outcomes by "
                     "channel and route, stuck payments and simulations.",
                     [per_step, outcomes, stuck], [step_var])


def services() -> dash.Dashboard:
    rest_total = rate("bgmock_rest_requests_total")
    health = Row("Health", [
        state_timeline("Service health", "Result of each health probe over time, per BGMock "
                       "service: UP (green) or DOWN (red).",
                       [target(f"min by (service) ({sel('bgmock_service_up')})",
                               "{{service}}")],
                       mappings=UP_DOWN, steps=thresholds((RED, None), (GREEN, 1))),
        timeseries("Probe latency p95", "95th percentile duration of health probes per "
                   "service. Probes are bounded by TWIN_PROBE_TIMEOUT_SECONDS (default 2 s).",
                   "s", [target(quantile(0.95, "bgmock_probe_duration_seconds", ("service",)),
                                "{{service}}")],
                   steps=thresholds((GREEN, None), (ORANGE, 1), (RED, 2))),
        timeseries("Probe failures", "Failed health probes per second by service and reason "
                   "(timeout, connection, http_<code>, ...); 0 per service when all pass.",
                   "ops", [target(
                       f"sum by (service, reason) ({rate('bgmock_probe_failures_total')}) or "
                       f"sum by (service) ({rate('bgmock_probe_duration_seconds_count')}) * 0",
                       "{{service}} {{reason}}")],
                   steps=thresholds((GREEN, None), (RED, 0.01)), line_thresholds=True),
        timeseries("Time since last successful probe", "Seconds since each service last "
                   "answered a probe; grows while a service is down.", "s", [target(
                       f"time() - max by (service) "
                       f"({sel('bgmock_service_last_up_timestamp_seconds')})", "{{service}}")],
                   steps=thresholds((GREEN, None), (ORANGE, 30), (RED, 60)),
                   line_thresholds=True, w=24),
    ])
    rest = Row("REST calls to BGMock", [
        timeseries("REST calls by service, route and code", "Calls per second from the twin "
                   "to BGMock's REST APIs, by route template (never a raw path) and status "
                   "code; timeout/connection when no answer came.", "reqps",
                   [target(f"sum by (service, method, route, code) ({rest_total})",
                           "{{service}} {{method}} {{route}} {{code}}")], stack=True),
        timeseries("REST latency p95 by service and route", "95th percentile duration of "
                   "REST calls. Bounded by TWIN_REST_TIMEOUT_SECONDS (default 5 s).", "s",
                   [target(quantile(0.95, "bgmock_rest_request_duration_seconds",
                                    ("service", "method", "route")),
                           "{{service}} {{method}} {{route}}")],
                   steps=thresholds((GREEN, None), (ORANGE, 1), (RED, 5))),
        timeseries("REST non-2xx share by service", "Share of REST calls per service that "
                   "did not answer 2xx (including timeouts and connection errors). Some "
                   "404s are normal lookups; a sudden rise is not.", "percentunit",
                   [target(f"(sum by (service) "
                           f"({rate('bgmock_rest_requests_total', NOT_2XX)}) or "
                           f"sum by (service) ({rest_total}) * 0) / "
                           f"sum by (service) ({rest_total})", "{{service}}")],
                   steps=thresholds((GREEN, None), (ORANGE, 0.01), (RED, 0.05)),
                   line_thresholds=True, max_value=1),
        timeseries("REST latency p50 by service", "Median duration of REST calls per "
                   "service.", "s",
                   [target(quantile(0.5, "bgmock_rest_request_duration_seconds",
                                    ("service",)), "{{service}}")],
                   steps=thresholds((GREEN, None), (ORANGE, 1), (RED, 5))),
    ])
    return dashboard("bgmock-services", "BGMock services",
                     "Health of every BGMock service over time, probe latency, and the "
                     "twin's REST calls by service, route and status code.", [health, rest])


# A group's status as one number for the state timeline (the twin exports every status
# of a group, 1 for the current one): code -> (text, colour) in the value mapping.
GROUP_STATUS = {"OK": (0, GREEN), "UNKNOWN": (1, BLUE), "WARN": (2, ORANGE), "STALL": (3, RED),
                "STOP": (4, RED), "MISSING": (5, PURPLE), "ERR": (6, PURPLE)}


def group_status_code() -> str:
    return " + ".join(
        f"{code} * max by (group) "
        f"({sel('bgmock_kafka_consumer_group_status', f'status={json.dumps(name)}')})"
        for name, (code, _) in GROUP_STATUS.items())


def kafka() -> dash.Dashboard:
    messages = rate("bgmock_kafka_messages_total")
    lag = sel("bgmock_kafka_consumer_lag")
    flow = Row("Messages", [
        timeseries("Messages per topic and status", "Events the twin consumed per second on "
                   "the four BGMock topics, by payment status in the event.", "ops",
                   [target(f"sum by (topic, status) ({messages})", "{{topic}} {{status}}")],
                   stack=True),
        timeseries("Messages by origin", "Events per second by topic, split into payments "
                   "the twin sent (twin) and everyone else's (other).", "ops",
                   [target(f"sum by (topic, origin) ({messages})", "{{topic}} {{origin}}")],
                   stack=True),
        timeseries("Invalid messages", "Messages skipped as invalid (bad JSON, missing "
                   "fields, unknown status, null key ...) per second by topic and reason; 0 "
                   "per topic while all are valid. Any invalid message is contract drift.",
                   "ops", [target(
                       f"sum by (topic, reason) "
                       f"({rate('bgmock_kafka_messages_invalid_total')}) or "
                       f"sum by (topic) ({messages}) * 0", "{{topic}} {{reason}}")],
                   steps=thresholds((GREEN, None), (RED, 0.001)), line_thresholds=True, w=24),
    ])
    groups = Row("Consumer groups", [
        state_timeline("Consumer group status", "Each watched group's Burrow-style status, "
                       "judged by the twin over its window of readings "
                       "(TWIN_LAG_WINDOW_SAMPLES): OK, UNKNOWN (window not full yet), WARN "
                       "(lag grew across the window), STALL (offsets frozen while events "
                       "arrive), STOP (offsets and lag frozen with a backlog), MISSING (no "
                       "committed offset on the broker: a wrong name in TWIN_LAG_GROUPS), "
                       "ERR (could not be read).",
                       [target(group_status_code(), "{{group}}")],
                       mappings=value_map({str(code): (name, colour) for name, (code, colour)
                                           in GROUP_STATUS.items()}),
                       steps=thresholds((GREEN, None), (ORANGE, 1), (RED, 3)), w=24, h=8),
        timeseries("Oldest unconsumed event per group", "Age of each group's oldest "
                   "unconsumed event (its worst partition), interpolated from the high "
                   "watermark's history; 0 without lag. The dashed line is the payment "
                   "SLA: above it, payments through the group miss their SLA.", "s",
                   targets(
                       (f"max by (group) ({sel('bgmock_kafka_consumer_lag_seconds')})",
                        "{{group}}"),
                       (slo("sla_seconds"), "payment SLA"),
                   ), steps=thresholds((GREEN, None), (ORANGE, 10), (RED, 30)),
                   overrides=[slo_line_override("payment SLA")]),
        timeseries("Consumer lag per group", "Messages not yet consumed by each BGMock "
                   "consumer group, summed over topics and partitions. The dashed line is "
                   "bgmock_slo_target{slo=\"consumer_lag\"}.", "none", targets(
                       (f"sum by (group) ({lag})", "{{group}}"),
                       (slo("consumer_lag"), "lag SLO"),
                   ), steps=thresholds((GREEN, None), (ORANGE, 100), (RED, 1000)),
                   overrides=[slo_line_override("lag SLO")], decimals=0),
        timeseries("Time since group progress", "Seconds since each group's committed "
                   "offsets last moved (or it had no lag). Growing while lagging means the "
                   "group is stalled, not just slow; the dashed line is the payment SLA.", "s",
                   targets(
                       (f"time() - max by (group) "
                        f"({sel('bgmock_kafka_consumer_last_progress_timestamp_seconds')})",
                        "{{group}}"),
                       (slo("sla_seconds"), "payment SLA"),
                   ), steps=thresholds((GREEN, None), (ORANGE, 10), (RED, 30)),
                   overrides=[slo_line_override("payment SLA")]),
        timeseries("Odd lag readings", "Negative lag readings (committed offset beyond the "
                   "high watermark) clamped to zero, per second by group; 0 when none.",
                   "ops", [target(
                       f"sum by (group) "
                       f"({rate('bgmock_kafka_consumer_lag_anomalies_total')}) or "
                       f"sum by (group) ({lag}) * 0", "{{group}}")],
                   steps=thresholds((GREEN, None), (ORANGE, 0.01))),
    ])
    return dashboard("bgmock-kafka", "BGMock Kafka",
                     "BGMock's Kafka topics as the twin sees them: messages per topic and "
                     "status, invalid messages, each consumer group's status, lag and the "
                     "age of its oldest unconsumed event.", [flow, groups])


def books() -> dash.Dashboard:
    violations = sel("bgmock_invariant_violations")
    money = Row("Balances", [
        timeseries("Balance drift per bank", "Sum of |expected - actual| balance over the "
                   "twin's accounts at each bank, in the accounts' currency units. Any "
                   "value above 0 means money moved that the model cannot explain.",
                   "none", [target(f"max by (bank) ({sel('bgmock_balance_drift')})",
                                   "{{bank}}")],
                   steps=thresholds((GREEN, None), (RED, 0.01)), line_thresholds=True,
                   decimals=2),
        timeseries("Drifting accounts per bank", "Number of twin accounts whose balance "
                   "differs from the model.", "none",
                   [target(f"max by (bank) ({sel('bgmock_balance_drifting_accounts')})",
                           "{{bank}}")],
                   steps=thresholds((GREEN, None), (RED, 1)), line_thresholds=True,
                   decimals=0),
        # per bank, not per account: account numbers are never labels (the per-account
        # table is GET /api/v1/accounts and `bgmock-twin accounts`)
        timeseries("Twin accounts: actual vs expected balance", "Sum of the balances of "
                   "the twin's accounts at each bank as the bank reports them (actual), and "
                   "the range the twin's books expect for the same accounts (payments in "
                   "flight widen it). Actual outside the range is drift; per account see "
                   "`bgmock-twin accounts`.", "none", targets(
                       (f"max by (bank) ({sel('bgmock_account_balance')})",
                        "{{bank}} actual"),
                       (f"max by (bank) ({sel('bgmock_account_balance_expected_min')})",
                        "{{bank}} expected min"),
                       (f"max by (bank) ({sel('bgmock_account_balance_expected_max')})",
                        "{{bank}} expected max"),
                   ), decimals=2, w=24),
    ])
    checks = Row("Invariants", [
        timeseries("Violations by check", "Current violations per reconciliation check "
                   "(conservation of money, reserved <= balance, final status agreement, "
                   "SLA ...).", "none",
                   [target(f"max by (check) ({violations})", "{{check}}")],
                   steps=thresholds((GREEN, None), (RED, 1)), line_thresholds=True,
                   decimals=0),
        timeseries("Violation detections by check", "New violation detections per check "
                   "in each interval; 0 per check when none.", "none", [target(
                       f"sum by (check) "
                       f"({rate('bgmock_invariant_violations_detected_total', fn='increase')})"
                       f" or max by (check) ({violations}) * 0", "{{check}}")],
                   steps=thresholds((GREEN, None), (RED, 1)), line_thresholds=True),
        state_timeline("Checks that could not run", "Per check: ran, or UNKNOWN when its "
                       "data source (REST or database) was unreachable so the check could "
                       "not decide. No violations while UNKNOWN proves nothing.",
                       [target(f"max by (check) "
                               f"({sel('bgmock_reconciliation_check_unknown')})",
                               "{{check}}")],
                       mappings=value_map({"0": ("ran", GREEN), "1": ("UNKNOWN", ORANGE)}),
                       steps=thresholds((GREEN, None), (ORANGE, 1)), w=12, h=8),
        timeseries("Time since last reconciliation", "Seconds since the last reconciliation "
                   "run finished (TWIN_RECONCILE_INTERVAL_SECONDS, default 30 s).", "s",
                   # > 0: the gauge reads 0 until the first run finishes.
                   [target(f"time() - max "
                           f"({sel('bgmock_reconciliation_last_run_timestamp_seconds')} > 0)",
                           "since last run")],
                   steps=thresholds((GREEN, None), (ORANGE, 60), (RED, 120)),
                   line_thresholds=True),
    ])
    outbox = Row("Outbox", [
        timeseries("Outbox backlog", "Unpublished outbox rows per service. The publishers "
                   "drain about once a second; the dashed line is "
                   "bgmock_slo_target{slo=\"outbox_pending\"}.", "none", targets(
                       (f"max by (service) ({sel('bgmock_outbox_pending')})", "{{service}}"),
                       (slo("outbox_pending"), "backlog SLO"),
                   ), steps=thresholds((GREEN, None), (RED, 100)),
                   overrides=[slo_line_override("backlog SLO")], decimals=0),
        timeseries("Oldest unpublished outbox row", "Age of the oldest unpublished outbox "
                   "row per service; the dashed line is "
                   "bgmock_slo_target{slo=\"outbox_age_seconds\"}.", "s", targets(
                       (f"max by (service) ({sel('bgmock_outbox_oldest_age_seconds')})",
                        "{{service}}"),
                       (slo("outbox_age_seconds"), "age SLO"),
                   ), steps=thresholds((GREEN, None), (ORANGE, 5), (RED, 30)),
                   overrides=[slo_line_override("age SLO")]),
    ])
    return dashboard("bgmock-books", "BGMock books",
                     "Reconciliation of the twin's model against BGMock: balance drift, "
                     "invariant violations by check, outbox backlog and age.",
                     [money, checks, outbox])


def twin() -> dash.Dashboard:
    # Process metrics are exported by every Python target: keep only the twin's.
    only_twin = f"and on (namespace, instance) {sel('bgmock_twin_ready')}"
    status = Row("Status", [
        stat("Scraped", "Whether Prometheus can scrape each twin that reported in the last "
             "hour (up). DOWN pages as BGMockTwinDown.", "none",
             [target(f"max by (instance) ({sel('up')} and on (namespace, instance) "
                     f"max_over_time({sel('bgmock_twin_ready')}[1h]))", "{{instance}}")],
             steps=thresholds((RED, None), (GREEN, 1)), mappings=UP_DOWN, w=6,
             text_mode=cm.BigValueTextMode.VALUE_AND_NAME),
        stat("Ready", "The daemon's readiness (scheduler running, control API serving).",
             "none", [target(f"max by (instance) ({sel('bgmock_twin_ready')})",
                             "{{instance}}")],
             steps=thresholds((RED, None), (GREEN, 1)), w=6,
             text_mode=cm.BigValueTextMode.VALUE_AND_NAME,
             mappings=value_map({"0": ("NOT READY", RED), "1": ("READY", GREEN)})),
        stat("Uptime", "Time since the twin process started.", "s",
             [target(f"time() - max by (instance) "
                     f"({sel('process_start_time_seconds')} {only_twin})", "{{instance}}")],
             steps=thresholds((ORANGE, None), (GREEN, 300)), w=6),
        stat("Missed job runs (1h)", "Scheduled runs skipped in the last hour because they "
             "were too late or the previous run was still going.", "none",
             [target(f"(sum(increase({sel('bgmock_scheduler_job_missed_total')}[1h])) "
                     f"or vector(0)) + (sum(increase("
                     f"{sel('bgmock_scheduler_job_max_instances_total')}[1h])) or vector(0))",
                     "missed")],
             steps=thresholds((GREEN, None), (ORANGE, 1), (RED, 10)), decimals=0, w=6),
    ])
    jobs = "bgmock_scheduler_job_runs_total"
    scheduler = Row("Scheduler", [
        timeseries("Job duration p95", "95th percentile duration of each scheduled job "
                   "(health probes, reconciliation, lag, load ...).", "s",
                   [target(quantile(0.95, "bgmock_scheduler_job_duration_seconds", ("task",)),
                           "{{task}}")],
                   steps=thresholds((GREEN, None), (ORANGE, 1), (RED, 10)), w=8),
        timeseries("Job runs by result", "Scheduled job runs per second by job and result.",
                   "ops", [target(f"sum by (task, result) ({rate(jobs)})",
                                  "{{task}} {{result}}")], stack=True, w=8),
        timeseries("Missed and overlapping runs", "Runs per interval skipped because they "
                   "started too late (missed) or the previous run was still going "
                   "(overlap); 0 per job when none.", "none", targets(
                       (f"sum by (task) "
                        f"({rate('bgmock_scheduler_job_missed_total', fn='increase')}) or "
                        f"sum by (task) ({rate(jobs)}) * 0", "missed {{task}}"),
                       (f"sum by (task) "
                        f"({rate('bgmock_scheduler_job_max_instances_total', fn='increase')})"
                        f" or sum by (task) ({rate(jobs)}) * 0", "overlap {{task}}"),
                   ), steps=thresholds((GREEN, None), (RED, 1)), line_thresholds=True, w=8),
    ])
    process = Row("Process", [
        timeseries("CPU", "CPU time used per second (1.0 = one full core).", "percentunit",
                   [target(f"{rate('process_cpu_seconds_total')} {only_twin}",
                           "{{instance}}")],
                   steps=thresholds((GREEN, None), (ORANGE, 0.5), (RED, 0.9)), w=6),
        timeseries("Resident memory", "Resident set size of the twin process.", "bytes",
                   [target(f"{sel('process_resident_memory_bytes')} {only_twin}",
                           "{{instance}}")],
                   steps=thresholds((GREEN, None), (ORANGE, 512 * 2**20), (RED, 2**30)), w=6),
        timeseries("Open file descriptors", "Open file descriptors as a share of the "
                   "process limit (sockets to BGMock, Kafka and databases count).",
                   "percentunit", [target(
                       f"({sel('process_open_fds')} / {sel('process_max_fds')}) {only_twin}",
                       "{{instance}}")],
                   steps=thresholds((GREEN, None), (ORANGE, 0.5), (RED, 0.8)), w=6),
        timeseries("Python GC collections", "Garbage collections per second by generation.",
                   "ops", [target(f"sum by (generation) "
                                  f"({rate('python_gc_collections_total')} {only_twin})",
                                  "gen {{generation}}")], w=6),
    ])
    internals = Row("Kafka client, control API and ledger", [
        timeseries("Kafka client errors", "Errors reported by the twin's Kafka producer and "
                   "consumers per second, by client and reason; 0 when none.", "ops",
                   [target(f"sum by (client, reason) "
                           f"({rate('bgmock_kafka_client_errors_total')}) or vector(0)",
                           "{{client}} {{reason}}")],
                   steps=thresholds((GREEN, None), (RED, 0.01)), line_thresholds=True, w=8),
        timeseries("Control API requests", "Requests per second to the twin's control API "
                   "by route and status code.", "reqps",
                   [target(f"sum by (method, route, code) "
                           f"({rate('bgmock_api_requests_total')})",
                           "{{method}} {{route}} {{code}}")], w=8),
        timeseries("Control API refused authentications", "Control-API requests refused "
                   "per second for a missing bearer token (missing), another auth scheme "
                   "(scheme) or a wrong token (wrong_token). A steady wrong_token rate is a "
                   "client with a stale token, or someone guessing.", "reqps",
                   [target(f"sum by (reason) ({rate('bgmock_api_auth_failures_total')})",
                           "{{reason}}")],
                   steps=thresholds((GREEN, None), (ORANGE, 0.1)), line_thresholds=True,
                   w=8),
        timeseries("Send lag p99", "99th percentile of actual minus intended send time of "
                   "synthetic payments. High values mean the twin itself is saturated.", "s",
                   [target(quantile(0.99, "bgmock_payment_send_lag_seconds"), "p99")],
                   steps=thresholds((GREEN, None), (ORANGE, 0.1), (RED, 1)), w=8),
        timeseries("Ledger buffer", "Ledger writes waiting for the twin's database.", "none",
                   [target(f"sum({sel('bgmock_ledger_buffered')})", "buffered")],
                   steps=thresholds((GREEN, None), (ORANGE, 1000)), decimals=0, w=8),
        timeseries("Ledger errors and drops", "Failed ledger writes and writes dropped "
                   "because the buffer was full, per second; 0 when none.", "ops", targets(
                       (f"sum({rate('bgmock_ledger_write_errors_total')}) or vector(0)",
                        "write errors"),
                       (f"sum({rate('bgmock_ledger_dropped_total')}) or vector(0)", "dropped"),
                   ), steps=thresholds((GREEN, None), (RED, 0.01)), line_thresholds=True,
                   w=8),
    ])
    return dashboard("bgmock-twin", "BGMock twin",
                     "The bgmock-twin daemon's own health: scrape and readiness, scheduler "
                     "job durations and misses, process CPU/memory, Kafka client errors, "
                     "control API (requests, refused authentications) and ledger.",
                     [status, scheduler, process, internals])



DASHBOARDS = {
    "overview": overview,
    "payments": payments,
    "services": services,
    "kafka": kafka,
    "books": books,
    "twin": twin,
}


def build(name: str, tz: str = DEFAULT_TIMEZONE) -> dm.Dashboard:
    """One dashboard as the SDK's model, in timezone ``tz``."""
    return DASHBOARDS[name]().timezone(timezone(tz)).build()


def render(name: str, tz: str = DEFAULT_TIMEZONE) -> str:
    """The JSON text of one dashboard, exactly as committed (for tz=utc)."""
    return json.dumps(build(name, tz), cls=JSONEncoder, sort_keys=True, indent=2) + "\n"


def stale(directory: Path = DASHBOARD_DIR, tz: str = DEFAULT_TIMEZONE) -> list[str]:
    """Names of dashboards whose committed JSON differs from the code (or is missing)."""
    names = []
    for name in DASHBOARDS:
        path = directory / f"{name}.json"
        if not path.exists() or path.read_text(encoding="utf-8") != render(name, tz):
            names.append(name)
    extra = {p.stem for p in directory.glob("*.json")} - set(DASHBOARDS)
    return names + sorted(extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the JSON in --out differs from the code")
    parser.add_argument("--timezone", default=None,
                        help=f"dashboard timezone: utc, browser or an IANA zone (default: "
                             f"${TIMEZONE_ENV}, else {DEFAULT_TIMEZONE}; the committed JSON "
                             f"uses {DEFAULT_TIMEZONE})")
    parser.add_argument("--out", type=Path, default=DASHBOARD_DIR,
                        help="directory of the JSON files (default: grafana/dashboards)")
    args = parser.parse_args(argv)
    try:
        tz = timezone(args.timezone)
    except ValueError as exc:
        parser.error(str(exc))
    if args.check:
        bad = stale(args.out, tz)
        if bad:
            print("out of date: " + ", ".join(bad) + " (run python grafana/build.py)",
                  file=sys.stderr)
            return 1
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name in DASHBOARDS:
        (args.out / f"{name}.json").write_text(render(name, tz), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
