"""Pacing: achieved vs requested rate and send lag of REST payments.

The twin's real sender (a simulation at a constant rate: ``pacing.offsets`` →
``Sender`` → ``POST /bank/transaction/outgoing``) runs in this process against
``bgmock-twin emulate`` in another, on Tansu by default so the twin follows every
payment as in production. Send lag is the time from a payment's intended send
time to the moment its POST is handed to the HTTP client. A rate passes when the
achieved rate (payments between the first and last actual send) is within 1 % of
the requested one and the p99 send lag is under 10 ms. Rates are stepped up
(50, 100, 200, 300, 400, 500, ...) until one fails after the required 50, 200 and
500/s were measured and the rate alone has been missed too; a failing step is
repeated once (the machine is shared), and one bisection step between the last
pass and the first failure narrows down the highest sustained rate. The highest
rate whose achieved rate was within 1 % whatever the lag is printed as well (the
Locust comparison drives the twin at it).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from bgmock_twin.logs import configure_logging
from bgmock_twin.tracking.sender import Sender
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


def rate_ok(figures: RunFigures) -> bool:
    return figures.rate_error <= RATE_TOLERANCE


def passes(figures: RunFigures) -> bool:
    return rate_ok(figures) and figures.lag_p99 < LAG_TARGET_SECONDS


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

    def step(self, rate: float, retry: bool = True) -> RunFigures:
        """Run ``rate``; a miss of either target is tried once more. Returns the passing
        attempt, else the last one (both are printed)."""
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
                break
        self._emit(rate, figures, others)
        return figures

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
        parser.add_argument("--rates", help="comma-separated rates to run instead of the ladder")
        parser.add_argument("--no-ledger-wait", action="store_true",
                            help="experiment, not the twin's behaviour: skip the sender's wait "
                                 "for the ledger to store a payment's row before and after the "
                                 "POST, to see what that durability costs")
        parser.add_argument("--switch-interval", type=float,
                            help="sys.setswitchinterval for the twin's process (default: "
                                 "Python's 0.005 s), to see how GIL hand-overs shape the lag")

    args = arguments(__doc__.splitlines()[0], argv, extra)
    configure_logging("ERROR", "json")
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    if args.no_ledger_wait:
        Sender._stored = lambda self: None  # type: ignore[method-assign]
    reporter = Reporter(args.results)
    seconds = args.seconds or (1.5 if args.quick else 10.0)
    banner(f"pacing over REST against bgmock-twin emulate ({args.bus} bus), {seconds:g} s per "
           f"rate, GIL switch interval {sys.getswitchinterval() * 1e3:g} ms"
           + (", EXPERIMENT: no ledger wait around each send" if args.no_ledger_wait else ""))
    with world(args.bus) as w:
        assert w.twin is not None
        pause = QUICK_PAUSE_SECONDS if args.quick else PAUSE_SECONDS
        w.twin.run(50, 0.5 if args.quick else 1.0)  # warm-up: connections, lazy imports
        time.sleep(pause)
        ladder = Ladder(w, seconds, reporter, pause)
        if args.rates:
            for rate in (float(r) for r in args.rates.split(",")):
                ladder.step(rate, retry=False)
            return 0
        if args.quick:
            for rate in QUICK_RATES:
                ladder.step(rate, retry=False)
            tried_figures = [ladder.figures[r] for r in QUICK_RATES]
            tried = "quick mode: only " + ", ".join(f"{r}/s" for r in QUICK_RATES) + " tried"
            reporter.emit(Result(
                "pacing.max_sustained_rate",
                max((f.rate for f in tried_figures if passes(f)), default=0), "payments/s",
                detail=tried))
            reporter.emit(Result(
                "pacing.max_rate_within_1pct",
                max((f.rate for f in tried_figures if rate_ok(f)), default=0), "payments/s",
                detail=tried))
            return 0
        sustained, first_fail = 0.0, None  # both targets
        throughput, rate_fail = 0.0, None  # the rate alone
        for rate in LADDER:
            figures = ladder.step(rate)
            if first_fail is None:
                if passes(figures):
                    sustained = rate
                else:
                    first_fail = rate
            if rate_fail is None:
                if rate_ok(figures):
                    throughput = rate
                else:
                    rate_fail = rate
            if rate >= max(REQUIRED) and first_fail is not None and rate_fail is not None:
                break
        if first_fail is not None and not sustained:
            for rate in BELOW:
                if passes(ladder.step(rate)):
                    sustained = rate
                    break
        elif first_fail is not None:
            middle = round((sustained + first_fail) / 2 / 25) * 25
            if sustained < middle < first_fail and passes(ladder.step(middle)):
                sustained = middle
        reporter.emit(Result(
            "pacing.max_sustained_rate", sustained, "payments/s",
            detail="highest rate with the achieved rate within 1% and p99 send lag < 10 ms; "
                   + (f"first miss at {first_fail:g}/s" if first_fail else
                      f"none missed up to {LADDER[-1]}/s")))
        reporter.emit(Result(
            "pacing.max_rate_within_1pct", throughput, "payments/s",
            detail="highest rate whose achieved rate was within 1%, whatever the lag; "
                   + (f"first miss at {rate_fail:g}/s" if rate_fail else
                      f"none missed up to {LADDER[-1]}/s")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
