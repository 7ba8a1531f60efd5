"""PostgreSQL ledger: payment steps recorded per second by one twin's ``Ledger``.

A ``Ledger`` on a fresh PostgreSQL database (one per round) is fed through its
public API only, as the tracker feeds it: each payment is written whole when
registered (``write_payment``), then once per step observed
(``lifecycle.observe_step`` then ``write_change``: the step appended as a narrow row,
the payment's state columns with it, all of them only when more than the furthest
step changed, by the tracker's rule ``lifecycle.only_furthest_step``), six steps per
REST payment from accepted to settled. Payments arrive in waves of a thousand, step
by step (as events do: a wave's accepted, then their initiated, ...), as fast as
this process can make them. The clock stops when ``flush`` says everything is
durable. Then what was stored is counted: the rows of every ``twin_*`` table, and
the steps of a sample of payments read back with ``Ledger.get``. The figure is steps
recorded per second. Median over three rounds, each round followed by one fed the
older way (the whole payment row written again at every step, ``write_payment``)
for comparison.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa

from bgmock_twin.contract import Status
from bgmock_twin.logs import configure_logging
from bgmock_twin.tracking.ledger import Ledger
from bgmock_twin.tracking.lifecycle import (
    Channel,
    Kind,
    Payment,
    Route,
    Step,
    observe_step,
    only_furthest_step,
    row_summary,
    steps_of,
)
from tests.benchmarks.common import Reporter, Result, arguments, banner, own_cpu_seconds
from tests.support.postgres import PostgresServer, writable_engine

TARGET = 20_000.0
WAVE = 1000
SAMPLE = 200


def payments(count: int, rng: random.Random) -> list[Payment]:
    made = []
    for _ in range(count):
        route = Route.A_TO_B if rng.random() < 0.5 else Route.B_TO_A
        letter, other = ("A", "B") if route is Route.A_TO_B else ("B", "A")
        made.append(Payment(
            payment_id=str(uuid.uuid4()), channel=Channel.REST, route=route, kind=Kind.NORMAL,
            from_clearing=route.source.clearing_number, from_account=f"TWIN-{letter}-001",
            to_bankgood=f"TWIN-BG-{other}-001", to_clearing=route.destination.clearing_number,
            to_account=f"TWIN-{other}-001", amount=Decimal(rng.randint(100, 5000)) / 100,
            intended_at=datetime.now(UTC), intended_mono=time.monotonic(),
            instance_id="bench", simulation_id=None))
    return made


def stored_rows(url: str) -> dict[str, int]:
    engine = writable_engine(url)
    try:
        with engine.connect() as conn:
            tables = [t for t in sa.inspect(conn).get_table_names() if t.startswith("twin_")]
            return {t: int(conn.execute(sa.text(f'SELECT count(*) FROM "{t}"')).scalar_one())
                    for t in tables}
    finally:
        engine.dispose()


def record_step(ledger: Ledger, payment: Payment, step: Step, whole_rows: bool) -> None:
    """One step observed and written as the tracker writes it (``whole_rows``: the
    payment's whole row again, the older way)."""
    now = datetime.now(UTC)
    accepted = step is Step.ACCEPTED
    if accepted:
        payment.transaction_id = uuid.uuid4()  # as Tracker.accepted learns it
    before = row_summary(payment)
    change = observe_step(payment, step, time.monotonic(), now, status=Status.SUCCESS)
    if whole_rows:
        ledger.write_payment(payment, now)
        return
    narrow = not accepted and only_furthest_step(change, before, payment)  # as the tracker
    ledger.write_change(payment, change.new_step, now, narrow, transaction=accepted)


def one_round(url: str, workdir: Path, count: int, rng: random.Random,
              whole_rows: bool = False) -> tuple[float, str]:
    ledger = Ledger(url, buffer_size=10 * count * 7, spill_dir=workdir, instance_id="bench")
    if not ledger.open():
        raise RuntimeError("the ledger did not open")
    ledger.start()
    made = payments(count, rng)
    steps = steps_of(Channel.REST)
    cpu0, t0 = own_cpu_seconds(), time.monotonic()
    for start in range(0, count, WAVE):
        wave = made[start:start + WAVE]
        for payment in wave:
            ledger.write_payment(payment, datetime.now(UTC))
        for step in steps:
            for payment in wave:
                record_step(ledger, payment, step, whole_rows)
    fed = time.monotonic() - t0
    if not ledger.flush(600):
        raise RuntimeError("the ledger did not store everything")
    cpu1, t1 = own_cpu_seconds(), time.monotonic()
    sample = rng.sample(made, min(SAMPLE, count))
    missing = 0
    for payment in sample:
        record = ledger.get(payment.payment_id)
        missing += len(steps) - (len(record.timeline) if record is not None else 0)
    ledger.stop(30)
    ledger.close()
    if missing:
        raise AssertionError(f"{missing} steps of {len(sample)} sampled payments not stored")
    rows = stored_rows(url)
    recorded = count * len(steps)
    rate = recorded / (t1 - t0)
    return rate, (f"{recorded:,} steps of {count:,} payments in {t1 - t0:.2f} s (fed in "
                  f"{fed:.2f} s, {cpu1 - cpu0:.2f} CPU s of this process); stored rows "
                  + ", ".join(f"{t} {n:,}" for t, n in sorted(rows.items())))


def main(argv: Sequence[str] | None = None) -> int:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--payments", type=int, help="payments per round (default 10,000)")
        parser.add_argument("--rounds", type=int, help="rounds (default 3)")

    args = arguments(__doc__.splitlines()[0], argv, extra)
    configure_logging("WARNING", "json")
    reporter = Reporter(args.results)
    count = args.payments or (300 if args.quick else 10_000)
    rounds = args.rounds or (1 if args.quick else 3)
    banner(f"PostgreSQL ledger: {count:,} payments x 6 steps per round, {rounds} round(s)")
    server = PostgresServer()
    server.start()
    rng = random.Random(5)
    rates, details, whole = [], [], []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
            for _ in range(rounds):  # interleaved: the tracker's way, then the older one
                url = server.create_database("bench_ledger")
                rate, detail = one_round(url, Path(tmp), count, rng)
                reporter.note(f"{rate:,.0f} steps/s: {detail}")
                rates.append(rate)
                details.append(detail)
                url = server.create_database("bench_ledger_whole")
                rate, detail = one_round(url, Path(tmp), count, rng, whole_rows=True)
                reporter.note(f"whole rows: {rate:,.0f} steps/s: {detail}")
                whole.append(rate)
    finally:
        server.stop()
    value = statistics.median(rates)
    reporter.emit(Result(
        "ledger.pg_rows_per_second", value, "step rows/s", f">= {TARGET:,.0f}/s",
        value >= TARGET,
        f"median over {rounds} rounds ({', '.join(f'{r:,.0f}' for r in rates)}); "
        f"last round: {details[-1]}"))
    reporter.emit(Result(
        "ledger.pg_whole_rows_per_second", statistics.median(whole), "step rows/s",
        detail=f"the same fed the older way, the whole row written at every step; median "
               f"over {rounds} rounds ({', '.join(f'{r:,.0f}' for r in whole)})"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
