"""``python -m tests.benchmarks [--quick] [--out FILE] [--only NAMES]``: every benchmark,
each in a fresh process, then a summary table (printed, and written to ``--out``).

Order: pacing (the highest rate it kept within 1 % is the twin's rate in the Locust
comparison), event processing, Locust side by side, footprint.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.benchmarks.common import conditions, conditions_text, fmt

BENCHMARKS = ("pacing", "events", "locust", "footprint")


def run(name: str, quick: bool, results: Path, extra: list[str]) -> int:
    command = [sys.executable, "-m", f"tests.benchmarks.bench_{name}", "--results",
               str(results), *(["--quick"] if quick else []), *extra]
    print(f"\n$ {' '.join(command[1:])}", flush=True)
    return subprocess.run(command, check=False).returncode


def load(results: Path) -> list[dict[str, object]]:
    if not results.exists():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def summary(rows: list[dict[str, object]], started: dict[str, object],
            failed: list[str], quick: bool) -> str:
    header = ("Figure", "Value", "Unit", "Target", "Verdict", "Load (1 min)")
    table = [header]
    for row in rows:
        met = row["met"]
        verdict = "" if met is None else ("met" if met else "MISSED")
        load = row["conditions"]["load"][0]  # type: ignore[index]
        table.append((str(row["name"]), fmt(float(row["value"])),  # type: ignore[arg-type]
                      str(row["unit"]), str(row["target"]), verdict, f"{load:.2f}"))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = [
        f"bgmock-twin benchmarks{' (quick mode: proves the scripts, not the speed)' if quick else ''}",
        f"machine at start: {conditions_text(started)}",
        f"machine at end:   {conditions_text(conditions())}",
        "",
    ]
    for i, r in enumerate(table):
        lines.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(r)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    if failed:
        lines.append("")
        lines.append(f"benchmarks that failed to run: {', '.join(failed)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="seconds-long runs that prove each benchmark works")
    parser.add_argument("--out", help="also write the summary table to this file")
    parser.add_argument("--only", help="comma-separated subset of " + ", ".join(BENCHMARKS))
    args = parser.parse_args(argv)
    chosen = [b.strip() for b in args.only.split(",")] if args.only else list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    started = conditions()
    began = time.monotonic()
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-results-") as tmp:
        results = Path(tmp) / "results.jsonl"
        for name in BENCHMARKS:
            if name not in chosen:
                continue
            extra: list[str] = []
            if name == "locust":
                paced = [r for r in load(results) if r["name"] == "pacing.max_rate_within_1pct"]
                rate = float(paced[-1]["value"]) if paced else 0.0  # type: ignore[arg-type]
                if rate > 0:
                    extra = ["--twin-rate", f"{rate:g}"]
            if run(name, args.quick, results, extra) != 0:
                failed.append(name)
        text = summary(load(results), started, failed, args.quick)
    print(f"\n== summary ({time.monotonic() - began:.0f} s)\n{text}", end="", flush=True)
    if args.out:
        Path(args.out).write_text(text)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
