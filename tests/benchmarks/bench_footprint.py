"""Footprint: idle CPU with the default schedule, ``/metrics`` scrape time of a twin
sending 1,000 payments/s, and RSS of a twin with 1M finished payments in its ledger
and 100k in flight.

- Idle CPU (``idle.cpu_share``): ``bgmock-twin run`` (embedded: the emulator runs
  inside the daemon, on the in-process bus) with every setting at its default, so
  the default schedule applies (probes every 10 s, the 0.2/s background canary,
  deadlines every second, lag every 15 s, reconciliation every 30 s, provisioning
  every 60 s). After it is ready and provisioned, its CPU seconds (every thread,
  ``/proc/<pid>/stat``) are read over three idle windows; the median share.
- Scrape time (``scrape.p99_seconds``): ``bgmock-twin run`` against the fast sink
  (``sink.py``, its own process; the twin following an empty Tansu) with a 1,000
  payments/s simulation; ``GET /metrics``
  every 50 ms over one keep-alive connection (under the control API's rate limit),
  three rounds; the median of the rounds' p99. The old median figure
  (``footprint.metrics_scrape_median``) is taken from the same scrapes.
- RSS (``footprint.rss_bytes_1m``): a ledger made by the twin itself (a daemon sends
  a thousand payments to the sink that settle, then a thousand that stay PENDING and
  is stopped), each set copied in bulk inside the SQLite file (fresh payment and
  transaction ids) to 1M finished and 100k in flight; then ``bgmock-twin run`` starts
  on it (payment SLA of an hour so nothing in flight is given up, retention above
  the rows held), resumes following the 100k, and its VmRSS is read once it settled.
- RSS of the tracker alone (``footprint.rss_finished``/``rss_in_flight``, the old
  figures): the tracker and ledger are driven in a fresh process with synthetic
  events: each payment is registered (half REST, half Kafka channel), its four
  events go through ``decode_event`` and ``Tracker.on_event`` (and REST payments
  are settled), with the ledger writing to an SQLite file and catching up after
  every thousand payments. VmRSS is read once the ledger stored everything; VmHWM
  is the peak. A second run leaves all 100,000 in flight.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import requests

from bgmock_twin.contract import Status
from tests.benchmarks import ledger_fill
from tests.benchmarks.common import (
    Reporter,
    Result,
    arguments,
    banner,
    clean_env,
    memory_kib,
    percentile,
    process_cpu_seconds,
)
from tests.benchmarks.daemon import SinkProcess, TwinDaemon, sink_twin
from tests.support.ports import free_port, wait_for
from tests.support.processes import stop_process

SCRAPE_RATE = 1000  # payments/s of the busy twin
SCRAPE_INTERVAL = 0.05


@contextmanager
def default_daemon(workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``bgmock-twin run`` with default settings but a free port (cwd: its SQLite ledger)."""
    port = free_port()
    log_path = workdir / "daemon.log"
    env = clean_env(TWIN_LISTEN_PORT=str(port), TWIN_LOG_FORMAT="json")
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "bgmock_twin", "run"], env=env,
                                   cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        def provisioned() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"daemon exited: {log_path.read_text()[-2000:]}")
            status = requests.get(url + "/api/v1/status", timeout=2)
            return status.status_code == 200 and \
                bool(status.json().get("payments", {}).get("provisioned"))

        wait_for(provisioned, timeout=60, interval=0.2, message="daemon provisioned")
        yield process, url
    finally:
        stop_process(process, grace=20)


def idle(reporter: Reporter, windows: int, seconds: float, settle_seconds: float) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp, \
            default_daemon(Path(tmp)) as (process, _url):
        time.sleep(settle_seconds)  # the first runs of every job happen at start
        shares, used = [], 0.0
        for _ in range(windows):
            cpu0, t0 = process_cpu_seconds(process.pid), time.monotonic()
            time.sleep(seconds)
            cpu1, t1 = process_cpu_seconds(process.pid), time.monotonic()
            shares.append((cpu1 - cpu0) / (t1 - t0))
            used += cpu1 - cpu0
        share = statistics.median(shares)
        rss = memory_kib(process.pid)
        detail = (f"median of {windows} windows of {seconds:g} s "
                  f"({', '.join(f'{x * 100:.2f}%' for x in shares)}); {used:.2f} CPU s in all; "
                  f"default schedule, embedded emulator in the same process; RSS "
                  f"{rss['VmRSS'] / 1024:.0f} MiB")
        reporter.emit(Result("idle.cpu_share", share, "of one core", "< 0.01", share < 0.01,
                             detail))
        reporter.emit(Result("footprint.idle_cpu", share * 100, "% of one core", detail=detail))


def scrape(reporter: Reporter, rounds: int, scrapes: int, settle_seconds: float) -> None:
    """``GET /metrics`` every 50 ms of a twin sending ``SCRAPE_RATE``/s to the sink."""
    with tempfile.TemporaryDirectory(prefix="bench-scrape-") as tmp, \
            sink_twin(Path(tmp)) as (twin, sink):
        p99s, everything = [], []
        for _ in range(rounds):
            seconds = settle_seconds + scrapes * SCRAPE_INTERVAL
            sink.reset()
            busy = twin.simulate(SCRAPE_RATE, round(SCRAPE_RATE * (seconds + 1)),
                                 name="bench-scrape")
            time.sleep(settle_seconds)
            cpu0 = twin.cpu_seconds()
            with requests.Session() as session:
                session.get(twin.url + "/metrics", timeout=10).raise_for_status()
                durations, began = [], time.monotonic()
                for i in range(scrapes):
                    time.sleep(max(0.0, began + i * SCRAPE_INTERVAL - time.monotonic()))
                    started = time.perf_counter()
                    response = session.get(twin.url + "/metrics", timeout=10)
                    durations.append(time.perf_counter() - started)
                    response.raise_for_status()
                wall = time.monotonic() - began
            share = (twin.cpu_seconds() - cpu0) / wall
            arrivals = sink.arrivals()
            window = [t for t in arrivals if began <= t <= began + wall]
            p99s.append(percentile(durations, 99))
            everything.extend(durations)
            reporter.note(
                f"round: {scrapes} scrapes p50 {percentile(durations, 50) * 1e3:.1f} ms p99 "
                f"{p99s[-1] * 1e3:.1f} ms max {max(durations) * 1e3:.1f} ms; the twin sent "
                f"{len(window) / wall:.0f}/s to the sink while scraped ({share * 100:.0f}% "
                f"of a core); {len(response.content) / 1024:.0f} KiB")
            twin.stop_simulation(busy)
            time.sleep(settle_seconds)
        p99 = statistics.median(p99s)
        reporter.emit(Result(
            "scrape.p99_seconds", p99, "s", "< 0.050 s", p99 < 0.050,
            f"median over {rounds} rounds of the p99 of {scrapes} scrapes 50 ms apart "
            f"({', '.join(f'{x * 1e3:.1f} ms' for x in p99s)}) while the twin was asked "
            f"for {SCRAPE_RATE}/s against the sink"))
        reporter.emit(Result(
            "footprint.metrics_scrape_median", percentile(everything, 50) * 1e3, "ms",
            detail=f"p95 {percentile(everything, 95) * 1e3:.1f} ms over {len(everything)} "
                   f"scrapes of a twin asked for {SCRAPE_RATE}/s"))


def rss_big_ledger(reporter: Reporter, finished: int, in_flight: int, template: int,
                   settle_seconds: float) -> None:
    """``bgmock-twin run`` on a ledger of ``finished`` settled payments and ``in_flight``
    unfinished ones, which it resumes following (the sink keeps them PENDING)."""
    with tempfile.TemporaryDirectory(prefix="bench-rss-1m-") as tmp:
        workdir = Path(tmp)
        ledger, made = ledger_fill.fill(workdir, finished, in_flight, template, rate=200)
        reporter.note(f"ledger: {made}")
        with SinkProcess(workdir, "--status", "PENDING") as sink:
            twin = TwinDaemon(workdir, sink.urls, database_url=f"sqlite:///{ledger}",
                              **ledger_fill.twin_env())
            began = time.monotonic()
            with twin.start(timeout=900):
                ready = time.monotonic() - began
                time.sleep(settle_seconds)
                rss = twin.rss_bytes()
                peak = memory_kib(twin.pid)["VmHWM"] * 1024
                tracked = twin.status()["payments"]["inFlight"]
        reporter.emit(Result(
            "footprint.rss_bytes_1m", rss, "bytes", "< 250 MB", rss < 250e6,
            f"{rss / 1e6:.0f} MB (peak {peak / 1e6:.0f} MB) {settle_seconds:g} s after "
            f"bgmock-twin run was ready ({ready:.0f} s to start) on a ledger of {made}; "
            f"{tracked:,} in flight by its status"))


# --- RSS after N tracked payments (in a fresh child process) --------------------------------
def rss_child(scenario: str, count: int) -> dict[str, float]:
    from bgmock_twin.bus.base import Record
    from bgmock_twin.contract import decode_event
    from bgmock_twin.logs import configure_logging
    from bgmock_twin.tracking.ledger import Ledger
    from bgmock_twin.tracking.lifecycle import Channel
    from bgmock_twin.tracking.tracker import Tracker
    from tests.benchmarks.bench_events import make_flows

    configure_logging("ERROR", "json")
    with tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp:
        ledger = Ledger(f"sqlite:///{tmp}/ledger.db", buffer_size=100_000)
        assert ledger.open()
        ledger.start()
        # as Tracking builds it (park_seconds = the default REST timeout + 2)
        tracker = Tracker(ledger, step_deadline=10, sla=30, park_seconds=7)
        gc.collect()
        baseline = memory_kib()["VmRSS"]
        rng = random.Random(11)
        started = time.monotonic()
        steps = 1 if scenario == "in_flight" else 4
        done = 0
        while done < count:
            batch = make_flows(min(1000, count - done), rng)
            for flow in batch:
                payment = flow.payment
                if payment is None:  # foreign flows are not tracked: make every one the twin's
                    continue
                tracker.register(payment)
                if payment.channel is Channel.REST:
                    tracker.accepted(payment.payment_id, flow.transaction_id)
                for topic, key, value, headers in flow.records[:steps]:
                    record = Record(topic, 0, 0, key.encode(), value, tuple(headers.items()))
                    tracker.on_event(record, decode_event(topic, value))
                if steps == 4 and payment.channel is Channel.REST:
                    tracker.settle(payment.payment_id, Status.SUCCESS)
                done += 1
            # as in a running twin, the ledger keeps up (events arrive over time); fed
            # flat out, its buffer of unwritten rows would be what is measured
            ledger.flush(600)
        fed = time.monotonic() - started
        if not ledger.flush(600):
            raise RuntimeError("the ledger did not store everything")
        del batch
        gc.collect()
        memory = memory_kib()
        counts = tracker.counts()
        ledger.stop(30)
        ledger.close()
    return {"baseline_kib": baseline, "rss_kib": memory["VmRSS"], "peak_kib": memory["VmHWM"],
            "payments": done, "in_flight": counts.in_flight, "seconds": fed}


def run_rss_child(scenario: str, count: int) -> dict[str, float]:
    completed = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks.bench_footprint", "--rss-child", scenario,
         "--payments", str(count)], capture_output=True, text=True, timeout=1800, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"RSS child failed: {completed.stderr[-2000:]}")
    result: dict[str, float] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--payments", type=int, help="tracked payments (default 100,000)")
        parser.add_argument("--idle-seconds", type=float, help="idle window (default 20, three of them)")
        parser.add_argument("--rss-child", choices=("finished", "in_flight"),
                            help=argparse.SUPPRESS)

    args = arguments(__doc__.splitlines()[0], argv, extra)
    count = args.payments or (500 if args.quick else 100_000)
    if args.rss_child:
        print(json.dumps(rss_child(args.rss_child, count)))
        return 0
    reporter = Reporter(args.results)
    idle_seconds = args.idle_seconds or (2.0 if args.quick else 20.0)
    banner(f"footprint: idle windows of {idle_seconds:g} s, {count:,} tracked payments")
    idle(reporter, windows=1 if args.quick else 3, seconds=idle_seconds,
         settle_seconds=0.5 if args.quick else 5.0)
    scrape(reporter, rounds=1 if args.quick else 3, scrapes=20 if args.quick else 200,
           settle_seconds=0.5 if args.quick else 2.0)
    rss_big_ledger(reporter, finished=2_000 if args.quick else 1_000_000,
                   in_flight=200 if args.quick else 100_000,
                   template=100 if args.quick else 1_000,
                   settle_seconds=1.0 if args.quick else 10.0)
    for scenario, what in (("finished", "all finished"), ("in_flight", "all in flight")):
        figures = run_rss_child(scenario, count)
        reporter.emit(Result(
            f"footprint.rss_{scenario}",
            figures["rss_kib"] / 1024, "MiB",
            detail=f"after {int(figures['payments']):,} tracked payments, {what} "
                   f"({int(figures['in_flight']):,} in flight); peak "
                   f"{figures['peak_kib'] / 1024:.0f} MiB; "
                   f"{figures['baseline_kib'] / 1024:.0f} MiB before the first payment; "
                   f"synthetic events through decode_event + Tracker, in-process, "
                   f"{figures['seconds']:.0f} s to feed"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
