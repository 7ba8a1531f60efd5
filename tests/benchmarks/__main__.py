"""``python -m tests.benchmarks [--quick] [--out FILE] [--results FILE] [--only NAMES]``:
every benchmark, each in a fresh process, then a summary table (printed, and written
to ``--out``); every figure as a JSON line (name, value, unit, target, met, detail,
conditions) in ``--results``.

Order: pacing (the highest rate it kept within 1 % against the emulator is the twin's
rate in the Locust comparison), event processing, Locust side by side, the Kafka
channel, the PostgreSQL ledger, footprint (idle CPU, scrape time, RSS). With
``--quick`` (which proves the scripts run, not the speed) they run two at a time so
the smoke test stays short; otherwise one after the other, never competing.
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

BENCHMARKS = ("pacing", "events", "locust", "kafka", "ledger", "footprint", "fleet")
# --quick: two lanes of about the same length, run side by side (measured alone, in
# seconds: fleet 44, footprint 31, pacing, kafka and locust 15 each, ledger and events 4)
QUICK_LANES = (("fleet", "pacing", "events"), ("footprint", "locust", "kafka", "ledger"))


def command(name: str, quick: bool, results: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", f"tests.benchmarks.bench_{name}", "--results",
            str(results), *(["--quick"] if quick else []), *extra]


def run(name: str, quick: bool, results: Path, extra: list[str]) -> int:
    argv = command(name, quick, results, extra)
    print(f"\n$ {' '.join(argv[1:])}", flush=True)
    return subprocess.run(argv, check=False).returncode


def run_lanes(chosen: list[str], results: Path, workdir: Path) -> list[str]:
    """--quick: each lane's benchmarks one after the other, the lanes side by side;
    each benchmark's output printed whole when it is done. The names that failed."""
    failed: list[str] = []
    lanes = [[n for n in lane if n in chosen] for lane in QUICK_LANES]
    running: list[tuple[str, subprocess.Popen[bytes], Path, list[str]]] = []

    def launch(lane: list[str]) -> None:
        if lane:
            name = lane.pop(0)
            log = workdir / f"{name}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(command(name, True, results, []), stdout=out,
                                           stderr=subprocess.STDOUT)
            running.append((name, process, log, lane))

    for lane in lanes:
        launch(lane)
    while running:
        time.sleep(0.1)
        for entry in list(running):
            name, process, log, lane = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            print(f"\n$ {' '.join(command(name, True, results, [])[1:])}\n"
                  f"{log.read_text(errors='replace')}", end="", flush=True)
            if process.returncode != 0:
                failed.append(name)
            launch(lane)
    return failed


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
    parser.add_argument("--results", help="write every figure as a JSON line to this file")
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
        results = Path(args.results) if args.results else Path(tmp) / "results.jsonl"
        results.write_text("")
        if args.quick:
            failed = run_lanes(chosen, results, Path(tmp))
        for name in BENCHMARKS:
            if name not in chosen or args.quick:
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
