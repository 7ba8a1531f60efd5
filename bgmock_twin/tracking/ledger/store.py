"""The ledger's write-behind store: writes never block the callers that track payments.

A payment is written whole once, when registered (``write``: its whole current row,
as are simulations and deposits); after that each change is its *progress*
(``write_progress``): the few columns that change (``schema.STATE_COLUMNS``) and the
step it reached, appended as one narrow row of ``twin_payment_steps``. Both go into
a bounded buffer keyed by the row's identity, so a newer snapshot or progress of the
same payment joins the older one while it waits (a pending whole row takes in its
progress). A writer thread (a ``Worker``) stores the buffer in batches with one
``executemany`` per statement (``bulk``); a failed batch goes back into the buffer
and is retried after a back-off of 0.2 s doubling to 5 s. While the database is
unavailable the buffer holds up to ``buffer_size`` distinct rows and loses nothing;
beyond that new rows are dropped and counted (``bgmock_ledger_dropped_total``) - the
next write of that payment is its whole row again, which carries its full state.
Every write gets a sequence number and ``durable_seq`` says up to which one
everything is stored (or dropped), which lets the Kafka follower commit offsets
only after what it read is recorded. A batch's whole payment rows are committed
before the progress in it, and ``rows_durable_seq`` says up to which write every
whole row is stored: the sender waits on it before a payment leaves, a write
sooner than the whole batch.

A full disk (issue 15): a backlog is stored in transactions of ``chunk_size`` rows,
each committed on its own, so a little free space drains it step by step instead of
one ever-growing transaction that never fits. An SQLite WAL keeps the size it once
had (it is reused, not shrunk), so it would take back the space freed for the
ledger: the WAL is capped (``journal_size_limit``) and, after a failed write, a
``wal_checkpoint(TRUNCATE)`` gives its space back before the retry. Stopped with
rows it could not store, the store writes them to a spill file (``spill``) that the
next ``open`` reads back first: nothing is lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bgmock_twin import metrics
from bgmock_twin.errors import Unavailable
from bgmock_twin.logs import get_logger
from bgmock_twin.settings import mask_url
from bgmock_twin.tracking.ledger.bulk import StepTuple, store_rows, with_narrow
from bgmock_twin.tracking.ledger.schema import (
    PRIMARY_KEYS,
    STATE_COLUMNS,
    is_in_memory,
    make_engine,
)
from bgmock_twin.tracking.ledger.spill import Row, Spill, default_directory, is_persistent
from bgmock_twin.tracking.ledger.upgrade import ensure_schema
from bgmock_twin.workers import Backoff, Worker

log = get_logger(__name__)

Batch = dict[tuple[str, str], tuple[dict[str, Any], int]]  # (kind, id) -> (row, seq)
PROGRESS = "progress"  # a payment's changed columns and new steps (``write_progress``)
# the order a batch is stored in: a payment's whole row before any progress of it
_ORDER = {"payment": 0, PROGRESS: 1}
WAL_SIZE_LIMIT = 1024 * 1024  # bytes an SQLite WAL keeps after a checkpoint reset it
WAL_CHECKPOINT_PAGES = 256  # pages (1 MiB) after which a commit moves the WAL into the file


class LedgerUnavailable(Unavailable):
    """The ledger database cannot be read right now."""


class LedgerStore(Worker):
    """The engine, the buffer of rows not yet stored, and the writer thread."""

    def __init__(
        self,
        url: str,
        buffer_size: int = 100_000,
        flush_interval: float = 0.1,
        chunk_size: int = 1000,
        *,
        spill_dir: Path | None = None,
        instance_id: str = "",
    ) -> None:
        """``spill_dir``: where rows unwritten at stop go (``spill``; by default next
        to an SQLite file); an in-memory ledger has no spill."""
        super().__init__("ledger-writer", backoff=Backoff(0.2, 5.0),
                         error_event="ledger_write_failed")
        self.url = url
        self.buffer_size = buffer_size
        self.flush_interval = flush_interval
        self.chunk_size = chunk_size
        self.engine = make_engine(url)
        # the API's reads go through an engine of their own (see ``make_engine``)
        self.read_engine = self.engine if is_in_memory(url) else make_engine(url, reader=True)
        self._sqlite_file = self.engine.dialect.name == "sqlite" and is_persistent(url)
        if self._sqlite_file:
            sa.event.listen(self.engine, "connect", _cap_wal)
        self.spill = Spill(spill_dir or default_directory(url), url, instance_id) \
            if is_persistent(url) else None
        self._lock = threading.Condition()
        self._pending: Batch = {}
        self._inflight = 0
        self._seq = 0
        self._durable = 0
        self._rows_durable = 0  # every whole payment row up to this write is stored
        self._schema_ready = False
        self._on_available: list[Callable[[], None]] = []
        self._failing_since: float | None = None
        self._flush_requested = False
        self._idle = False  # the writer sleeps until a write comes (``_take``)
        self._failed_rows = 0  # the size of the last batch that could not be stored
        # payments whose latest write was dropped (buffer full): written whole next time
        self._unsynced: set[str] = set()

    # --- lifecycle -----------------------------------------------------------------------
    def open(self) -> bool:
        """Create (or upgrade) the tables if needed and read back the rows a previous
        run spilled; False (and retried by the writer) if the database is
        unavailable."""
        try:
            self._prepare()
        except Exception as exc:
            metrics.LEDGER_WRITE_ERRORS.inc()
            log.warning("ledger_unavailable", url=mask_url(self.url), error=short_error(exc))
            return False
        return True

    def _prepare(self) -> None:
        ensure_schema(self.engine)
        self._restore_spills()
        self._schema_ready = True

    def _restore_spills(self) -> None:
        """Store the rows of every spill file (oldest first), then remove the file."""
        if self.spill is None:
            return
        for path in self.spill.files():
            rows, bad = self.spill.read(path)
            try:
                for start in range(0, len(rows), self.chunk_size):
                    with self.engine.begin() as conn:
                        store_rows(conn, rows[start:start + self.chunk_size])
            except (sa.exc.IntegrityError, sa.exc.DataError, TypeError, ValueError) as exc:
                # rows the database refuses (an edited file): kept aside, never retried
                # forever, never blocking the ledger
                path.replace(path.with_suffix(".rejected"))
                log.error("ledger_spill_rejected", path=str(path), rows=len(rows),
                          error=short_error(exc))
                continue
            path.unlink(missing_ok=True)
            metrics.LEDGER_SPILL_RESTORED.inc(len(rows))
            log.info("ledger_spill_restored", path=str(path), rows=len(rows), skipped=bad)

    @property
    def available(self) -> bool:
        return self._schema_ready and self._failing_since is None

    def on_available(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the writer thread) once the schema could be created,
        when ``open`` failed at start."""
        self._on_available.append(callback)

    def stop(self, timeout: float | None = None) -> None:
        """Flush what is buffered (within ``timeout``, 5 s by default) and stop the
        writer."""
        budget = self.join_timeout if timeout is None else timeout
        self.flush(budget)
        super().stop(budget)
        with self._lock:
            left = sorted(self._pending.items(), key=lambda item: item[1][1])
            rows: list[Row] = [line for (kind, _), (row, _) in left
                               for line in spill_lines(kind, row)]
        if rows:
            self._spill(rows)

    def _spill(self, rows: list[Row]) -> None:
        """Keep the rows the database did not take in a spill file (``spill``)."""
        if self.spill is None:
            log.error("ledger_stopped_with_unwritten_rows", rows=len(rows),
                      reason="in-memory ledger: nothing to keep them in")
            return
        try:
            path = self.spill.write(rows)
        except OSError as exc:
            log.error("ledger_stopped_with_unwritten_rows", rows=len(rows),
                      reason=f"spill failed: {exc}")
            return
        with self._lock:
            self._pending.clear()
            metrics.LEDGER_BUFFERED.set(self._inflight)
        metrics.LEDGER_SPILLED.inc(len(rows))
        log.warning("ledger_rows_spilled", path=str(path), rows=len(rows),
                    note="read back into the ledger at the next start")

    def close(self) -> None:
        self.engine.dispose()
        self.read_engine.dispose()

    # --- writes -------------------------------------------------------------------------
    def write(self, kind: str, row: dict[str, Any]) -> int:
        """Buffer ``row`` (a whole row of table ``kind``; a payment's may carry its
        steps, see ``rows.payment_row``); returns its sequence number."""
        identity = str(row[PRIMARY_KEYS[kind]])
        key = (kind, identity)
        with self._lock:
            self._seq += 1
            if kind == "payment":
                progress = (PROGRESS, identity)
                if key not in self._pending and progress not in self._pending and \
                        len(self._pending) + self._inflight >= self.buffer_size:
                    self._unsynced.add(identity)
                    metrics.LEDGER_DROPPED.inc()
                    return self._seq
                # the whole row is newer than any progress still waiting: it replaces it
                self._pending.pop(progress, None)
                self._unsynced.discard(identity)
            elif key not in self._pending and len(self._pending) + self._inflight >= \
                    self.buffer_size:
                metrics.LEDGER_DROPPED.inc()
                return self._seq
            self._pending[key] = (row, self._seq)
            metrics.LEDGER_BUFFERED.set(len(self._pending) + self._inflight)
            self._wake_if_idle()
            return self._seq

    def needs_whole_row(self, payment_id: str) -> bool:
        """Whether a payment's last write was dropped: its next must be whole."""
        return payment_id in self._unsynced

    def write_progress(self, payment_id: str, intended_at: datetime,
                       full: tuple[Any, ...] | None, state: str, updated_at: datetime,
                       step: StepTuple | None, transaction: bool = False) -> int:
        """Buffer what changed in a stored payment: all its ``STATE_COLUMNS`` values
        (``full``) or, when only its furthest step moved (None), its ``state`` and
        ``updated_at``; and the step it reached (None: no new step); ``transaction``:
        its transaction id changed (set with ``full``). Returns the
        sequence number. Joins the payment's pending whole row or progress, if any."""
        with self._lock:
            self._seq += 1
            pending = self._pending
            whole = pending.get(("payment", payment_id))
            if whole is not None:
                row = whole[0]
                if full is not None:
                    row.update(zip(STATE_COLUMNS, full, strict=True))
                row["state"], row["updated_at"] = state, updated_at
                if step is not None:
                    name, at, since, seconds = step
                    row[f"{name}_at"], row[f"{name}_since"], row[f"{name}_seconds"] = \
                        at, since, seconds
                pending[("payment", payment_id)] = (row, self._seq)
                return self._seq
            key = (PROGRESS, payment_id)
            waiting = pending.get(key)
            if waiting is not None:
                row = waiting[0]
                if transaction:
                    row["tx"] = True
                if full is not None:
                    row["full"] = full
                elif row["full"] is not None:
                    row["full"] = with_narrow(row["full"], state, updated_at)
                row["state"], row["updated_at"] = state, updated_at
                if step is not None:
                    row["steps"].append(step)
                pending[key] = (row, self._seq)
                return self._seq
            if len(pending) + self._inflight >= self.buffer_size:
                self._unsynced.add(payment_id)
                metrics.LEDGER_DROPPED.inc()
                return self._seq
            pending[key] = ({"payment_id": payment_id, "intended_at": intended_at,
                             "full": full, "tx": transaction, "state": state,
                             "updated_at": updated_at,
                             "steps": [step] if step is not None else []}, self._seq)
            self._wake_if_idle()
            return self._seq

    def _wake_if_idle(self) -> None:
        """Wake a writer asleep for want of rows (the caller holds the lock)."""
        if self._idle:
            self._lock.notify_all()

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._seq

    @property
    def durable_seq(self) -> int:
        with self._lock:
            return self._durable

    @property
    def rows_durable_seq(self) -> int:
        """Up to which write every whole payment row is stored (or dropped); at least
        ``durable_seq``."""
        with self._lock:
            return max(self._rows_durable, self._durable)

    @property
    def buffered(self) -> int:
        with self._lock:
            return len(self._pending) + self._inflight

    def flush(self, timeout: float) -> bool:
        """Wait until everything written so far is stored; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self._seq
            self._flush_requested = True
            self._lock.notify_all()
            while self._durable < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.alive:
                    return self._durable >= target
                self._lock.wait(min(remaining, 0.05))
            return True

    # --- the writer thread (the ``Worker`` hooks) -----------------------------------------
    def step(self) -> None:
        """One round: take what was buffered during one flush interval and store it; a
        failed batch is put back and the error re-raised (the worker then backs off)."""
        taken = self._take()
        if taken is None or not taken[0]:
            return
        batch, upto = taken
        try:
            self._write(batch, upto)
        except Exception:
            self._put_back(batch)
            raise
        self._stored(upto)

    def on_error(self, exc: Exception) -> None:
        """Count the failed write; warn once per outage (``_stored`` logs the end)."""
        metrics.LEDGER_WRITE_ERRORS.inc()
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning("ledger_write_failed", url=mask_url(self.url),
                        rows=self._failed_rows, error=short_error(exc))

    def wake(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def on_stop(self) -> None:
        """Store what is still buffered, until a write fails. Stopped during a back-off
        (the database is failing), the writer does not try again."""
        if self.consecutive_errors:
            return
        while self._has_pending() and self._step_once():
            pass

    def _has_pending(self) -> bool:
        with self._lock:
            return bool(self._pending)

    def _take(self) -> tuple[Batch, int] | None:
        """The rows buffered during one interval from the first of them (a flush
        request cuts it short), so the database sees a few batched transactions a
        second, not one per write, and an idle writer does not wake; None once
        stopped with nothing left."""
        with self._lock:
            # nothing buffered: sleep until the first write (not every interval)
            while not self._pending and not self.stopping and not self._flush_requested:
                self._idle = True
                self._lock.wait()
            self._idle = False
            if not self.stopping and not self._flush_requested:
                self._lock.wait(self.flush_interval)
            self._flush_requested = False
            if not self._pending:
                return None if self.stopping else ({}, self._seq)
            batch = self._pending
            self._pending = {}
            self._inflight = len(batch)
            metrics.LEDGER_BUFFERED.set(self._inflight)
            return batch, self._seq

    def _write(self, batch: Batch, upto: int) -> None:
        """Store ``batch`` (taken at write ``upto``) in transactions of ``chunk_size``
        rows, its whole payment rows in transactions of their own first; what was
        stored leaves the batch, so on an error only the rest is put back."""
        if not self._schema_ready:
            self._prepare()
            for callback in self._on_available:
                callback()
        if self._failing_since is not None and self._sqlite_file:
            self._give_wal_space_back()
        for part in _parts(batch):
            for start in range(0, len(part), self.chunk_size):
                chunk = part[start:start + self.chunk_size]
                with self.engine.begin() as conn:
                    store_rows(conn, [(kind, batch[(kind, key)][0]) for kind, key in chunk])
                for key in chunk:
                    del batch[key]
                with self._lock:
                    self._inflight = len(batch)
            with self._lock:
                self._rows_durable = max(self._rows_durable, upto)

    def _give_wal_space_back(self) -> None:
        """Move the WAL into the database file and truncate it, so the space it took
        is free for the rows (a failure only means the disk is still full)."""
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        except Exception as exc:
            log.debug("ledger_checkpoint_failed", error=short_error(exc))

    def _put_back(self, batch: Batch) -> None:
        """Put a batch that could not be stored back (behind any newer snapshot of the
        same rows)."""
        with self._lock:
            self._failed_rows = len(batch)
            pending = self._pending
            for key, value in batch.items():
                kind, identity = key
                if kind == PROGRESS:
                    if ("payment", identity) in pending:
                        continue  # a newer whole row carries it all
                    newer = pending.get(key)
                    if newer is not None:  # keep the older steps with the newer state
                        newer[0]["steps"][:0] = value[0]["steps"]
                        continue
                if key not in pending:
                    pending[key] = value
            self._inflight = 0
            metrics.LEDGER_BUFFERED.set(len(self._pending))

    def _stored(self, upto: int) -> None:
        if self._failing_since is not None:
            log.info("ledger_write_recovered",
                     outage_seconds=round(time.monotonic() - self._failing_since, 1))
            self._failing_since = None
        with self._lock:
            self._inflight = 0
            self._durable = max(self._durable, upto)
            metrics.LEDGER_BUFFERED.set(len(self._pending))
            self._lock.notify_all()


def _parts(batch: Batch) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The batch's keys in the order they are stored: its whole payment rows, then
    the rest - progress before the other tables' rows - each in the order they came
    (a stable partition)."""
    whole = [key for key in batch if key[0] == "payment"]
    progress = [key for key in batch if key[0] == PROGRESS]
    if len(whole) + len(progress) == len(batch):
        return whole, progress
    return whole, progress + [key for key in batch if key[0] not in _ORDER]


def _cap_wal(dbapi_connection: Any, _record: Any) -> None:
    """Keep an SQLite WAL small: checkpointed every ``WAL_CHECKPOINT_PAGES`` (not
    SQLite's 4 MiB) and shrunk back to ``WAL_SIZE_LIMIT`` when a checkpoint resets it,
    instead of keeping the largest size it ever had. The headroom a checkpoint needs
    on the disk stays that small too."""
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
    cursor.close()


def spill_lines(kind: str, row: dict[str, Any]) -> list[Row]:
    """A buffered entry as spill file lines: a payment's progress becomes its state
    (``payment_state``) and one ``payment_step`` line per step."""
    if kind != PROGRESS:
        return [(kind, row)]
    payment_id = row["payment_id"]
    full = row["full"]
    state = dict(zip(STATE_COLUMNS, full, strict=True)) if full is not None else \
        {"state": row["state"], "updated_at": row["updated_at"]}
    lines: list[Row] = [("payment_state", {"payment_id": payment_id, **state})]
    lines.extend(("payment_step", {"intended_at": row["intended_at"], "payment_id": payment_id,
                                   "step": step, "at": at, "since_intended": since,
                                   "seconds": seconds})
                 for step, at, since, seconds in row["steps"])
    return lines


def short_error(exc: BaseException) -> str:
    """An error without the SQL statement or parameters SQLAlchemy appends."""
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__
