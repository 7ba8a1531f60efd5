"""A simulation's end-of-run summary, built from the control API's detail answer
(``GET /api/v1/simulations/{id}``) and what the client measured itself.

``values()`` gives every threshold name its value (``None`` when the twin did not
give it); ``missing_stats()`` names the latency statistics the API does not give.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bgmock_twin.control.thresholds import OUTCOMES, STATS, STEPS, Verdict


@dataclass
class Summary:
    detail: dict[str, Any]
    run_seconds: float | None = None
    send_seconds: float | None = None
    interrupted: bool = False
    verdicts: list[Verdict] = field(default_factory=list)

    # --- figures ------------------------------------------------------------------------------
    @property
    def progress(self) -> dict[str, Any]:
        return dict(self.detail.get("progress") or {})

    def count(self, name: str) -> int:
        return int(self.detail.get(name) or self.progress.get(name) or 0)

    @property
    def outcomes(self) -> dict[str, int]:
        given = self.detail.get("outcomes") or {}
        return {o: int(given.get(o) or 0) for o in OUTCOMES}

    @property
    def achieved_rate(self) -> float | None:
        """The twin's figure (payments per second of its sending), else the client's."""
        given = (self.detail.get("results") or {}).get("achievedRate")
        if isinstance(given, int | float):
            return float(given)
        dispatched = self.count("dispatched")
        if dispatched == 0 or not self.send_seconds or self.send_seconds <= 0:
            return None
        return dispatched / self.send_seconds

    def latency(self) -> dict[str, dict[str, Any]]:
        """Row name (``total``, each step, ``send_lag``) to its statistics."""
        latency = self.detail.get("latency") or {}
        rows: dict[str, dict[str, Any]] = {"total": dict(latency.get("total") or {})}
        steps = latency.get("steps") or {}
        for step in [*STEPS, *(s for s in steps if s not in STEPS)]:
            if step in steps:
                rows[step] = dict(steps[step] or {})
        rows["send_lag"] = dict(self.detail.get("sendLag") or {})
        return rows

    def given_stats(self) -> list[str]:
        rows = self.latency()
        return [s for s in STATS if any(s in row for name, row in rows.items()
                                        if name != "send_lag")]

    def missing_stats(self) -> list[str]:
        given = self.given_stats()
        return [s for s in STATS if s not in given]

    def values(self) -> dict[str, float | None]:
        dispatched, planned = self.count("dispatched"), self.count("planned")
        outcomes = self.outcomes
        values: dict[str, float | None] = {
            "planned": planned, "dispatched": dispatched, "dropped": self.count("dropped"),
            "unfinished": self.count("unfinished"), **outcomes,
            "success_ratio": outcomes["success"] / dispatched if dispatched else None,
            "error_ratio": (outcomes["failed"] + outcomes["rejected"] + outcomes["stuck"])
            / dispatched if dispatched else None,
            "drop_ratio": self.count("dropped") / planned if planned else None,
            "achieved_rate": self.achieved_rate,
            "run_seconds": self.run_seconds,
        }
        for row in ("total", *STEPS, "send_lag"):
            values.update({f"{stat}_{row}": None for stat in STATS})
        for row, stats in self.latency().items():
            for stat in STATS:
                value = stats.get(stat)
                values[f"{stat}_{row}"] = float(value) if isinstance(value, int | float) else None
        return values

    # --- JSON ---------------------------------------------------------------------------------
    def as_dict(self, url: str) -> dict[str, Any]:
        return {
            "twin": url,
            "simulation": self.detail.get("id"),
            "name": self.detail.get("name"),
            "state": self.detail.get("state"),
            "interrupted": self.interrupted,
            "spec": self.detail.get("spec"),
            "durationSeconds": self.detail.get("durationSeconds"),
            "planned": self.count("planned"),
            "dispatched": self.count("dispatched"),
            "dropped": self.count("dropped"),
            "unfinished": self.count("unfinished"),
            "achievedRate": self.achieved_rate,
            "sendSeconds": _round(self.send_seconds),
            "runSeconds": _round(self.run_seconds),
            "outcomes": self.outcomes,
            "latencySeconds": self.latency(),
            "statsNotGivenByTheApi": self.missing_stats(),
            "values": self.values(),
            "thresholds": [v.as_dict() for v in self.verdicts],
            "thresholdsOk": all(v.ok for v in self.verdicts),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def live_figures(detail: dict[str, Any], elapsed: float) -> dict[str, Any]:
    """What the progress line shows, from one detail answer."""
    progress = detail.get("progress") or {}
    dispatched = int(detail.get("dispatched") or progress.get("dispatched") or 0)
    total = (detail.get("latency") or {}).get("total") or {}
    return {
        "planned": int(detail.get("planned") or progress.get("planned") or 0),
        "dispatched": dispatched,
        "dropped": int(detail.get("dropped") or progress.get("dropped") or 0),
        # too early for a rate that means anything before the first second
        "rate": dispatched / elapsed if elapsed >= 1.0 else None,
        "in_flight": int(progress.get("inFlight") or 0),
        "outcomes": {o: int((detail.get("outcomes") or {}).get(o) or 0) for o in OUTCOMES},
        "p95": total.get("p95"),
        "state": detail.get("state", "?"),
    }
