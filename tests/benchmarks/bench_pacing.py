"""Pacing: achieved vs requested rate and send lag of REST payments.

The twin's real sender (a simulation at a constant rate: ``pacing.offsets`` →
``Sender`` → ``POST /bank/transaction/outgoing``) runs in this process against
``bgmock-twin emulate`` in another, on Tansu by default so the twin follows every
payment as in production. Send lag is the time from a payment's intended send
time to the moment its POST is handed to the HTTP client. A rate passes when the
achieved rate (payments between the first and last actual send) is within 1 % of
the requested one and the p99 send lag is under 10 ms. Rates are stepped up
(50, 100, 200, 300, 400, 500, ...) until one fails after the required 50, 200 and
500/s were measured; a failing step is repeated once (the machine is shared), and
one bisection step between the last pass and the first failure narrows down the
highest sustained rate.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from bgmock_twin.logs import configure_logging
from tests.benchmarks.common import Reporter, Result, arguments, banner, fmt
from tests.benchmarks.twin import RunFigures
from tests.benchmarks.world import World, world

REQUIRED = (50, 200, 500)
LADDER = (50, 100, 200, 300, 400, 500, 600, 800, 1000, 1500, 2000)
BELOW = (25, 10)
QUICK_RATES = (50, 200)
RATE_TOLERANCE = 0.01
LAG_TARGET_SECONDS = 0.010
PAUSE_SECONDS = 2.0  # let the last payments of a step finish before the next
QUICK_PAUSE_SECONDS = 0.5


def passes(figures: RunFigures) -> bool:
    return figures.rate_error <= RATE_TOLERANCE and figures.lag_p99 < LAG_TARGET_SECONDS


def describe(f: RunFigures, others: dict[str, float]) -> str:
    share = " ".join(f"{name} {cpu * 100:.0f}%" for name, cpu in others.items())
    return (f"sent {f.sent}/{f.planned}, dropped {f.dropped}; lag p50 {f.lag_p50 * 1e3:.2f} ms "
            f"p99 {f.lag_p99 * 1e3:.2f} ms max {f.lag_max * 1e3:.1f} ms (twin's own metric p99 "
            f"{f.twin_lag_p99 * 1e3:.2f} ms); POST p50 {f.post_p50 * 1e3:.1f} ms p99 "
            f"{f.post_p99 * 1e3:.1f} ms; CPU of one core: twin {f.cpu_share * 100:.0f}% {share}")


class Ladder:
    def __init__(self, w: World, seconds: float, reporter: Reporter, pause: float) -> None:
        self.world = w
        self.seconds = seconds
        self.pause = pause
        self.reporter = reporter
        self.figures: dict[float, RunFigures] = {}

    def step(self, rate: float, retry: bool = True) -> bool:
        assert self.world.twin is not None
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            before, wall0 = self.world.others_cpu(), time.monotonic()
            figures = self.world.twin.run(rate, self.seconds)
            after, wall1 = self.world.others_cpu(), time.monotonic()
            others = {k: (after[k] - before[k]) / (wall1 - wall0) for k in after}
            ok = passes(figures)
            tag = "" if attempts == 1 else f" attempt {attempt + 1}/{attempts}"
            self.reporter.note(f"{rate:g}/s{tag}: achieved {fmt(figures.achieved)}/s, "
                               f"{'pass' if ok else 'fail'}; {describe(figures, others)}")
            self.figures[rate] = figures
            time.sleep(self.pause)
            if ok:
                self._emit(rate, figures, others)
                return True
        self._emit(rate, figures, others)
        return False

    def _emit(self, rate: float, f: RunFigures, others: dict[str, float]) -> None:
        name = f"pacing.rate_{rate:g}"
        self.reporter.emit(Result(
            f"{name}.achieved", f.achieved, "payments/s",
            f"within 1% of {rate:g}/s", f.rate_error <= RATE_TOLERANCE,
            f"requested {rate:g}/s, error {f.rate_error * 100:.2f}%; {describe(f, others)}"))
        self.reporter.emit(Result(
            f"{name}.send_lag_p99", f.lag_p99 * 1e3, "ms", "< 10 ms",
            f.lag_p99 < LAG_TARGET_SECONDS, f"p50 {f.lag_p50 * 1e3:.2f} ms"))


def main(argv: Sequence[str] | None = None) -> int:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--bus", choices=("kafka", "memory"), default="kafka",
                            help="the emulator's event bus (kafka: Tansu, the twin follows)")
        parser.add_argument("--seconds", type=float,
                            help="seconds per rate (default 10; quick 1.5)")

    args = arguments(__doc__.splitlines()[0], argv, extra)
    configure_logging("ERROR", "json")
    reporter = Reporter(args.results)
    seconds = args.seconds or (1.5 if args.quick else 10.0)
    banner(f"pacing over REST against bgmock-twin emulate ({args.bus} bus), {seconds:g} s per rate")
    with world(args.bus) as w:
        assert w.twin is not None
        pause = QUICK_PAUSE_SECONDS if args.quick else PAUSE_SECONDS
        w.twin.run(50, 0.5 if args.quick else 1.0)  # warm-up: connections, lazy imports
        time.sleep(pause)
        ladder = Ladder(w, seconds, reporter, pause)
        if args.quick:
            for rate in QUICK_RATES:
                ladder.step(rate, retry=False)
            passed = [r for r in QUICK_RATES if passes(ladder.figures[r])]
            best = max(passed, default=0)
            reporter.emit(Result("pacing.max_sustained_rate", best, "payments/s",
                                 detail="quick mode: only " +
                                        ", ".join(f"{r}/s" for r in QUICK_RATES) + " tried"))
            return 0
        last_pass: float | None = None
        first_fail: float | None = None
        for rate in LADDER:
            ok = ladder.step(rate)
            if ok and first_fail is None:
                last_pass = rate
            if not ok and first_fail is None:
                first_fail = rate
            if first_fail is not None and rate >= max(REQUIRED):
                break
        if last_pass is None:
            for rate in BELOW:
                if ladder.step(rate):
                    last_pass = rate
                    break
        elif first_fail is not None:
            middle = round((last_pass + first_fail) / 2 / 25) * 25
            if last_pass < middle < first_fail and ladder.step(middle):
                last_pass = middle
        reporter.emit(Result(
            "pacing.max_sustained_rate", last_pass or 0, "payments/s",
            detail=("highest rate within 1% and p99 lag < 10 ms before the first failure "
                    f"({first_fail:g}/s)" if first_fail else "no failure up to "
                    f"{LADDER[-1]}/s") if last_pass else "no rate tried passed"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
