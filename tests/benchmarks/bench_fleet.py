"""Fleet: the achieved rate of one simulation run by 1, 2 and 3 replicas.

For each fleet size, that many real ``bgmock-twin run`` processes share one fresh
PostgreSQL ledger and send to one fast BGMock (``tests.benchmarks.sink`` when it
exists, else ``bgmock-twin emulate`` without Kafka, and the result says which). A
simulation of ``rate x seconds`` payments is posted to the first replica at a rate
above what one replica keeps; the fleet's achieved rate is the payments the fleet
sent per second between the first and the last POST the sink received (against the
emulator, which keeps no arrival times: dispatched per second of the simulation's
sending time, as the API reports it). Printed as ``fleet.rate_1``, ``fleet.rate_2``,
``fleet.rate_3`` with each replica's share and the drop count.

On a machine with few cores the replicas, the target and PostgreSQL share the same
cores: the figures then show where the cores, not the design, stop the scaling.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import requests

from tests.benchmarks.common import Reporter, Result, arguments, banner
from tests.support.daemon import Daemon, running_daemon
from tests.support.emulator_process import running_emulator
from tests.support.ports import wait_for
from tests.support.postgres import PostgresServer


@contextmanager
def target(workdir: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The BGMock the replicas send to: its name and the settings pointing at it."""
    if importlib.util.find_spec("tests.benchmarks.sink") is not None:
        process = subprocess.Popen([sys.executable, "-m", "tests.benchmarks.sink"],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert process.stdout is not None
            ports = json.loads(process.stdout.readline())
            urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
            yield "sink", {"BANK_A_URL": urls["bank_a"], "BANK_B_URL": urls["bank_b"],
                           "CLEARING_SERVICE_URL": urls["clearing"], "TWIN_MODE": "external"}
        finally:
            process.terminate()
            process.wait(10)
        return
    with running_emulator(workdir) as bgmock:
        yield "emulator", bgmock.external_env()


def sink_rate(bgmock: dict[str, str]) -> float | None:
    """Payments per second between the first and last POST the sink received."""
    stats = requests.get(f"{bgmock['BANK_A_URL']}/_sink/stats", timeout=10).json()
    times = sorted(stats["times"])
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else None


def run_fleet(size: int, rate: float, seconds: float, postgres: PostgresServer,
              bgmock: dict[str, str], workdir: Path, sink: bool,
              fleet: str = "auto") -> dict[str, Any]:
    ledger = postgres.create_database("bench_fleet")
    with ExitStack() as stack:
        twins: list[Daemon] = []
        for i in range(size):
            (workdir / f"r{size}-{i}").mkdir()
            twins.append(stack.enter_context(running_daemon(
                workdir / f"r{size}-{i}", TWIN_INSTANCE_ID=f"bench-{i}",
                TWIN_DATABASE_URL=ledger, TWIN_LOAD_RATE="0", TWIN_LOG_LEVEL="WARNING",
                TWIN_MAX_IN_FLIGHT_REQUESTS="256", TWIN_FLEET=fleet, **bgmock)))
        wait_for(lambda: all(t.get("/api/v1/status").json()["payments"]["provisioned"]
                             for t in twins), timeout=90, interval=0.5, message="provisioned")
        time.sleep(3)  # every replica's lease seen by the others
        count = int(rate * seconds)
        if sink:
            requests.post(f"{bgmock['BANK_A_URL']}/_sink/reset", timeout=10).raise_for_status()
        answer = twins[0].post("/api/v1/simulations", json={"count": count, "rate": rate})
        answer.raise_for_status()
        sim_id = answer.json()["id"]

        def all_out() -> dict[str, Any] | None:
            detail: dict[str, Any] = twins[0].get(f"/api/v1/simulations/{sim_id}").json()
            handled = sum(s["dispatched"] + s["dropped"] for s in detail["shares"])
            return detail if handled >= count else None

        detail = wait_for(all_out, timeout=seconds * 4 + 60, interval=0.2, message="all out")
        sending = detail["results"]["sendingSeconds"] or seconds
        shares = {s["instanceId"]: s["dispatched"] for s in detail["shares"]}
        dispatched = sum(shares.values())
        time.sleep(1.0)  # the last POSTs answered
        achieved = (sink_rate(bgmock) if sink else None) or dispatched / max(sending, seconds)
        return {"achieved": achieved, "dropped": detail["dropped"],
                "shares": shares, "sending": sending, "count": count}


def main(argv: Sequence[str] | None = None) -> int:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--rate", type=float, help="requested payments/s (default 600)")
        parser.add_argument("--seconds", type=float, help="seconds of load (default 10)")
        parser.add_argument("--sizes", default="1,2,3", help="fleet sizes to run")
        parser.add_argument("--fleet-off", action="store_true",
                            help="TWIN_FLEET=off (each replica alone: for one replica, the "
                                 "fleet's own cost)")

    args = arguments(__doc__.splitlines()[0], argv, extra)
    rate = args.rate or (100.0 if args.quick else 600.0)
    seconds = args.seconds or (2.0 if args.quick else 10.0)
    reporter = Reporter(args.results)
    postgres = PostgresServer()
    postgres.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp, \
                target(Path(tmp)) as (name, bgmock):
            banner(f"fleet: {rate:g}/s for {seconds:g} s against {name}, PostgreSQL ledger")
            for size in (int(s) for s in args.sizes.split(",")):
                f = run_fleet(size, rate, seconds, postgres, bgmock, Path(tmp), name == "sink",
                              "off" if args.fleet_off else "auto")
                shares = ", ".join(f"{k} {v}" for k, v in sorted(f["shares"].items()))
                reporter.emit(Result(
                    f"fleet.rate_{size}" + ("_alone" if args.fleet_off else ""), f["achieved"], "payments/s",
                    detail=f"{size} replica(s) against {name}, requested {rate:g}/s x "
                           f"{seconds:g} s, dropped {f['dropped']}; shares: {shares}"))
    finally:
        postgres.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
