"""k6-style thresholds over a simulation's summary: ``success_ratio>=0.99``,
``p95_total<5``, ``dropped==0``.

The grammar is one name, one operator and one number, with optional spaces::

    threshold := name op number
    name      := [a-z][a-z0-9_]*        (one of NAMES)
    op        := "<" | "<=" | ">" | ">=" | "==" | "!="
    number    := decimal, optionally signed, optionally with an exponent

It is parsed with one regular expression and evaluated with ``operator``; nothing
is ever evaluated as code. An unknown name is an error before the run starts. A
threshold whose value the twin did not give (no payment finished, a statistic the
API does not compute) does not hold: a CI gate must not pass on missing data.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

OUTCOMES = ("success", "failed", "rejected", "stuck")
# BGMock's lifecycle steps as the control API names them in ``latency.steps``.
STEPS = ("accepted", "initiated", "forwarded", "processed", "completed", "settled")
# Statistics a latency summary may carry; the API gives some of them (see summary.py).
STATS = ("min", "mean", "p50", "p90", "p95", "p99", "max")


def _names() -> dict[str, str]:
    names = {
        "planned": "payments the simulation was to send",
        "dispatched": "payments sent to BGMock",
        "dropped": "payments not sent: no sender slot free when due (never delayed)",
        "unfinished": "payments sent without an outcome when the run ended",
        "success": "payments settled successfully",
        "failed": "payments BGMock failed (deliberate failures included)",
        "rejected": "payments BGMock refused at once",
        "stuck": "payments past the step deadline without their next step",
        "success_ratio": "success / dispatched (0..1)",
        "error_ratio": "(failed + rejected + stuck) / dispatched (0..1)",
        "drop_ratio": "dropped / planned (0..1)",
        "achieved_rate": "payments sent per second of sending, as the twin measured it",
        "run_seconds": "seconds from the start to the end of the run, measured by the client",
    }
    for stat in STATS:
        names[f"{stat}_total"] = f"{stat} of the whole payment latency, seconds"
    for stat in STATS:
        for step in STEPS:
            names[f"{stat}_{step}"] = f"{stat} of the time to reach {step} from the step before"
    for stat in ("p50", "p95", "p99", "max"):
        names[f"{stat}_send_lag"] = f"{stat} of actual minus intended send time, seconds"
    return names


NAMES: dict[str, str] = _names()

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "==": operator.eq, "!=": operator.ne,
}
_GRAMMAR = re.compile(
    r"\s*(?P<name>[a-z][a-z0-9_]*)\s*(?P<op><=|>=|==|!=|<|>)\s*"
    r"(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*"
)


class ThresholdError(ValueError):
    """A threshold that does not parse or names nothing known."""


@dataclass(frozen=True, slots=True)
class Threshold:
    expression: str
    name: str
    op: str
    limit: float

    def holds(self, value: float | None) -> bool:
        if value is None or math.isnan(value):
            return False
        return OPERATORS[self.op](value, self.limit)


@dataclass(frozen=True, slots=True)
class Verdict:
    threshold: Threshold
    value: float | None

    @property
    def ok(self) -> bool:
        return self.threshold.holds(self.value)

    def as_dict(self) -> dict[str, object]:
        return {"threshold": self.threshold.expression, "name": self.threshold.name,
                "value": self.value, "ok": self.ok}


def parse_threshold(text: str) -> Threshold:
    match = _GRAMMAR.fullmatch(text)
    if match is None:
        raise ThresholdError(
            f"cannot read threshold {text!r}: write NAME OP NUMBER, e.g. 'p95_total<5', "
            "with OP one of < <= > >= == !=")
    name = match["name"]
    if name not in NAMES:
        close = difflib.get_close_matches(name, NAMES, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ThresholdError(f"unknown threshold name {name!r}{hint}; "
                             "see 'bgmock-twin simulate --help'")
    limit = float(match["number"])
    if not math.isfinite(limit):
        raise ThresholdError(f"threshold {text!r}: the number must be finite")
    return Threshold(text.strip(), name, match["op"], limit)


def evaluate(thresholds: list[Threshold], values: Mapping[str, float | None]) -> list[Verdict]:
    return [Verdict(t, values.get(t.name)) for t in thresholds]
