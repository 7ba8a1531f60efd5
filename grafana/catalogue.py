"""The series the twin exports, and the series a PromQL expression selects.

Dashboards and alert rules must only use names and labels that
``bgmock_twin/metrics.py`` (plus prometheus-client's process and GC collectors and
Prometheus' own ``up``) actually produces; a typo there is a panel that is silently
empty. The tests check every selector against this catalogue.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from bgmock_twin import metrics

# Labels every scraped series carries (target labels, `cluster` where a deployment
# sets one), plus those Prometheus adds.
TARGET_LABELS = frozenset({"cluster", "namespace", "instance", "job"})
# Series made by Prometheus itself or by prometheus-client's default collectors.
BUILTIN = {
    "up": frozenset(),
    "process_cpu_seconds_total": frozenset(),
    "process_resident_memory_bytes": frozenset(),
    "process_virtual_memory_bytes": frozenset(),
    "process_open_fds": frozenset(),
    "process_max_fds": frozenset(),
    "process_start_time_seconds": frozenset(),
    "python_gc_collections_total": frozenset({"generation"}),
    "python_gc_objects_collected_total": frozenset({"generation"}),
    "python_gc_objects_uncollectable_total": frozenset({"generation"}),
    "python_info": frozenset({"implementation", "major", "minor", "patchlevel", "version"}),
}


def exported_series() -> dict[str, frozenset[str]]:
    """Sample name -> its own label names, for every metric in bgmock_twin.metrics."""
    out = dict(BUILTIN)
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        name, kind = value._name, value._type
        labels = frozenset(value._labelnames)
        if kind == "counter":
            out[f"{name}_total"] = labels
        elif kind == "histogram":
            out[f"{name}_bucket"] = labels | {"le"}
            out[f"{name}_count"] = labels
            out[f"{name}_sum"] = labels
        elif kind == "info":
            out[f"{name}_info"] = labels  # Info's own keys are not known statically
        else:
            out[name] = labels
    # Sanity: the process collector is really registered in this environment.
    registered = {m.name for m in REGISTRY.collect()}
    assert "process_cpu_seconds" in registered or "process_cpu_seconds_total" in registered
    return out


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: dict[str, str]  # label -> matcher text (op and value)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"\b(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?P<body>\{[^}]*\})?")
_MATCHER = re.compile(r'(?P<label>\w+)\s*(?P<op>=~|!~|!=|=)\s*(?P<value>"(?:[^"\\]|\\.)*")')
_KNOWN_PREFIXES = ("bgmock_", "process_", "python_")


def selectors(expr: str) -> list[Selector]:
    """The metric selectors in a PromQL expression (names starting bgmock_, process_,
    python_, or ``up``); function names, keywords and label names are ignored."""
    out = []
    for m in _SELECTOR.finditer(expr):
        name = m.group("name")
        if not (name.startswith(_KNOWN_PREFIXES) or name == "up"):
            continue
        # A name inside a quoted string (e.g. slo="p95_seconds") is not a selector.
        if _inside_string(expr, m.start()):
            continue
        body = m.group("body") or ""
        matchers = {mm.group("label"): mm.group("op") + mm.group("value")
                    for mm in _MATCHER.finditer(body)}
        out.append(Selector(name, matchers))
    return out


def _inside_string(expr: str, pos: int) -> bool:
    return any(s.start() < pos < s.end() for s in _STRING.finditer(expr))
