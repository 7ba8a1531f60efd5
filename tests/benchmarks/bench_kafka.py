"""Kafka channel: the highest rate of payments the twin produces to
``transactions.initiated``, has confirmed and follows to the end, none dropped.

``bgmock-twin emulate`` runs on a Tansu broker in its own process and
``bgmock-twin run`` follows it on the same broker; each step is one constant-rate
simulation on the Kafka channel (``channel: kafka`` in the control API). A rate
passes when the twin sent every planned payment (none dropped), its achieved rate
(payments sent per second of the run, from the simulation's report) is within 1 %
of the requested one, and every payment was followed to a success (its delivery
confirmed, then initiated, forwarded, processed and completed seen on Kafka) within
``FOLLOW_SECONDS`` after the last send. Each round climbs the ladder until a rate
fails; ``kafka_channel.max_rate`` is the median over the rounds of the highest rate
passed. The emulator's own limit shows in the detail (its CPU share).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.benchmarks.common import (
    EmulatorProcess,
    Reporter,
    Result,
    arguments,
    banner,
    fmt,
    process_cpu_seconds,
)
from tests.benchmarks.daemon import TwinDaemon
from tests.support.broker import TansuBroker
from tests.support.ports import wait_for

LADDER = (200, 500, 1000, 2000, 3000)
QUICK_LADDER = (50,)
TARGET = 2000.0
FOLLOW_SECONDS = 30.0
TOLERANCE = 0.01


@dataclass
class Step:
    rate: float
    planned: int
    sent: int
    dropped: int
    achieved: float
    succeeded: int
    other_outcomes: dict[str, int]
    followed_in: float | None  # seconds after the last send until all finished
    twin_share: float
    emulator_share: float

    @property
    def passed(self) -> bool:
        return (self.dropped == 0 and self.sent == self.planned
                and abs(self.achieved - self.rate) / self.rate <= TOLERANCE
                and self.succeeded == self.planned)

    def describe(self) -> str:
        followed = f"all followed {self.followed_in:.1f} s after the last send" \
            if self.followed_in is not None else \
            f"only {self.succeeded} succeeded within {FOLLOW_SECONDS:g} s ({self.other_outcomes})"
        return (f"{self.rate:g}/s: {'pass' if self.passed else 'FAIL'}; achieved "
                f"{fmt(self.achieved)}/s, sent {self.sent}/{self.planned}, dropped "
                f"{self.dropped}; {followed}; twin {self.twin_share * 100:.0f}% of a core, "
                f"emulator {self.emulator_share * 100:.0f}%")


def run_step(twin: TwinDaemon, emulator: EmulatorProcess, rate: float,
             seconds: float) -> Step:
    count = max(2, round(rate * seconds))
    cpu0, emu0, wall0 = twin.cpu_seconds(), process_cpu_seconds(emulator.pid), time.monotonic()
    simulation = twin.simulate(rate, count, channel="kafka", name=f"kafka-{rate:g}")
    detail = twin.wait_dispatched(simulation, timeout=seconds * 4 + 60)
    sent_at = time.monotonic()
    sent = int(detail["sendLag"]["count"])
    achieved = sent / (detail["results"].get("sendingSeconds") or float("nan"))

    def finished() -> dict[str, object] | None:
        found = twin.simulation(simulation)
        return found if found["progress"]["finished"] >= sent else None

    followed_in: float | None
    try:
        detail = wait_for(finished, timeout=FOLLOW_SECONDS, interval=0.25,
                          message="every payment followed")
        followed_in = time.monotonic() - sent_at
    except TimeoutError:
        detail = twin.simulation(simulation)
        followed_in = None
    wall = time.monotonic() - wall0
    outcomes = dict(detail["outcomes"])
    return Step(rate=rate, planned=count, sent=sent, dropped=int(detail["progress"]["dropped"]),
                achieved=achieved, succeeded=int(outcomes.pop("success", 0)),
                other_outcomes=outcomes, followed_in=followed_in,
                twin_share=(twin.cpu_seconds() - cpu0) / wall,
                emulator_share=(process_cpu_seconds(emulator.pid) - emu0) / wall)


def main(argv: Sequence[str] | None = None) -> int:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--seconds", type=float, help="seconds per rate (default 4)")
        parser.add_argument("--rounds", type=int, help="rounds (default 3)")
        parser.add_argument("--rates", help="comma-separated ladder instead of the default")

    args = arguments(__doc__.splitlines()[0], argv, extra)
    reporter = Reporter(args.results)
    seconds = args.seconds or (1.0 if args.quick else 4.0)
    rounds = args.rounds or (1 if args.quick else 3)
    rates = tuple(float(r) for r in args.rates.split(",")) if args.rates else \
        (QUICK_LADDER if args.quick else LADDER)
    banner(f"Kafka channel against bgmock-twin emulate on Tansu: "
           f"{'/'.join(f'{r:g}' for r in rates)} per s, {seconds:g} s per rate, "
           f"{rounds} round(s)")
    best: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as tmp:
        workdir = Path(tmp)
        broker = TansuBroker(workdir)
        broker.start()
        try:
            with EmulatorProcess(workdir, kafka=broker.bootstrap) as emulator, \
                    TwinDaemon(workdir, emulator.urls, kafka=broker.bootstrap) as twin:
                run_step(twin, emulator, rates[0], 0.5)  # warm-up: producer, topics
                for _ in range(rounds):
                    passed = 0.0
                    for rate in rates:
                        step = run_step(twin, emulator, rate, seconds)
                        reporter.note(step.describe())
                        if not step.passed:
                            break
                        passed = rate
                    best.append(passed)
        finally:
            broker.stop()
    value = statistics.median(best)
    reporter.emit(Result(
        "kafka_channel.max_rate", value, "payments/s", f">= {TARGET:,.0f}/s", value >= TARGET,
        f"median over {rounds} rounds of the highest rate produced, confirmed and followed "
        f"with none dropped ({', '.join(f'{b:g}' for b in best)}); ladder "
        f"{'/'.join(f'{r:g}' for r in rates)}, {seconds:g} s per rate"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
