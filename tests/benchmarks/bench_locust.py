"""Side by side with Locust at the same rate: HTTP requests per CPU second of the
twin vs of Locust's FastHttpUser (and HttpUser), against one ``bgmock-twin emulate``.

The emulator runs in its own process (on Tansu by default, so the twin follows each
payment's events as in production). In each round, first ``bgmock-twin run`` (its
own process, driven through its control API) sends payments at the twin's rate as a
constant-rate simulation; its CPU seconds (``/proc``) and the HTTP requests it made
(``bgmock_rest_requests_total`` on its ``/metrics``: the POSTs and every GET it needed)
are read over the steady window. Then Locust headless posts the same
``POST /bank/transaction/outgoing`` with the twin's accounts at the same request
rate (``constant_throughput`` per user, not flat out), its CPU sampled inside its own
process over the steady window. Rounds alternate (twin, Locust, twin, Locust, ...);
``locust.ratio_per_request`` is the median over the rounds of twin requests per CPU
second ÷ Locust FastHttpUser requests per CPU second (>= 1.0: the twin is the
cheaper generator per request). The twin's CPU also pays for following the events,
its ledger and its API; Locust's only for its requests.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.benchmarks.common import (
    EmulatorProcess,
    Reporter,
    Result,
    arguments,
    banner,
    clean_env,
    fmt,
    process_cpu_seconds,
)
from tests.benchmarks.daemon import TwinDaemon, metric_total
from tests.support.broker import TansuBroker

LOCUSTFILE = Path(__file__).with_name("locustfile_bank.py")
USERS = 64  # the twin's default TWIN_MAX_IN_FLIGHT_REQUESTS
CLASSES = {"fast": "FastHttpUser", "http": "HttpUser"}
ACCOUNTS_PER_BANK = 4  # the twin's default TWIN_ACCOUNTS_PER_BANK


@dataclass
class LocustFigures:
    user_class: str
    requests: int
    failures: int
    rate: float            # requests/s over the steady window
    per_core: float        # requests per CPU second of the Locust process
    cpu_share: float
    emulator_share: float
    errors: str = ""       # Locust's error report, its first lines


def error_report(log: str) -> str:
    """The first entries of the last error report in a Locust log ('' without one)."""
    head = log.rfind("Error report")
    if head < 0:
        return ""
    lines = [line.strip() for line in log[head:].splitlines()[1:]]
    entries = [line for line in lines if line and line[0].isdigit()]
    return "; ".join(entries[:2])


@dataclass
class TwinFigures:
    payments_rate: float   # payments/s asked
    rate: float            # HTTP requests/s over the steady window
    per_core: float        # HTTP requests per CPU second of the twin
    payments_per_core: float
    cpu_share: float
    emulator_share: float


def twin_payers(emulator: EmulatorProcess) -> dict[str, list[list[str]]]:
    """The twin's payer accounts and its payees' bankgood numbers (its naming, as
    provisioned with the default settings), checked against the emulator's REST."""
    urls = emulator.urls
    payers: dict[str, list[list[str]]] = {}
    for bank, letter, other in (("bank_a", "A", "B"), ("bank_b", "B", "A")):
        accounts = [f"TWIN-{letter}-{n:03d}" for n in range(1, ACCOUNTS_PER_BANK + 1)]
        payees = [f"TWIN-BG-{other}-{n:03d}" for n in range(1, ACCOUNTS_PER_BANK + 1)]
        for account in accounts:
            requests.get(f"{urls[bank]}/bank/account/{account}", timeout=10).raise_for_status()
        for payee in payees:
            requests.get(f"{urls['clearing']}/clearing/bank-mapping/{payee}",
                         timeout=10).raise_for_status()
        payers[urls[bank]] = [[a, p] for a in accounts for p in payees]
    return payers


def run_twin(twin: TwinDaemon, emulator: EmulatorProcess, rate: float, seconds: float,
             warmup: float) -> TwinFigures:
    simulation = twin.simulate(rate, max(2, round(rate * (seconds + warmup + 0.5))),
                               name="bench-locust")
    time.sleep(warmup)
    req0, cpu0 = metric_total(twin.metrics(), "bgmock_rest_requests_total"), twin.cpu_seconds()
    emu0, t0 = process_cpu_seconds(emulator.pid), time.monotonic()
    time.sleep(seconds)
    req1, cpu1 = metric_total(twin.metrics(), "bgmock_rest_requests_total"), twin.cpu_seconds()
    emu1, t1 = process_cpu_seconds(emulator.pid), time.monotonic()
    twin.wait_dispatched(simulation, timeout=seconds * 4 + 60)
    cpu = max(cpu1 - cpu0, 1e-9)
    return TwinFigures(payments_rate=rate, rate=(req1 - req0) / (t1 - t0),
                       per_core=(req1 - req0) / cpu, payments_per_core=rate * (t1 - t0) / cpu,
                       cpu_share=cpu / (t1 - t0), emulator_share=(emu1 - emu0) / (t1 - t0))


def run_locust(workdir: Path, emulator: EmulatorProcess, payers: dict[str, list[list[str]]],
               user_class: str, rate: float, seconds: float, warmup: float) -> LocustFigures:
    samples = workdir / f"locust-{user_class}-{time.monotonic_ns()}.samples"
    log = workdir / f"locust-{user_class}-{time.monotonic_ns()}.log"
    env = clean_env(BENCH_LOCUST_PAYERS=json.dumps(payers), BENCH_LOCUST_CLASS=user_class,
                    BENCH_LOCUST_SAMPLES=str(samples), BENCH_LOCUST_RATE=f"{rate:g}",
                    BENCH_LOCUST_USERS=str(USERS))
    total = math.ceil(seconds + warmup + 1)
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
               "-u", str(USERS), "-r", str(USERS), "-t", f"{total}s", "--only-summary",
               "--stop-timeout", "2", "--loglevel", "WARNING"]
    emulator0 = process_cpu_seconds(emulator.pid)
    started = time.monotonic()
    with log.open("ab") as out:
        completed = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   timeout=total + 120, check=False)
    wall = time.monotonic() - started
    emulator_share = (process_cpu_seconds(emulator.pid) - emulator0) / wall
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
        cpu_share=(cpu1 - cpu0) / (t1 - t0), emulator_share=emulator_share,
        errors=error_report(log.read_text(errors="replace")) if f1 else "")


def main(argv: Sequence[str] | None = None) -> int:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--bus", choices=("kafka", "memory"),
                            help="the emulator's event bus (default kafka; quick: memory)")
        parser.add_argument("--seconds", type=float,
                            help="steady seconds per generator and round (default 10)")
        parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3)")
        parser.add_argument("--twin-rate", type=float, default=0.0,
                            help="the twin's payments/s (the highest rate it kept within 1%%; "
                                 "default 200)")

    args = arguments(__doc__.splitlines()[0], argv, extra)
    reporter = Reporter(args.results)
    seconds = args.seconds or (2.0 if args.quick else 10.0)
    rounds = args.rounds or (1 if args.quick else 3)
    warmup = 0.5 if args.quick else 2.0
    rate = args.twin_rate if args.twin_rate > 0 else (50.0 if args.quick else 200.0)
    classes = ("fast",) if args.quick else ("fast", "http")
    bus_name = args.bus or ("memory" if args.quick else "kafka")
    banner(f"twin vs Locust at the same rate against one bgmock-twin emulate ({bus_name} bus): "
           f"twin at {rate:g} payments/s, {rounds} interleaved round(s) of {seconds:g} s")
    twins: list[TwinFigures] = []
    locusts: dict[str, list[LocustFigures]] = {c: [] for c in classes}
    with tempfile.TemporaryDirectory(prefix="bench-locust-") as tmp:
        workdir = Path(tmp)
        broker = TansuBroker(workdir) if bus_name == "kafka" else None
        if broker is not None:
            broker.start()
        try:
            kafka = broker.bootstrap if broker is not None else None
            with EmulatorProcess(workdir, kafka=kafka) as emulator, \
                    TwinDaemon(workdir, emulator.urls, kafka=kafka) as twin:
                payers = twin_payers(emulator)
                run_twin(twin, emulator, min(rate, 50.0), 0.5, 0.2)  # warm-up
                for _ in range(rounds):
                    t = run_twin(twin, emulator, rate, seconds, warmup)
                    twins.append(t)
                    reporter.note(
                        f"twin: {fmt(t.rate)} HTTP requests/s at {t.payments_rate:g} payments/s, "
                        f"{fmt(t.per_core)} requests/CPU-s (twin {t.cpu_share * 100:.0f}% of a "
                        f"core, emulator {t.emulator_share * 100:.0f}%)")
                    for user_class in classes:
                        lo = run_locust(workdir, emulator, payers, user_class, t.rate, seconds,
                                        warmup)
                        locusts[user_class].append(lo)
                        reporter.note(
                            f"Locust {lo.user_class}: {fmt(lo.rate)} requests/s (asked "
                            f"{fmt(t.rate)}), {fmt(lo.per_core)} requests/CPU-s, {lo.failures} "
                            f"failures, Locust {lo.cpu_share * 100:.0f}% of a core, emulator "
                            f"{lo.emulator_share * 100:.0f}%"
                            + (f"; errors: {lo.errors}" if lo.errors else ""))
        finally:
            if broker is not None:
                broker.stop()
    twin_per_core = statistics.median(t.per_core for t in twins)
    twin_payments = statistics.median(t.payments_per_core for t in twins)
    reporter.emit(Result(
        "locust.twin_payments_per_core", twin_payments, "payments/CPU-s",
        detail=f"{fmt(twin_per_core)} HTTP requests/CPU-s; at {rate:g} payments/s, sender + "
               f"follower + ledger + status checks; median over {rounds} rounds"))
    for user_class in classes:
        runs = locusts[user_class]
        key = CLASSES[user_class].lower()
        per_core = statistics.median(lo.per_core for lo in runs)
        reporter.emit(Result(
            f"locust.{key}_requests_per_core", per_core, "requests/CPU-s",
            detail=f"median over {rounds} rounds at the twin's request rate "
                   f"({', '.join(fmt(lo.rate) for lo in runs)} requests/s achieved), "
                   f"-u {USERS}"))
        ratios = [t.per_core / lo.per_core for t, lo in zip(twins, runs, strict=True)]
        if user_class == "fast":
            value = statistics.median(ratios)
            reporter.emit(Result(
                "locust.ratio_per_request", value, "x", ">= 1.0", value >= 1.0,
                f"twin HTTP requests per CPU-s ÷ Locust FastHttpUser requests per CPU-s at "
                f"the same rate, median over {rounds} interleaved rounds "
                f"({', '.join(f'{r:.2f}' for r in ratios)}); twin {fmt(twin_per_core)}, "
                f"Locust {fmt(per_core)} requests/CPU-s"))
        reporter.emit(Result(
            f"locust.ratio_twin_vs_{key}", twin_payments / per_core, "x",
            detail=f"twin payments/core ÷ Locust {CLASSES[user_class]} requests/core (the old "
                   f"figure); per request: {statistics.median(ratios):.2f}x"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
