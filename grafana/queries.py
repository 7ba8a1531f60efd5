"""Read the committed dashboards back as Prometheus queries, the way Grafana would.

The data test and the PNG renderer both need every panel's queries with Grafana's
variables filled in (``$namespace``, ``$instance``, ``$__rate_interval`` ...) and a
small Prometheus HTTP API client. Keeping that here means both exercise exactly
the JSON that Grafana is provisioned with, not a second copy of the queries.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"

# Grafana escapes these in a multi-value variable used inside a PromQL regex.
_REGEX_SPECIAL = re.compile(r"([.*+?^${}()|\[\]\\])")


@dataclass(frozen=True)
class PanelQuery:
    """One target of one panel."""

    dashboard: str
    panel_id: int
    title: str
    panel_type: str
    ref: str
    expr: str
    legend: str
    instant: bool

    @property
    def name(self) -> str:
        return f"{self.dashboard} / {self.title} [{self.ref}]"


def load_dashboards(directory: Path = DASHBOARD_DIR) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8"))
            for p in sorted(directory.glob("*.json"))}


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every non-row panel, also those inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def panel_queries(dashboards: Mapping[str, Mapping[str, Any]]) -> list[PanelQuery]:
    out = []
    for name, dashboard in dashboards.items():
        for panel in iter_panels(dashboard):
            for t in panel.get("targets", []):
                if t.get("hide"):
                    continue
                out.append(PanelQuery(
                    dashboard=name, panel_id=int(panel["id"]), title=panel["title"],
                    panel_type=panel["type"], ref=t.get("refId", ""), expr=t["expr"],
                    legend=t.get("legendFormat", ""), instant=bool(t.get("instant")),
                ))
    return out


def variable_queries(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """Name -> query of each query-type template variable."""
    out = {}
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]
            out[var["name"]] = query["query"] if isinstance(query, dict) else query
    return out


def grafana_regex_value(values: Sequence[str] | None) -> str:
    """What Grafana puts in place of a multi-value variable inside a regex matcher:
    ``.*`` for All, else the escaped values joined as an alternation."""
    if values is None:
        return ".*"
    # Inside a PromQL double-quoted string a regex backslash is written twice.
    escaped = [_REGEX_SPECIAL.sub(r"\\\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def rate_interval_seconds(step: float, scrape_interval: float) -> float:
    """Grafana's ``$__rate_interval``: max($__interval + scrape, 4 * scrape)."""
    return max(step + scrape_interval, 4 * scrape_interval)


def substitute(expr: str, variables: Mapping[str, Sequence[str] | None], *,
               step: float, scrape_interval: float, range_seconds: float) -> str:
    """Fill in Grafana's variables. ``variables`` maps a name to its selected values
    (None = All)."""
    builtins = {
        "__rate_interval": f"{math.ceil(rate_interval_seconds(step, scrape_interval))}s",
        "__interval": f"{math.ceil(step)}s",
        "__range": f"{math.ceil(range_seconds)}s",
    }

    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in builtins:
            return builtins[name]
        if name in variables:
            return grafana_regex_value(variables[name])
        raise KeyError(f"unknown dashboard variable ${name} in {expr!r}")

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, expr)


_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(?P<match>.+),\s*)?(?P<label>\w+)\)\s*$")


def parse_label_values(query: str) -> tuple[str | None, str]:
    """``label_values(selector, label)`` -> (selector, label)."""
    m = _LABEL_VALUES.match(query)
    if not m:
        raise ValueError(f"not a label_values() query: {query!r}")
    return m.group("match"), m.group("label")


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    times: list[float]
    values: list[float]

    def finite(self) -> bool:
        return any(math.isfinite(v) for v in self.values)


class PrometheusError(Exception):
    pass


class Prometheus:
    """The few read endpoints of Prometheus' HTTP API that dashboards use."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def _get(self, path: str, params: Mapping[str, Any] | list[tuple[str, Any]]) -> Any:
        resp = self.session.get(self.url + path, params=params, timeout=self.timeout)
        try:
            body = resp.json()
        except ValueError:
            raise PrometheusError(f"{path}: HTTP {resp.status_code} {resp.text[:200]}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        data = self._get("/api/v1/query_range",
                         {"query": expr, "start": start, "end": end, "step": step})
        return [Series(r["metric"], [float(t) for t, _ in r["values"]],
                       [float(v) for _, v in r["values"]]) for r in data["result"]]

    def query(self, expr: str, at: float | None = None) -> list[Series]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self._get("/api/v1/query", params)
        if data["resultType"] == "scalar":
            return [Series({}, [float(data["result"][0])], [float(data["result"][1])])]
        return [Series(r["metric"], [float(r["value"][0])], [float(r["value"][1])])
                for r in data["result"]]

    def label_values(self, label: str, match: str | None = None) -> list[str]:
        params = [("match[]", match)] if match else []
        return list(self._get(f"/api/v1/label/{label}/values", params))

    def alert_rules(self) -> list[dict[str, Any]]:
        data = self._get("/api/v1/rules", {"type": "alert"})
        return [rule for group in data["groups"] for rule in group["rules"]]

    def close(self) -> None:
        self.session.close()
