"""Fleet: the achieved rate of one simulation run by 1, 2 and 3 replicas.

For each fleet size, that many real ``bgmock-twin run`` processes share one fresh
PostgreSQL ledger and send to one fast BGMock (``tests.benchmarks.sink`` when it
exists, else ``bgmock-twin emulate`` without Kafka, and the result says which). A
simulation of ``rate x seconds`` payments is posted to the first replica at a rate
above what one replica keeps; the fleet's achieved rate is the payments the fleet
dispatched (in the ledger, every replica's) per second from the common start until
the last was due or dropped. Printed as ``fleet.rate_1``, ``fleet.rate_2``,
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

from tests.benchmarks.common import Reporter, Result, arguments, banner, fmt
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


def run_fleet(size: int, rate: float, seconds: float, postgres: PostgresServer,
              bgmock: dict[str, str], workdir: Path) -> dict[str, Any]:
    ledger = postgres.create_database("bench_fleet")
    with ExitStack() as stack:
        twins: list[Daemon] = []
        for i in range(size):
            (workdir / f"r{size}-{i}").mkdir()
            twins.append(stack.enter_context(running_daemon(
                workdir / f"r{size}-{i}", TWIN_INSTANCE_ID=f"bench-{i}",
                TWIN_DATABASE_URL=ledger, TWIN_LOAD_RATE="0", TWIN_LOG_LEVEL="WARNING",
                TWIN_MAX_IN_FLIGHT_REQUESTS="256", **bgmock)))
        wait_for(lambda: all(t.get("/api/v1/status").json()["payments"]["provisioned"]
                             for t in twins), timeout=90, interval=0.5, message="provisioned")
        time.sleep(3)  # every replica's lease seen by the others
        count = int(rate * seconds)
        answer = twins[0].post("/api/v1/simulations", json={"count": count, "rate": rate})
        answer.raise_for_status()
        sim_id = answer.json()["id"]

        def all_out() -> dict[str, Any] | None:
            detail: dict[str, Any] = twins[0].get(f"/api/v1/simulations/{sim_id}").json()
            shares = detail["shares"]
            handled = sum(s["dispatched"] + s["dropped"] for s in shares)
            return detail if handled >= count else None

        detail = wait_for(all_out, timeout=seconds * 4 + 60, interval=0.2, message="all out")
        sending = detail["results"]["sendingSeconds"] or seconds
        shares = {s["instanceId"]: s["dispatched"] for s in detail["shares"]}
        dispatched = sum(shares.values())
        return {"achieved": dispatched / max(sending, seconds), "dropped": detail["dropped"],
                "shares": shares, "sending": sending, "count": count}


def main(argv: Sequence[str] | None = None) -> int:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--rate", type=float, help="requested payments/s (default 600)")
        parser.add_argument("--seconds", type=float, help="seconds of load (default 10)")
        parser.add_argument("--sizes", default="1,2,3", help="fleet sizes to run")

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
                f = run_fleet(size, rate, seconds, postgres, bgmock, Path(tmp))
                shares = ", ".join(f"{k} {v}" for k, v in sorted(f["shares"].items()))
                reporter.emit(Result(
                    f"fleet.rate_{size}", f["achieved"], "payments/s",
                    detail=f"{size} replica(s) against {name}, requested {rate:g}/s x "
                           f"{seconds:g} s, dropped {f['dropped']}, sending "
                           f"{fmt(f['sending'])} s; shares: {shares}"))
    finally:
        postgres.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
