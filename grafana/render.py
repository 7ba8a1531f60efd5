"""Draw each dashboard's panels from a Prometheus to PNG, for reviewers without Grafana.

Reads the committed dashboard JSON (the same queries Grafana runs), evaluates every
panel query through Prometheus' HTTP API and lays the panels out on Grafana's
24-column grid with matplotlib: time series (stacked where the panel stacks, SLO
lines dashed), stat panels with value mappings and threshold colours, state
timelines and bucket heatmaps.

    python grafana/render.py --prometheus http://localhost:9090 --out /tmp/png
    python grafana/render.py --live --out grafana/img      # start twin + Prometheus

``--live`` starts a real ``bgmock-twin run`` (embedded) and a Prometheus scraping it
(grafana/stack.py), runs a simulation, waits, then renders.
"""

from __future__ import annotations

import argparse
import io
import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.colors import PowerNorm
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator
from PIL import Image

if __package__ in (None, ""):  # run as a script: make `grafana.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grafana.queries import (
    Prometheus,
    PrometheusError,
    Series,
    load_dashboards,
    substitute,
)

TARGET_LABELS = ("cluster", "job", "instance", "namespace")  # the same on every series
BG, PANEL_BG, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
NAMED = {"green": "#73BF69", "orange": "#FF9830", "red": "#F2495C", "blue": "#5794F2",
         "purple": "#B877D9", "yellow": "#FADE2A", "text": TEXT}
PALETTE = ["#7EB26D", "#EAB839", "#6ED0E0", "#EF843C", "#E24D42", "#1F78C1", "#BA43A9",
           "#705DA0", "#508642", "#CCA300", "#447EBC", "#C15C17", "#890F02", "#0A437C"]
ROW_UNIT_IN = 0.45  # inches per Grafana grid row (30 px)
FIG_WIDTH_IN = 24.0
# (left, bottom, top) padding in inches inside a panel's cell: tick labels and title.
PADS = {"stat": (0.05, 0.1, 0.3), "timeseries": (0.75, 0.35, 0.3)}


def day(t: float) -> float:
    """Unix seconds to matplotlib's date number (days since 1970-01-01 UTC)."""
    return t / 86400.0


def time_axis(ax: Axes) -> None:
    ax.xaxis_date(tz=UTC)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=UTC))  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(MaxNLocator(5))


def color(name: str | None) -> str:
    return NAMED.get(name or "", name or TEXT)


# --- units ---------------------------------------------------------------------------------
def fmt_value(value: float, unit: str, decimals: int | None = None) -> str:
    if not math.isfinite(value):
        return "NaN"
    if unit == "percentunit":
        pct = value * 100
        if decimals is None:
            decimals = 0 if abs(pct) >= 10 or pct == 0 else 1 if abs(pct) >= 1 else 2
        return f"{pct:.{decimals}f}%"
    if unit == "s":
        a = abs(value)
        if a == 0:
            return "0 s"
        if a < 1e-3:
            return f"{value * 1e6:.0f} µs"
        if a < 1:
            return f"{value * 1e3:.0f} ms"
        if a < 120:
            return f"{value:.{1 if decimals is None else decimals}f} s"
        if a < 7200:
            return f"{value / 60:.1f} min"
        return f"{value / 3600:.1f} h"
    if unit == "bytes":
        for suffix, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if abs(value) >= size:
                return f"{value / size:.1f} {suffix}"
        return f"{value:.0f} B"
    suffix = {"ops": " ops/s", "reqps": " req/s"}.get(unit, "")
    if decimals is not None:
        text = f"{value:.{decimals}f}"
    elif abs(value) >= 1e6:
        text = f"{value / 1e6:.1f}M"
    elif abs(value) >= 1e3:
        text = f"{value / 1e3:.1f}K"
    elif value == int(value):
        text = f"{int(value)}"
    else:
        text = f"{value:.3g}"
    return text + suffix


def legend(fmt: str, labels: Mapping[str, str], expr: str) -> str:
    if fmt:
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()
    shown = {k: v for k, v in labels.items() if k not in TARGET_LABELS}
    return "{" + ", ".join(f'{k}="{v}"' for k, v in shown.items()) + "}" if shown else expr[:40]


def threshold_color(value: float, steps: Sequence[Mapping[str, Any]]) -> str:
    chosen = steps[0]["color"] if steps else "text"
    for step in steps[1:]:
        if step.get("value") is not None and value >= step["value"]:
            chosen = step["color"]
    return color(chosen)


def mapped(value: float, mappings: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    for mapping in mappings:
        if mapping.get("type") == "value" and math.isfinite(value):
            key = str(int(value)) if value == int(value) else str(value)
            hit = mapping["options"].get(key)
            if hit:
                return hit.get("text", key), color(hit.get("color"))
    return None


# --- data ------------------------------------------------------------------------------------
class Source:
    """Evaluates panel targets over one time window."""

    def __init__(self, prom: Prometheus, start: float, end: float, step: float,
                 scrape_interval: float, variables: Mapping[str, Sequence[str] | None]) -> None:
        self.prom, self.start, self.end, self.step = prom, start, end, step
        self.scrape_interval, self.variables = scrape_interval, variables

    def fetch(self, target: Mapping[str, Any]) -> list[tuple[str, Series]]:
        expr = substitute(target["expr"], self.variables, step=self.step,
                          scrape_interval=self.scrape_interval,
                          range_seconds=self.end - self.start)
        try:
            result = self.prom.query_range(expr, self.start, self.end, self.step)
        except PrometheusError as exc:
            print(f"  query failed: {exc}: {expr}", file=sys.stderr)
            return []
        return [(legend(target.get("legendFormat", ""), s.labels, expr), s) for s in result]

    def panel(self, panel: Mapping[str, Any]) -> list[tuple[str, Series]]:
        out = []
        for target in panel.get("targets", []):
            out.extend(self.fetch(target))
        return out


# --- drawing ----------------------------------------------------------------------------------
def style_axes(ax: Axes, title: str) -> None:
    ax.set_facecolor(PANEL_BG)
    for spine in ax.spines.values():
        spine.set_color(GRID)
    ax.tick_params(colors=TEXT, labelsize=7)
    ax.set_title(title, color=TEXT, fontsize=9, loc="left", pad=4, fontweight="bold")


def no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, "No data", color="#8e8e8e", ha="center", va="center",
            transform=ax.transAxes, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def overrides_for(panel: Mapping[str, Any], name: str) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        if override["matcher"].get("options") == name:
            for prop in override["properties"]:
                props[prop["id"]] = prop["value"]
    return props


def draw_timeseries(ax: Axes, panel: Mapping[str, Any], data: list[tuple[str, Series]]) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    unit = defaults.get("unit", "")
    custom = defaults.get("custom", {})
    stacked = custom.get("stacking", {}).get("mode") == "normal"
    if not data:
        no_data(ax)
        return
    base: dict[float, float] = {}
    for i, (name, series) in enumerate(data):
        props = overrides_for(panel, name)
        fixed = props.get("color", {}).get("fixedColor")
        line_color = color(fixed) if fixed else PALETTE[i % len(PALETTE)]
        times = [day(t) for t in series.times]
        values = list(series.values)
        this_stacked = stacked and props.get("custom.stacking", {}).get("mode") != "none"
        if this_stacked:
            lows = [base.get(t, 0.0) for t in series.times]
            highs = [lo + (v if math.isfinite(v) else 0.0)
                     for lo, v in zip(lows, values, strict=True)]
            for t, h in zip(series.times, highs, strict=True):
                base[t] = h
            ax.fill_between(times, lows, highs, color=line_color, alpha=0.35, linewidth=0)
            ax.plot(times, highs, color=line_color, linewidth=1, label=name, clip_on=False)
        else:
            dashed = "custom.lineStyle" in props
            ax.plot(times, values, color=line_color, linewidth=1.4 if dashed else 1,
                    linestyle="--" if dashed else "-", label=name, clip_on=False, zorder=3)
    if custom.get("thresholdsStyle", {}).get("mode", "off") != "off":
        hi = ax.get_ylim()[1]
        for step in defaults.get("thresholds", {}).get("steps", [])[1:]:
            value = step.get("value")
            if value is not None and value <= hi * 1.5:
                ax.axhline(value, color=color(step["color"]), linestyle=":", linewidth=1)
    ax.margins(y=0.1)
    highest = max((v for _, s in data for v in s.values if math.isfinite(v)), default=0.0)
    if defaults.get("min") is not None:
        floor = defaults["min"]
        ax.set_ylim(bottom=floor, top=ax.get_ylim()[1] if highest > floor else floor + 1)
    if defaults.get("max") is not None and ax.get_ylim()[1] > defaults["max"]:
        ax.set_ylim(top=defaults["max"] * 1.05)
    if defaults.get("decimals") == 0:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(
        FuncFormatter(lambda v, _p: fmt_value(v, unit, defaults.get("decimals"))))
    time_axis(ax)
    ax.grid(color=GRID, linewidth=0.5)
    handles, labels = ax.get_legend_handles_labels()
    if len(labels) > 8:
        handles, labels = handles[:8], [*labels[:7], f"... +{len(labels) - 7} more"]
    leg = ax.legend(handles, labels, loc="upper left", fontsize=6, frameon=False,
                    ncol=2 if len(labels) > 4 else 1, labelcolor=TEXT)
    leg.set_zorder(5)


def last_finite(series: Series) -> float:
    for value in reversed(series.values):
        if math.isfinite(value):
            return value
    return math.nan


def draw_stat(ax: Axes, panel: Mapping[str, Any], data: list[tuple[str, Series]]) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    ax.set_xticks([])
    ax.set_yticks([])
    if not data:
        no_data(ax)
        return
    steps = defaults.get("thresholds", {}).get("steps", [])
    show_name = panel.get("options", {}).get("textMode") == "value_and_name" or len(data) > 1
    n = len(data)
    cols = min(n, 4) if n > 1 else 1
    rows = math.ceil(n / cols)
    for i, (name, series) in enumerate(data):
        value = last_finite(series)
        hit = mapped(value, defaults.get("mappings", []))
        text, fill = hit if hit else (fmt_value(value, defaults.get("unit", ""),
                                                defaults.get("decimals")),
                                      threshold_color(value, steps))
        r, c = divmod(i, cols)
        x0, y0 = c / cols, 1 - (r + 1) / rows
        ax.add_patch(Rectangle((x0 + 0.01, y0 + 0.02), 1 / cols - 0.02, 1 / rows - 0.04,
                               transform=ax.transAxes, color=fill, alpha=0.85))
        size = 16 if n == 1 else max(7, 12 - n)
        if show_name:
            ax.text(x0 + 0.5 / cols, y0 + 0.68 / rows, name, transform=ax.transAxes,
                    ha="center", va="center", color="white", fontsize=max(6, size - 6))
            ax.text(x0 + 0.5 / cols, y0 + 0.32 / rows, text, transform=ax.transAxes,
                    ha="center", va="center", color="white", fontsize=size, fontweight="bold")
        else:
            ax.text(x0 + 0.5 / cols, y0 + 0.5 / rows, text, transform=ax.transAxes,
                    ha="center", va="center", color="white", fontsize=size + 6,
                    fontweight="bold")


def draw_state_timeline(ax: Axes, panel: Mapping[str, Any],
                        data: list[tuple[str, Series]]) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    if not data:
        no_data(ax)
        return
    steps = defaults.get("thresholds", {}).get("steps", [])
    names = []
    for row, (name, series) in enumerate(sorted(data, key=lambda d: d[0])):
        names.append(name)
        times = series.times
        for i, (t, v) in enumerate(zip(times, series.values, strict=True)):
            if not math.isfinite(v):
                continue
            t_end = times[i + 1] if i + 1 < len(times) else t + (times[1] - times[0]
                                                                  if len(times) > 1 else 1)
            hit = mapped(v, defaults.get("mappings", []))
            fill = hit[1] if hit else threshold_color(v, steps)
            ax.add_patch(Rectangle((day(t), row + 0.1), day(t_end) - day(t), 0.8,
                                   color=fill, linewidth=0))
    start = min(s.times[0] for _, s in data)
    end = max(s.times[-1] for _, s in data)
    ax.set_xlim(day(start), day(end))
    ax.set_ylim(0, len(names))
    ax.set_yticks([])
    for row, name in enumerate(names):
        ax.text(0.005, row + 0.5, name, color="black", fontsize=7, va="center",
                transform=ax.get_yaxis_transform())
    time_axis(ax)


def draw_heatmap(ax: Axes, panel: Mapping[str, Any], data: list[tuple[str, Series]]) -> None:
    if not data:
        no_data(ax)
        return
    unit = panel.get("options", {}).get("yAxis", {}).get("unit", "")

    def bound(item: tuple[str, Series]) -> float:
        return float(item[1].labels.get("le", "inf").replace("+Inf", "inf"))

    buckets = sorted(data, key=bound)
    times = buckets[0][1].times
    # Prometheus buckets are cumulative; the heatmap shows the count in each bucket.
    rows, prev = [], [0.0] * len(times)
    for _, series in buckets:
        values = [v if math.isfinite(v) else 0.0 for v in series.values]
        rows.append([max(v - p, 0.0) for v, p in zip(values, prev, strict=True)])
        prev = values
    keep = [i for i, r in enumerate(rows) if any(v > 0 for v in r)]
    if not keep:
        no_data(ax)
        return
    lo, hi = max(min(keep) - 1, 0), min(max(keep) + 1, len(rows) - 1)
    grid = rows[lo:hi + 1]
    labels = [fmt_value(bound(b), unit) if math.isfinite(bound(b)) else "+Inf"
              for b in buckets[lo:hi + 1]]
    x = [day(t) for t in times]
    dx = x[1] - x[0] if len(x) > 1 else 1e-5
    edges = [*x, x[-1] + dx]
    peak = max(max(r) for r in grid) or 1.0
    ax.pcolormesh(edges, range(len(grid) + 1), grid, cmap="Oranges",
                  norm=PowerNorm(0.5, vmin=0, vmax=peak))
    ax.set_yticks([i + 0.5 for i in range(len(grid))], [f"≤{label}" for label in labels])
    ax.tick_params(axis="y", labelsize=6)
    time_axis(ax)


DRAW = {"timeseries": draw_timeseries, "stat": draw_stat,
        "state-timeline": draw_state_timeline, "heatmap": draw_heatmap}


def render_dashboard(dashboard: Mapping[str, Any], source: Source, out: Path) -> list[str]:
    """Write ``out`` and return the titles of panels that showed no data."""
    panels = list(dashboard["panels"])
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    header, margin = 0.6, 0.15  # inches
    fig_w, fig_h = FIG_WIDTH_IN, rows * ROW_UNIT_IN + header + margin
    col_w = (fig_w - 2 * margin) / 24
    fig = plt.figure(figsize=(fig_w, fig_h), facecolor=BG)

    def place(pos: Mapping[str, int], pad_left: float, pad_bottom: float,
              pad_top: float) -> Axes:
        """Axes inside the panel's grid cell, leaving room for title and tick labels."""
        x0 = margin + pos["x"] * col_w + pad_left
        y_top = header + pos["y"] * ROW_UNIT_IN + pad_top
        w = pos["w"] * col_w - pad_left - 0.1
        h = pos["h"] * ROW_UNIT_IN - pad_top - pad_bottom
        return fig.add_axes((x0 / fig_w, 1 - (y_top + h) / fig_h, w / fig_w, h / fig_h))

    when = datetime.fromtimestamp(source.end, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    fig.suptitle(f"{dashboard['title']}  —  last {fmt_value(source.end - source.start, 's')} "
                 f"to {when}", color=TEXT, fontsize=13, x=0.01, y=1 - 0.15 / fig_h,
                 ha="left", va="top")
    empty = []
    for panel in panels:
        pos = panel["gridPos"]
        if panel["type"] == "row":
            ax = place(pos, 0.0, 0.0, 0.0)
            ax.set_axis_off()
            ax.text(0, 0.3, panel["title"], color=TEXT, fontsize=11, fontweight="bold",
                    transform=ax.transAxes)
            continue
        ax = place(pos, *PADS.get(panel["type"], PADS["timeseries"]))
        style_axes(ax, panel["title"])
        data = [(n, s) for n, s in source.panel(panel) if s.finite()]
        if not data:
            empty.append(panel["title"])
        DRAW.get(panel["type"], draw_timeseries)(ax, panel, data)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, facecolor=BG)
    plt.close(fig)
    # A 256-colour palette keeps the committed pictures small without visible loss.
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=256).save(out, optimize=True)
    return empty


def render_all(prom: Prometheus, out_dir: Path, start: float, end: float, step: float,
               scrape_interval: float, variables: Mapping[str, Sequence[str] | None],
               names: Sequence[str] | None = None) -> dict[str, list[str]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    source = Source(prom, start, end, step, scrape_interval, variables)
    result = {}
    for name, dashboard in load_dashboards().items():
        if names and name not in names:
            continue
        path = out_dir / f"{name}.png"
        result[name] = render_dashboard(dashboard, source, path)
        status = f"empty: {', '.join(result[name])}" if result[name] else "all panels have data"
        print(f"{path}: {status}")
    return result


def _duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smh])", text)
    if not m:
        raise argparse.ArgumentTypeError("use e.g. 90s, 15m, 1h")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render bgmock-twin dashboards to PNG.")
    parser.add_argument("--prometheus", help="Prometheus base URL")
    parser.add_argument("--live", action="store_true",
                        help="start bgmock-twin (embedded) and Prometheus, run a simulation")
    parser.add_argument("--wait", type=_duration, default=75.0,
                        help="with --live: how long to collect data first (default 75s)")
    parser.add_argument("--out", type=Path, default=Path("grafana/img"))
    parser.add_argument("--range", dest="range_", type=_duration, default=900.0,
                        help="time range to draw (default 15m)")
    parser.add_argument("--step", type=float, default=0.0, help="query step in seconds")
    parser.add_argument("--scrape-interval", type=float, default=15.0,
                        help="the data source's scrape interval (for $__rate_interval)")
    parser.add_argument("--cluster", action="append", help="select cluster(s); default All")
    parser.add_argument("--job", action="append", help="select scrape job(s); default All")
    parser.add_argument("--namespace", action="append", help="select namespace(s); default All")
    parser.add_argument("--instance", action="append", help="select instance(s); default All")
    parser.add_argument("--dashboard", action="append", help="only these dashboards")
    args = parser.parse_args(argv)

    if args.live:
        from grafana.stack import LiveStack

        stack = LiveStack()
        with stack:
            print(f"collecting for {args.wait:.0f}s in {stack.workdir} ...")
            deadline = time.monotonic() + args.wait
            while time.monotonic() < deadline:
                stack.check_alive()
                time.sleep(1)
            end = time.time()
            start = max(stack.started_at, end - args.range_)
            step = args.step or max(1.0, (end - start) / 120)
            empty = render_all(Prometheus(stack.prometheus_url), args.out, start, end, step,
                               stack.scrape_interval,
                               {"cluster": None, "job": None,
                                "namespace": [args.namespace[0]] if args.namespace else None,
                                "instance": None, "step": None}, args.dashboard)
        stack.cleanup()
    else:
        if not args.prometheus:
            parser.error("give --prometheus URL or --live")
        end = time.time()
        start = end - args.range_
        step = args.step or max(1.0, args.range_ / 120)
        empty = render_all(Prometheus(args.prometheus), args.out, start, end, step,
                           args.scrape_interval,
                           {"cluster": args.cluster, "job": args.job,
                            "namespace": args.namespace, "instance": args.instance,
                            "step": None}, args.dashboard)
    return 1 if any(empty.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
