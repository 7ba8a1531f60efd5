"""Fault: the disk of the twin's SQLite ledger fills up (issue 15, point 5).

A real ``tmpfs`` of a few MiB (mounted by the tests, which run as root) holds the
ledger; a filler file takes its last bytes and is removed again. Reads keep working
on a full disk, writes fail with "database or disk is full". What must hold:

- the write-behind store recovers once space returns, and its WAL does not take the
  freed space back (a backlog in one transaction used to land whole in the WAL,
  whose checkpoint then needed the same space again and could never run);
- rows still unwritten at shutdown go to a spill file (on another disk, or the
  temporary directory when the spill directory is the full disk) that the next
  open reads back first, idempotently;
- in a real ``bgmock-twin run``: while the ledger holds unwritten rows the books
  say ``unknown`` ("the ledger holds N unwritten rows"), never a violation; the
  ledger catches up when space returns; a SIGTERM while full spills the rows and the
  next start reads them back, and the books reconcile with zero drift.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from bgmock_twin.tracking.ledger import Ledger, deposits
from tests.support.daemon import Daemon, running_daemon
from tests.support.emulator_process import running_emulator
from tests.support.faultkit import (
    FAST_ENV,
    FINISHED,
    assert_accounted,
    metric_sum,
    payments,
    simulation,
    start_simulation,
    wait_dispatched,
    wait_finished,
    wait_provisioned,
)
from tests.support.ports import wait_for
from tests.support.postgres import PostgresServer
from tests.support.small_disk import SmallDisk, small_disk

pytestmark = pytest.mark.slow  # started first by make test's workers (conftest)

MIB = 1024 * 1024


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    with small_disk(tmp_path / "disk", 24) as mounted:
        yield mounted


def deposit(amount: str = "1.00", deposit_id: str | None = None,
            width: int = 1500) -> dict[str, Any]:
    """A deposit row about as wide as a payment's 45-column row (``width`` bytes)."""
    return {"deposit_id": deposit_id or str(uuid.uuid4()), "instance_id": "disk-test",
            "clearing_number": "01", "account_number": "TWIN-A-001",
            "amount": Decimal(amount), "reason": "r" * width, "at": datetime.now(UTC)}


def stored(ledger: Ledger) -> dict[str, Decimal]:
    with ledger.engine.connect() as conn:
        return {row.deposit_id: row.amount for row in conn.execute(
            sa.select(deposits.c.deposit_id, deposits.c.amount))}


def wait_failing(ledger: Ledger) -> None:
    wait_for(lambda: not ledger.available and not ledger.flush(0.2), timeout=30,
             message="ledger writes failing on the full disk")


def test_ledger_recovers_when_space_returns_and_the_wal_gives_it_back(
        disk: SmallDisk, tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{disk.path}/ledger.db", spill_dir=tmp_path / "spill")
    assert ledger.open()
    ledger.start()
    try:
        for _ in range(500):
            ledger.write("deposit", deposit())
        assert ledger.flush(10)
        disk.fill()
        backlog = [deposit() for _ in range(6000)]
        for row in backlog:
            ledger.write("deposit", row)
        wait_failing(ledger)
        assert ledger.buffered == 6000
        assert len(stored(ledger)) == 500  # reads still work on a full disk
        # space returns: room for the backlog's pages (two 1.5 KB rows a 4 KiB page:
        # about 12 MiB), one checkpoint's worth of WAL (about 2.3 MiB: a transaction of
        # 1,000 rows outgrows the 1 MiB autocheckpoint) and 3 MiB to spare; not the
        # twice the backlog a WAL holding it whole would need (the old failure)
        disk.free()
        disk.fill(leave=17 * MIB)
        print(f"backlog 6000 rows, {disk.free_bytes() // 1024} KiB free")
        started = time.monotonic()
        wait_for(lambda: ledger.flush(0.5), timeout=60, message="backlog stored")
        recovered = time.monotonic() - started
        wal = (disk.path / "ledger.db-wal").stat().st_size
        print(f"recovered in {recovered:.1f}s; WAL {wal // 1024} KiB, "
              f"{disk.free_bytes() // 1024} KiB free")
        assert ledger.available and ledger.buffered == 0
        assert len(stored(ledger)) == 6500
        # the WAL holds at most about one checkpoint's worth, not the backlog: the
        # disk keeps room and the next writes go through
        assert wal < 3 * MIB, wal
        assert disk.free_bytes() > MIB
        for _ in range(100):
            ledger.write("deposit", deposit())
        assert ledger.flush(10)
        assert len(stored(ledger)) == 6600
    finally:
        ledger.stop(2)
        ledger.close()


def spilled_rows() -> float:
    return REGISTRY.get_sample_value("bgmock_ledger_spilled_rows_total") or 0.0


def test_rows_unwritten_at_stop_are_spilled_and_read_back_first(
        disk: SmallDisk, tmp_path: Path) -> None:
    url = f"sqlite:///{disk.path}/ledger.db"
    spill_dir = tmp_path / "spill"
    ledger = Ledger(url, spill_dir=spill_dir, instance_id="disk-test")
    assert ledger.open()
    ledger.start()
    first = [deposit("1.00", width=10) for _ in range(100)]
    for row in first:
        ledger.write("deposit", row)
    assert ledger.flush(10)
    disk.fill()
    # newer snapshots of 50 stored rows, and 250 new rows
    updated = {row["deposit_id"]: "2.50" for row in first[:50]}
    for deposit_id, amount in updated.items():
        ledger.write("deposit", deposit(amount, deposit_id, width=10))
    fresh = [deposit("3.00", width=10) for _ in range(250)]
    for row in fresh:
        ledger.write("deposit", row)
    wait_failing(ledger)
    before = spilled_rows()
    ledger.stop(2)
    ledger.close()
    files = list(spill_dir.glob("bgmock-twin-ledger-spill.*.jsonl"))
    assert len(files) == 1, files
    lines = files[0].read_text().splitlines()
    assert len(lines) == 300
    assert spilled_rows() - before == 300
    kept = tmp_path / "kept.jsonl"
    shutil.copy(files[0], kept)

    disk.free()
    again = Ledger(url, spill_dir=spill_dir, instance_id="disk-test")
    try:
        assert again.open()  # reads the spill back before anything else
        assert not list(spill_dir.glob("*.jsonl"))
        rows = stored(again)
        assert len(rows) == 350
        for deposit_id, amount in updated.items():
            assert rows[deposit_id] == Decimal(amount)
        assert all(rows[r["deposit_id"]] == Decimal("3.00") for r in fresh)
    finally:
        again.close()
    # reading the same file twice changes nothing (rows are upserts by primary key)
    shutil.copy(kept, files[0])
    third = Ledger(url, spill_dir=spill_dir, instance_id="disk-test")
    try:
        assert third.open()
        assert stored(third) == rows
        assert not files[0].exists()
    finally:
        third.close()


def test_spill_on_the_full_disk_itself_goes_to_the_temporary_directory(
        disk: SmallDisk) -> None:
    url = f"sqlite:///{disk.path}/ledger.db"
    instance = f"disk-test-{uuid.uuid4()}"  # no other run's files in the shared /tmp
    ledger = Ledger(url, instance_id=instance)  # spill next to the ledger: the full disk
    assert ledger.open()
    ledger.start()
    fallback: list[Path] = []
    try:
        disk.fill()
        rows = [deposit("4.00", width=10) for _ in range(120)]
        for row in rows:
            ledger.write("deposit", row)
        wait_failing(ledger)
        ledger.stop(2)
        ledger.close()
        assert ledger.spill is not None
        fallback = ledger.spill.files()
        assert [p.parent for p in fallback] == [Path(tempfile.gettempdir())], fallback
        assert not list(disk.path.glob("*.jsonl*"))  # no half-written file left behind
        disk.free()
        again = Ledger(url, instance_id=instance)
        try:
            assert again.open()
            assert len(stored(again)) == 120
            assert not any(p.exists() for p in fallback)
        finally:
            again.close()
    finally:
        for path in fallback:
            path.unlink(missing_ok=True)


# --- a real daemon --------------------------------------------------------------------
LEDGER_CHECKS = ("balance_drift", "conservation", "status_agreement")


def next_report(daemon: Daemon, after: str | None, timeout: float = 30) -> dict[str, Any]:
    """The first reconciliation report that ran after ``after``."""
    def fresh() -> dict[str, Any] | None:
        report: dict[str, Any] = daemon.get("/api/v1/reconciliation").json()
        ran_at = report["ranAt"]
        return report if ran_at is not None and (after is None or ran_at > after) else None

    return wait_for(fresh, timeout=timeout, interval=0.2, message="a new reconciliation")


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {name: check["status"] for name, check in report["checks"].items()}


def books_ok(daemon: Daemon, timeout: float = 60) -> dict[str, Any]:
    def ok() -> dict[str, Any] | None:
        report = next_report(daemon, None)
        found = statuses(report)
        return report if all(found[c] == "ok" for c in LEDGER_CHECKS) \
            and report["violations"] == 0 else None

    return wait_for(ok, timeout=timeout, interval=0.5, message="the books reconcile")


def ledger_state(daemon: Daemon) -> dict[str, Any]:
    state: dict[str, Any] = daemon.get("/api/v1/status").json()["payments"]["ledger"]
    return state


def log_events(daemon: Daemon, event: str) -> list[dict[str, Any]]:
    found = []
    for line in daemon.log().splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            entry = json.loads(line)
            if entry.get("event") == event:
                found.append(entry)
    return found


def test_daemon_books_unknown_while_the_ledger_disk_is_full_and_nothing_lost_at_sigterm(
        tmp_path: Path, disk: SmallDisk, postgres: PostgresServer) -> None:
    databases = {name: postgres.create_database(f"diskfull_{name}")
                 for name in ("bank_a", "bank_b", "switch")}
    emulator_env = {"TWIN_EMULATOR_OUTBOX_INTERVAL_SECONDS": "0.2",
                    "TWIN_EMULATOR_DB_BANK_A": databases["bank_a"],
                    "TWIN_EMULATOR_DB_BANK_B": databases["bank_b"],
                    "TWIN_EMULATOR_DB_SWITCH": databases["switch"]}
    spill_dir = tmp_path / "spill"
    with running_emulator(tmp_path, **emulator_env) as bgmock:
        env = {**FAST_ENV, **bgmock.external_env(),
               "DB_BANK_A": databases["bank_a"], "DB_BANK_B": databases["bank_b"],
               "DB_SWITCH": databases["switch"], "TWIN_INSTANCE_ID": "disk-full",
               "TWIN_DATABASE_URL": f"sqlite:///{disk.path}/ledger.db",
               "TWIN_LEDGER_SPILL_DIR": str(spill_dir)}
        with running_daemon(tmp_path, **env) as first:
            wait_provisioned(first)
            warm = start_simulation(first, count=10, rate=5, name="warm")
            wait_finished(first, warm, timeout=60)
            healthy = books_ok(first)
            detections = metric_sum(first, "bgmock_invariant_violations_detected_total")

            disk.fill()
            full = time.monotonic()
            sim = start_simulation(first, count=36, rate=2, name="disk-full")
            wait_for(lambda: ledger_state(first)["available"] is False, timeout=20,
                     message="ledger writes failing")
            # for 15 s of payments whose rows cannot be stored, every run says unknown
            seen: list[dict[str, Any]] = []
            after = healthy["ranAt"]
            while time.monotonic() - full < 15 or len(seen) < 2:
                report = next_report(first, after)
                after = report["ranAt"]
                found = statuses(report)
                assert "violated" not in found.values(), report
                assert report["violations"] == 0, report
                if not ledger_state(first)["available"]:
                    seen.append(report)
            unwritten = first.metric("bgmock_ledger_buffered") or 0
            last = seen[-1]
            print(f"disk full {time.monotonic() - full:.0f}s: {len(seen)} runs, "
                  f"{unwritten:.0f} unwritten rows; {statuses(last)}; "
                  f"{ {c: last['checks'][c]['reason'] for c in LEDGER_CHECKS} }")
            assert unwritten > 0
            for check in LEDGER_CHECKS:
                assert last["checks"][check]["status"] == "unknown", last["checks"][check]
                assert re.fullmatch(r"the ledger holds \d+ unwritten rows",
                                    last["checks"][check]["reason"]), last["checks"][check]
                assert first.metric("bgmock_reconciliation_check_unknown", check=check) == 1.0
                assert first.metric("bgmock_invariant_violations", check=check) == 0.0

            disk.free()
            freed = time.monotonic()
            wait_for(lambda: ledger_state(first)["available"] and
                     first.metric("bgmock_ledger_buffered") == 0.0, timeout=30, interval=0.2,
                     message="ledger caught up")
            print(f"space back: ledger caught up in {time.monotonic() - freed:.1f}s")
            wait_finished(first, sim, timeout=60)
            assert_accounted(first, sim)
            books_ok(first)
            assert metric_sum(first, "bgmock_invariant_violations_detected_total") == detections

            # SIGTERM while the disk is full: the unwritten rows go to the spill file
            disk.fill()
            cut = start_simulation(first, count=40, rate=4, name="sigterm-full")
            wait_dispatched(first, cut, 12)
            wait_for(lambda: ledger_state(first)["available"] is False and
                     (first.metric("bgmock_ledger_buffered") or 0) > 0, timeout=20,
                     message="rows waiting on the full disk")
            first.process.send_signal(signal.SIGTERM)
            assert first.process.wait(timeout=30) == 0
            spilled = log_events(first, "ledger_rows_spilled")
            assert len(spilled) == 1, first.log()[-3000:]
            path, rows = Path(spilled[0]["path"]), spilled[0]["rows"]
            assert path.parent == spill_dir and rows > 0
            assert len(path.read_text().splitlines()) == rows
            print(f"SIGTERM on a full disk: {rows} rows spilled to {path.name}")

        disk.free()
        with running_daemon(tmp_path, **env) as second:
            restored = log_events(second, "ledger_spill_restored")
            assert [(Path(e["path"]), e["rows"]) for e in restored] == [(path, rows)]
            assert not path.exists()
            for sim_id in (warm, sim):
                assert_accounted(second, sim_id)
            # every payment the stopped twin sent is in the ledger, and ends
            def all_finished() -> list[dict[str, Any]] | None:
                listed = payments(second, cut)
                return listed if listed and all(p["status"] in FINISHED
                                                for p in listed) else None

            ended = wait_for(all_finished, timeout=90, interval=0.5,
                             message="the spilled payments finish")
            dispatched = simulation(second, cut)["dispatched"]
            assert len(ended) == dispatched >= 12, (len(ended), dispatched)
            report = books_ok(second)
            for bank in ("bank_a", "bank_b"):
                assert second.metric("bgmock_balance_drift", bank=bank) == 0.0, bank
            print(f"after restart: {len(ended)} payments of the cut run finished; "
                  f"{statuses(report)}")


def test_a_spill_file_the_database_refuses_is_set_aside_and_never_blocks_the_ledger(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    spill_dir = tmp_path / "spill"
    ledger = Ledger(url, spill_dir=spill_dir, instance_id="edited")
    assert ledger.spill is not None
    good = ledger.spill.write([("deposit", deposit("5.00", width=10))])
    broken = ledger.spill.write([("deposit", {**deposit(width=10), "amount": None})])
    with good.open("a") as out:
        out.write("not json\n{\"kind\": \"nope\", \"row\": {}}\n")
    try:
        assert ledger.open()  # the refused file does not make the ledger unavailable
        assert list(stored(ledger).values()) == [Decimal("5.00")]
        assert not good.exists() and not broken.exists()
        assert broken.with_suffix(".rejected").exists()
    finally:
        ledger.close()
