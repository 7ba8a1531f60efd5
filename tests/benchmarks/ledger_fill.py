"""A big SQLite ledger, made quickly: the twin writes a few hundred payments itself
(so every row is exactly what it writes, whatever the ledger's schema is), then each
set is copied in bulk inside the file with fresh payment and transaction ids.

Copying knows only two things of the schema: a payment's rows carry its
``payment_id`` in every table that has that column, and the payments table is the
one that also has ``simulation_id`` (which picks the set to copy). A copy's ids keep
the UUID form: the last eight hex digits become the copy's number.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from tests.benchmarks.daemon import SinkProcess, TwinDaemon
from tests.support.ports import wait_for

INSTANCE = "bench-footprint"
HOUR = "3600"
ID_COLUMNS = ("payment_id", "transaction_id")


def twin_env(**extra: str) -> dict[str, str]:
    """Settings of every daemon on the big ledger: one instance id (a twin resumes
    only its own payments), nothing in flight given up within the hour, retention
    above the rows held."""
    return {"TWIN_INSTANCE_ID": INSTANCE, "TWIN_PAYMENT_SLA_SECONDS": HOUR,
            "TWIN_RETENTION_MAX_PAYMENTS": "5000000", **extra}


@dataclass
class Templates:
    ledger: Path
    finished: tuple[str, int]   # simulation id, payments
    in_flight: tuple[str, int]


def make_templates(workdir: Path, count: int, rate: float) -> Templates:
    """``count`` payments that settle (the sink answers SUCCESS) and ``count`` that
    stay in flight (a sink that answers PENDING), sent by ``bgmock-twin run``."""
    ledger = workdir / "big-ledger.db"
    url = f"sqlite:///{ledger}"
    sets = []
    for status in ("SUCCESS", "PENDING"):
        with SinkProcess(workdir, "--status", status) as sink, \
                TwinDaemon(workdir, sink.urls, database_url=url,
                           **twin_env(TWIN_REST_POLL_BUDGET="5000")) as twin:
            simulation = twin.simulate(rate, count, name=f"template-{status.lower()}")
            detail = twin.wait_dispatched(simulation, timeout=count / rate * 4 + 60)
            sent = int(detail["sendLag"]["count"])
            if status == "SUCCESS":
                def finished(twin: TwinDaemon = twin, simulation: str = simulation,
                             sent: int = sent) -> bool:
                    return bool(twin.simulation(simulation)["progress"]["finished"] >= sent)

                wait_for(finished, timeout=120, interval=0.5, message="template payments finished")
            sets.append((simulation, sent))
    return Templates(ledger, sets[0], sets[1])


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]


def multiply(ledger: Path, simulation_id: str, copies: int) -> int:
    """Add ``copies`` copies of every row of the simulation's payments; the number
    of payments added."""
    db = sqlite3.connect(ledger)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        with_ids = {t: _columns(db, t) for t in tables if "payment_id" in _columns(db, t)}
        payments = next(t for t, cols in with_ids.items() if "simulation_id" in cols)
        def held() -> int:
            return int(db.execute(f'SELECT count(*) FROM "{payments}"').fetchone()[0])

        before = held()
        with db:
            for table, columns in with_ids.items():
                values = ", ".join(
                    f'CASE WHEN "{c}" IS NULL THEN NULL ELSE '
                    f"substr(\"{c}\", 1, 28) || printf('%08x', n.k) END"
                    if c in ID_COLUMNS else f'"{c}"' for c in columns)
                names = ", ".join(f'"{c}"' for c in columns)
                db.execute(
                    f"WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n "
                    f"WHERE k < ?) INSERT INTO \"{table}\" ({names}) SELECT {values} "
                    f"FROM \"{table}\" JOIN n WHERE \"{table}\".payment_id IN "
                    f"(SELECT payment_id FROM \"{payments}\" WHERE simulation_id = ?)",
                    (copies, simulation_id))
        return held() - before
    finally:
        db.close()


def fill(workdir: Path, finished: int, in_flight: int, template: int,
         rate: float) -> tuple[Path, str]:
    """A ledger with about ``finished`` settled payments and ``in_flight`` unfinished
    ones of instance ``INSTANCE``; its path and how it was made."""
    began = time.monotonic()
    made = make_templates(workdir, template, rate)
    sent_at = time.monotonic()
    total = {}
    for name, (simulation, sent), wanted in (("finished", made.finished, finished),
                                             ("in_flight", made.in_flight, in_flight)):
        copies = max(0, -(-wanted // max(sent, 1)) - 1)
        total[name] = sent + multiply(made.ledger, simulation, copies)
    size = made.ledger.stat().st_size
    return made.ledger, (
        f"{total['finished']:,} finished + {total['in_flight']:,} in flight: "
        f"{template} of each sent by the twin in {sent_at - began:.0f} s, copied in bulk in "
        f"{time.monotonic() - sent_at:.0f} s; {size / 2**20:.0f} MiB SQLite file")
