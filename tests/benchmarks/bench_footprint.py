"""Footprint: idle CPU with the default schedule, RSS after 100,000 tracked payments,
and ``/metrics`` scrape time of a busy twin.

- Idle CPU: ``bgmock-twin run`` (embedded: the emulator runs inside the daemon, on
  the in-process bus) with every setting at its default, so the default schedule
  applies (probes every 10 s, the 0.2/s background canary, deadlines every second,
  lag every 15 s, reconciliation every 30 s, provisioning every 60 s). After it is
  ready and provisioned, its CPU seconds (every thread, ``/proc/<pid>/stat``) are
  read over the idle window.
- Scrape time: the same daemon made busy with a 100 payments/s simulation, then
  ``GET /metrics`` N times over one keep-alive connection (a tenth of a second
  apart, under the control API's rate limit); median and p95.
- RSS: driving 100,000 payments through the emulator takes far too long on this
  machine, so the tracker and ledger are driven in a fresh process with synthetic
  events: each payment is registered (half REST, half Kafka channel), its four
  events go through ``decode_event`` and ``Tracker.on_event`` (and REST payments
  are settled), with the ledger writing to an SQLite file and catching up after
  every thousand payments (as when events arrive over time). VmRSS is read once
  the ledger stored everything; VmHWM is the peak. A second run leaves all 100,000 in
  flight (seen initiated, never completed) - the worst case of a stalled BGMock.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import requests

from bgmock_twin.contract import Status
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
from tests.support.ports import free_port, wait_for

SCRAPE_RATE = 100  # payments/s of the busy twin


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
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def idle_and_scrape(reporter: Reporter, idle_seconds: float, scrapes: int,
                    settle_seconds: float) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp, \
            default_daemon(Path(tmp)) as (process, url):
        time.sleep(settle_seconds)  # the first runs of every job happen at start
        cpu0, t0 = process_cpu_seconds(process.pid), time.monotonic()
        time.sleep(idle_seconds)
        cpu1, t1 = process_cpu_seconds(process.pid), time.monotonic()
        share = (cpu1 - cpu0) / (t1 - t0)
        rss = memory_kib(process.pid)
        reporter.emit(Result(
            "footprint.idle_cpu", share * 100, "% of one core",
            detail=f"{cpu1 - cpu0:.2f} CPU s over {t1 - t0:.0f} s idle, default schedule, "
                   f"embedded emulator in the same process; RSS {rss['VmRSS'] / 1024:.0f} MiB"))

        session = requests.Session()
        answer = session.post(url + "/api/v1/simulations", json={
            "count": int(SCRAPE_RATE * (settle_seconds + scrapes * 0.1 + 30)),
            "rate": SCRAPE_RATE, "name": "bench-scrape"}, timeout=10)
        answer.raise_for_status()
        time.sleep(settle_seconds)
        # a fresh keep-alive connection (the server closes idle ones after a few
        # seconds), opened by one untimed scrape; the timed ones follow 0.1 s apart
        session.close()
        session = requests.Session()
        session.get(url + "/metrics", timeout=10).raise_for_status()
        durations = []
        size = 0
        for _ in range(scrapes):
            started = time.perf_counter()
            response = session.get(url + "/metrics", timeout=10)
            durations.append(time.perf_counter() - started)
            response.raise_for_status()
            size = len(response.content)
            time.sleep(0.1)
        series = sum(1 for line in response.text.splitlines()
                     if line and not line.startswith("#"))
        status = session.get(url + "/api/v1/status", timeout=10).json()["payments"]
        reporter.emit(Result(
            "footprint.metrics_scrape_median", percentile(durations, 50) * 1e3, "ms",
            detail=f"p95 {percentile(durations, 95) * 1e3:.1f} ms, max "
                   f"{max(durations) * 1e3:.1f} ms over {scrapes} scrapes; {size / 1024:.0f} KiB, "
                   f"{series} series; twin busy with a {SCRAPE_RATE}/s simulation "
                   f"({status['submitted']} submitted, {status['inFlight']} in flight)"))


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
        parser.add_argument("--idle-seconds", type=float, help="idle window (default 60)")
        parser.add_argument("--rss-child", choices=("finished", "in_flight"),
                            help=argparse.SUPPRESS)

    args = arguments(__doc__.splitlines()[0], argv, extra)
    count = args.payments or (500 if args.quick else 100_000)
    if args.rss_child:
        print(json.dumps(rss_child(args.rss_child, count)))
        return 0
    reporter = Reporter(args.results)
    idle = args.idle_seconds or (2.0 if args.quick else 60.0)
    banner(f"footprint: idle {idle:g} s, {count:,} tracked payments")
    idle_and_scrape(reporter, idle, scrapes=5 if args.quick else 100,
                    settle_seconds=0.5 if args.quick else 5.0)
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
