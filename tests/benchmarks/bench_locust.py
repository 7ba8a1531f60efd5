"""Side by side with Locust: twin REST payments/s per core vs Locust requests/s per core.

One ``bgmock-twin emulate`` (on Tansu by default) is driven first by the twin's
sender (a constant-rate simulation; the twin also follows each payment's four
events and reads its settled status, as in production), then by Locust headless
(``-u N -r N``, fixed duration, FastHttpUser and HttpUser) posting the same
``POST /bank/transaction/outgoing`` with the twin's accounts. Each load
generator's CPU seconds are read over the steady part of its run (the twin from
``getrusage`` in this process, Locust from ``getrusage`` sampled inside its own
process), so start-up and imports are left out. Per-core figure = work done per
CPU second of the generator; the ratio is twin payments per core ÷ Locust
requests per core. A twin payment is two HTTP requests (the POST and the settled
status GET) plus four Kafka events; the requests-per-core ratio is printed too.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bgmock_twin.bus.base import EventBus
from bgmock_twin.bus.kafka import KafkaBus
from bgmock_twin.bus.memory import InMemoryBus
from bgmock_twin.contract import BANK_A, BANK_B, bank_by_clearing
from bgmock_twin.logs import configure_logging
from tests.benchmarks.common import (
    Reporter,
    Result,
    arguments,
    banner,
    clean_env,
    fmt,
    process_cpu_seconds,
)
from tests.benchmarks.twin import TwinHarness
from tests.benchmarks.world import World, world

LOCUSTFILE = Path(__file__).with_name("locustfile_bank.py")
USERS = 64  # the twin's default TWIN_MAX_IN_FLIGHT_REQUESTS
CLASSES = {"fast": "FastHttpUser", "http": "HttpUser"}


@dataclass
class LocustFigures:
    user_class: str
    requests: int
    failures: int
    rate: float            # requests/s over the steady window
    per_core: float        # requests per CPU second of the Locust process
    cpu_share: float
    emulator_share: float


def locust_payers(harness: TwinHarness) -> dict[str, list[list[str]]]:
    fixtures = harness.tracking.provisioner.fixtures
    assert fixtures is not None
    urls = {BANK_A.clearing_number: harness.clients.bank_a.rest.base_url,
            BANK_B.clearing_number: harness.clients.bank_b.rest.base_url}

    def other(clearing: str) -> str:
        bank = bank_by_clearing(clearing)
        assert bank is not None
        return bank.other.clearing_number

    return {urls[c]: [[payer, payee.bankgood_number] for payer in fixtures.payers[c]
                      for payee in fixtures.payees[other(c)]] for c in urls}


def run_locust(w: World, payers: dict[str, list[list[str]]], user_class: str,
               seconds: float, warmup: float) -> LocustFigures:
    samples = w.workdir / f"locust-{user_class}.samples"
    log = w.workdir / f"locust-{user_class}.log"
    env = clean_env(BENCH_LOCUST_PAYERS=json.dumps(payers), BENCH_LOCUST_CLASS=user_class,
                    BENCH_LOCUST_SAMPLES=str(samples))
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
               "-u", str(USERS), "-r", str(USERS), "-t", f"{seconds:.0f}s", "--only-summary",
               "--stop-timeout", "2", "--loglevel", "WARNING"]
    emulator0 = process_cpu_seconds(w.emulator.pid)
    started = time.monotonic()
    with log.open("wb") as out:
        completed = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   timeout=seconds + 120, check=False)
    wall = time.monotonic() - started
    emulator_share = (process_cpu_seconds(w.emulator.pid) - emulator0) / wall
    if completed.returncode not in (0, 1):  # 1: some requests failed (reported below)
        raise RuntimeError(f"locust exited {completed.returncode}: {log.read_text()[-2000:]}")
    rows = [tuple(float(x) for x in line.split()) for line in samples.read_text().splitlines()
            if line.strip()]
    first = next(i for i, row in enumerate(rows) if row[2] > 0)
    begin = next((i for i, row in enumerate(rows) if row[0] >= rows[first][0] + warmup), first)
    end = len(rows) - 1
    if end <= begin:
        raise RuntimeError("locust ran too briefly for a steady window")
    (t0, cpu0, req0, _f0), (t1, cpu1, req1, f1) = rows[begin], rows[end]
    return LocustFigures(
        user_class=CLASSES[user_class], requests=int(req1), failures=int(f1),
        rate=(req1 - req0) / (t1 - t0), per_core=(req1 - req0) / max(cpu1 - cpu0, 1e-9),
        cpu_share=(cpu1 - cpu0) / (t1 - t0), emulator_share=emulator_share)


def main(argv: Sequence[str] | None = None) -> int:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--bus", choices=("kafka", "memory"),
                            help="the emulator's event bus (default kafka; quick: memory)")
        parser.add_argument("--seconds", type=float, help="seconds per generator (default 15)")
        parser.add_argument("--twin-rate", type=float, default=200.0,
                            help="the twin's payments/s (use the highest sustained rate)")

    args = arguments(__doc__.splitlines()[0], argv, extra)
    configure_logging("ERROR", "json")
    reporter = Reporter(args.results)
    seconds = float(math.ceil(args.seconds or (2 if args.quick else 15)))  # whole seconds
    warmup = 0.5 if args.quick else 2.0
    classes = ("fast",) if args.quick else ("fast", "http")
    bus_name = args.bus or ("memory" if args.quick else "kafka")
    banner(f"twin vs Locust against one bgmock-twin emulate ({bus_name} bus), {seconds:g} s "
           f"each, twin at {args.twin_rate:g}/s, Locust -u {USERS} -r {USERS}")
    with world(bus_name, with_twin=False) as w:
        bus: EventBus = KafkaBus(w.broker.bootstrap, session_timeout_ms=6000,
                                 client_id="bench-twin") if w.broker else InMemoryBus()
        harness = TwinHarness(w.emulator.urls, w.workdir, bus).start()
        try:
            harness.run(50, 0.5 if args.quick else 1.0)  # warm-up
            emulator0, wall0 = process_cpu_seconds(w.emulator.pid), time.monotonic()
            twin = harness.run(args.twin_rate, seconds, warmup=warmup)
            emulator_share = (process_cpu_seconds(w.emulator.pid) - emulator0) / \
                (time.monotonic() - wall0)
            payers = locust_payers(harness)
        finally:
            harness.stop()
        reporter.note(
            f"twin: {fmt(twin.achieved)} payments/s ({twin.dropped} dropped), "
            f"{twin.window_payments} payments and {twin.window_requests:.0f} HTTP requests in "
            f"{twin.window_cpu:.2f} CPU s over {twin.window_wall:.1f} s (twin "
            f"{twin.cpu_share * 100:.0f}% of a core, emulator {emulator_share * 100:.0f}%)")
        reporter.emit(Result(
            "locust.twin_payments_per_core", twin.payments_per_core, "payments/CPU-s",
            detail=f"{fmt(twin.requests_per_core)} HTTP requests/CPU-s; at {fmt(twin.achieved)}"
                   f" payments/s, sender + follower + ledger + status checks"))
        for user_class in classes:
            locust = run_locust(w, payers, user_class, seconds, warmup)
            reporter.note(
                f"Locust {locust.user_class}: {fmt(locust.rate)} requests/s, "
                f"{locust.failures} failures, Locust {locust.cpu_share * 100:.0f}% of a core, "
                f"emulator {locust.emulator_share * 100:.0f}%")
            key = locust.user_class.lower()
            reporter.emit(Result(
                f"locust.{key}_requests_per_core", locust.per_core, "requests/CPU-s",
                detail=f"{fmt(locust.rate)} requests/s with -u {USERS}, "
                       f"{locust.failures} failed of {locust.requests}"))
            reporter.emit(Result(
                f"locust.ratio_twin_vs_{key}", twin.payments_per_core / locust.per_core, "x",
                detail=f"twin payments/core ÷ Locust {locust.user_class} requests/core; "
                       f"counting the twin's HTTP requests instead: "
                       f"{twin.requests_per_core / locust.per_core:.2f}x"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
