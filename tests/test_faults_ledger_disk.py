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

import shutil
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
from tests.support.ports import wait_for
from tests.support.small_disk import SmallDisk, small_disk

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
        # space returns: about 1.4 times what the backlog needs, not twice
        disk.free()
        disk.fill(leave=14 * MIB)
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
        assert disk.free_bytes() > 0
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
