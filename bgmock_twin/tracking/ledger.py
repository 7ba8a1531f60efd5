"""The twin's own record of every synthetic payment, its simulations and deposits.

Persisted with SQLAlchemy Core (``TWIN_DATABASE_URL``: an SQLite file by default,
PostgreSQL in production), so a restarted twin resumes following the payments in
flight and nothing it measured is lost.

Writes never block the callers that track payments: each write is the *whole
current row* of a payment (or simulation, or deposit), put into a bounded buffer
keyed by the row's identity, so a newer snapshot of the same payment replaces the
older one while it waits. A writer thread upserts the buffer in batches. While the
database is unavailable the buffer holds up to ``buffer_size`` distinct rows and
loses nothing; beyond that new rows are dropped and counted
(``bgmock_ledger_dropped_total``) - the next snapshot of a payment carries its full
state again. Every write gets a sequence number and ``durable_seq`` says up to
which one everything is stored (or dropped), which lets the Kafka follower commit
offsets only after what it read is recorded.

Retention (``prune``) must not change what the books derive from the ledger: the
balance model sums every deposit and every payment's effect. So only payments whose
effect on the balances is final and certain are deleted (finished, with the same
certainty rules the books apply to a ledger row), and in the same transaction their
net effect is folded into one ``carry_forward`` deposit per account (it may be
negative: an account that paid out more than it received). Unfinished payments are
never deleted, nor those the tracker still follows (a later snapshot of theirs would
insert the row again and count it twice).
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.pool import StaticPool

from bgmock_twin import metrics
from bgmock_twin.contract import CENT, Status
from bgmock_twin.database_urls import resolve_database_url
from bgmock_twin.errors import Unavailable
from bgmock_twin.logs import get_logger
from bgmock_twin.settings import mask_url
from bgmock_twin.tracking.lifecycle import (
    ALL_STEPS,
    Channel,
    Kind,
    Outcome,
    Payment,
    Route,
    Step,
    StepMark,
)

log = get_logger(__name__)


class Money(sa.types.TypeDecorator[Decimal]):
    """``NUMERIC(19,2)`` where the database has decimals; exact text on SQLite, whose
    driver would otherwise go through ``float``."""

    impl = sa.Numeric(19, 2)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(32))
        return dialect.type_descriptor(sa.Numeric(19, 2, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        amount = Decimal(value).quantize(CENT)
        return format(amount, "f") if dialect.name == "sqlite" else amount

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return Decimal(str(value)).quantize(CENT)


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Timestamps are UTC in and out, whatever the backend keeps."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError("expected a datetime")
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()

payments = sa.Table(
    "twin_payments", metadata,
    sa.Column("payment_id", sa.String(36), primary_key=True),
    sa.Column("transaction_id", sa.String(36), index=True),
    sa.Column("simulation_id", sa.String(36), index=True),
    sa.Column("instance_id", sa.String(63), nullable=False),
    sa.Column("channel", sa.String(8), nullable=False),
    sa.Column("route", sa.String(8), nullable=False),
    sa.Column("kind", sa.String(24), nullable=False),
    sa.Column("from_clearing", sa.String(8), nullable=False),
    sa.Column("from_account", sa.String(64), nullable=False),
    sa.Column("to_bankgood", sa.String(64), nullable=False),
    sa.Column("to_clearing", sa.String(8), nullable=False),
    sa.Column("to_account", sa.String(64), nullable=False),
    sa.Column("amount", Money, nullable=False),
    sa.Column("intended_at", UtcDateTime, nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("finished", sa.Boolean, nullable=False, index=True),
    sa.Column("outcome", sa.String(16)),
    sa.Column("counted_outcome", sa.String(16)),
    sa.Column("final_status", sa.String(8)),
    sa.Column("stuck_step", sa.String(16)),
    sa.Column("message", sa.String(255)),
    sa.Column("finished_at", UtcDateTime),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    *[
        column
        for step in ALL_STEPS
        for column in (
            sa.Column(f"{step.value}_at", UtcDateTime),
            sa.Column(f"{step.value}_since", sa.Float),
            sa.Column(f"{step.value}_seconds", sa.Float),
        )
    ],
)

simulations = sa.Table(
    "twin_simulations", metadata,
    sa.Column("simulation_id", sa.String(36), primary_key=True),
    sa.Column("instance_id", sa.String(63), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("planned", sa.Integer, nullable=False),
    sa.Column("dispatched", sa.Integer, nullable=False),
    sa.Column("dropped", sa.Integer, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("finished_at", UtcDateTime),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

deposits = sa.Table(
    "twin_deposits", metadata,
    sa.Column("deposit_id", sa.String(36), primary_key=True),
    sa.Column("instance_id", sa.String(63), nullable=False),
    sa.Column("clearing_number", sa.String(8), nullable=False),
    sa.Column("account_number", sa.String(64), nullable=False),
    sa.Column("amount", Money, nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
)

TABLES = {"payment": payments, "simulation": simulations, "deposit": deposits}
PRIMARY_KEYS = {"payment": "payment_id", "simulation": "simulation_id", "deposit": "deposit_id"}

# Deposit reasons written by the tracking package (provisioning writes "initial" and
# "top_up" too): the balance an adopted account had when this ledger first saw it,
# and the folded effect of pruned payments.
OPENING = "opening"
CARRY_FORWARD = "carry_forward"

# Rejection messages after which the request may still have reached the bank (the
# sender's timeouts, dropped connections, unreadable 202s, unconfirmed Kafka writes):
# the books give such a payment a range, so it is never folded into an exact amount.
# Must cover ``bgmock_twin.books.sources.AMBIGUOUS_REJECTIONS`` (a test checks it).
AMBIGUOUS_REJECTIONS = (": timeout", ": connection", ": bad_body", "not produced")

PRUNE_QUIET = timedelta(minutes=10)  # rows written more recently than this are kept
PRUNE_BATCH = 2000  # payments deleted (and carried forward) per transaction


# --- rows <-> payments (pure) -----------------------------------------------------------
def payment_row(p: Payment, now_utc: datetime) -> dict[str, Any]:
    row: dict[str, Any] = {
        "payment_id": p.payment_id,
        "transaction_id": str(p.transaction_id) if p.transaction_id else None,
        "simulation_id": p.simulation_id,
        "instance_id": p.instance_id,
        "channel": p.channel.value,
        "route": p.route.value,
        "kind": p.kind.value,
        "from_clearing": p.from_clearing,
        "from_account": p.from_account,
        "to_bankgood": p.to_bankgood,
        "to_clearing": p.to_clearing,
        "to_account": p.to_account,
        "amount": p.amount,
        "intended_at": p.intended_at,
        "status": p.status,
        "state": p.state,
        "finished": p.finished,
        "outcome": p.outcome.value if p.outcome else None,
        "counted_outcome": p.counted.value if p.counted else None,
        "final_status": p.final_status.value if p.final_status else None,
        "stuck_step": p.stuck_step.value if p.stuck_step else None,
        "message": p.message,
        "finished_at": p.finished_at,
        "updated_at": now_utc,
    }
    for step in ALL_STEPS:
        mark = p.steps.get(step)
        row[f"{step.value}_at"] = mark.at if mark else None
        row[f"{step.value}_since"] = mark.since_intended if mark else None
        row[f"{step.value}_seconds"] = mark.duration if mark else None
    return row


def payment_from_row(row: dict[str, Any], now_mono: float, now_utc: datetime) -> Payment:
    """A payment read back after a restart. Its intended send time is re-anchored on
    this process's monotonic clock through the wall clock (the only clock shared
    with the previous process)."""
    intended_at: datetime = row["intended_at"]
    steps = {}
    for step in ALL_STEPS:
        at = row.get(f"{step.value}_at")
        if at is not None:
            steps[step] = StepMark(
                at, float(row.get(f"{step.value}_since") or 0.0),
                float(row.get(f"{step.value}_seconds") or 0.0),
            )
    return Payment(
        payment_id=row["payment_id"],
        channel=Channel(row["channel"]),
        route=Route(row["route"]),
        kind=Kind(row["kind"]),
        from_clearing=row["from_clearing"],
        from_account=row["from_account"],
        to_bankgood=row["to_bankgood"],
        to_clearing=row["to_clearing"],
        to_account=row["to_account"],
        amount=row["amount"],
        intended_at=intended_at,
        intended_mono=now_mono - (now_utc - intended_at).total_seconds(),
        simulation_id=row["simulation_id"],
        instance_id=row["instance_id"],
        transaction_id=uuid.UUID(row["transaction_id"]) if row["transaction_id"] else None,
        steps=steps,
        final_status=Status(row["final_status"]) if row["final_status"] else None,
        outcome=Outcome(row["outcome"]) if row["outcome"] else None,
        counted=Outcome(row["counted_outcome"]) if row["counted_outcome"] else None,
        stuck_step=Step(row["stuck_step"]) if row["stuck_step"] else None,
        message=row["message"],
        finished_at=row["finished_at"],
    )


def carry_effect(channel: str, outcome: str | None) -> tuple[int, int]:
    """What a settled payment did to the balances, in units of its amount:
    (source, destination). REST success moved the money; a Kafka-channel success
    credited the destination with money from outside (the source bank never saw
    it); failures and rejections left both untouched."""
    if outcome == Outcome.SUCCESS.value:
        return (0, 1) if channel == Channel.KAFKA.value else (-1, 1)
    return (0, 0)


def settled_clause() -> sa.ColumnElement[bool]:
    """Payments whose effect on the balances is final and known exactly: the rows the
    books turn into an exact effect (``books.sources.progress_of``). Success and
    failure; a rejection before any event unless the request may have arrived after
    all. A rejection followed by events, and anything unfinished, stays."""
    p = payments.c
    message = sa.func.coalesce(p.message, "")
    ambiguous = sa.or_(*[message.contains(marker, autoescape=True)
                         for marker in AMBIGUOUS_REJECTIONS])
    certain_rejection = sa.and_(p.outcome == Outcome.REJECTED.value, sa.or_(
        sa.and_(p.state == Step.ACCEPTED.value, p.channel == Channel.REST.value,
                p.transaction_id.is_not(None)),
        sa.and_(p.state.in_(("submitted", Step.ACCEPTED.value)), sa.not_(ambiguous)),
    ))
    return sa.and_(p.finished.is_(True), sa.or_(
        p.outcome.in_((Outcome.SUCCESS.value, Outcome.FAILED.value)), certain_rejection))


@dataclass(frozen=True, slots=True)
class PaymentQuery:
    status: str | None = None
    simulation_id: str | None = None
    since: datetime | None = None
    channel: str | None = None
    route: str | None = None
    limit: int = 100
    offset: int = 0


class LedgerUnavailable(Unavailable):
    """The ledger database cannot be read right now."""


# --- the ledger ---------------------------------------------------------------------------
class Ledger:
    def __init__(
        self,
        url: str,
        buffer_size: int = 100_000,
        flush_interval: float = 0.1,
        chunk_size: int = 1000,
    ) -> None:
        self.url = url
        self.buffer_size = buffer_size
        self.flush_interval = flush_interval
        self.chunk_size = chunk_size
        self.engine = _engine(url)
        self._lock = threading.Condition()
        self._pending: dict[tuple[str, str], tuple[dict[str, Any], int]] = {}
        self._inflight = 0
        self._seq = 0
        self._durable = 0
        self._schema_ready = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_available: list[Callable[[], None]] = []
        self._failing_since: float | None = None
        self._flush_requested = False

    # --- lifecycle -----------------------------------------------------------------------
    def open(self) -> bool:
        """Create the tables if needed; False (and retried by the writer) if the
        database is unavailable."""
        try:
            metadata.create_all(self.engine)
        except Exception as exc:
            metrics.LEDGER_WRITE_ERRORS.inc()
            log.warning("ledger_unavailable", url=mask_url(self.url), error=_short(exc))
            return False
        self._schema_ready = True
        return True

    @property
    def available(self) -> bool:
        return self._schema_ready and self._failing_since is None

    def on_available(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the writer thread) once the schema could be created,
        when ``open`` failed at start."""
        self._on_available.append(callback)

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Flush what is buffered (within ``timeout``) and stop the writer."""
        self.flush(timeout)
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._pending:
            log.warning("ledger_stopped_with_unwritten_rows", rows=len(self._pending))

    def close(self) -> None:
        self.engine.dispose()

    # --- writes -------------------------------------------------------------------------
    def write(self, kind: str, row: dict[str, Any]) -> int:
        """Buffer ``row`` (a whole row of table ``kind``); returns its sequence number."""
        key = (kind, str(row[PRIMARY_KEYS[kind]]))
        with self._lock:
            self._seq += 1
            if key not in self._pending and len(self._pending) + self._inflight >= \
                    self.buffer_size:
                metrics.LEDGER_DROPPED.inc()
                return self._seq
            self._pending[key] = (row, self._seq)
            metrics.LEDGER_BUFFERED.set(len(self._pending) + self._inflight)
            return self._seq

    def write_payment(self, payment: Payment, now_utc: datetime) -> int:
        return self.write("payment", payment_row(payment, now_utc))

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._seq

    @property
    def durable_seq(self) -> int:
        with self._lock:
            return self._durable

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
                if remaining <= 0 or self._thread is None:
                    return self._durable >= target
                self._lock.wait(min(remaining, 0.05))
            return True

    def _run(self) -> None:
        backoff = 0.2
        while True:
            with self._lock:
                # writes accumulate for one interval (a flush request cuts it short), so
                # the database sees a few batched transactions a second, not one per write
                if not self._stop.is_set() and not self._flush_requested:
                    self._lock.wait(self.flush_interval)
                self._flush_requested = False
                if not self._pending:
                    if self._stop.is_set():
                        return
                    continue
                batch = self._pending
                self._pending = {}
                self._inflight = len(batch)
                upto = self._seq
            try:
                if not self._schema_ready:
                    metadata.create_all(self.engine)
                    self._schema_ready = True
                    for callback in self._on_available:
                        callback()
                self._store(batch)
            except Exception as exc:
                metrics.LEDGER_WRITE_ERRORS.inc()
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning("ledger_write_failed", url=mask_url(self.url),
                                rows=len(batch), error=_short(exc))
                with self._lock:
                    for key, value in batch.items():
                        newer = self._pending.get(key)
                        if newer is None:
                            self._pending[key] = value
                    self._inflight = 0
                    metrics.LEDGER_BUFFERED.set(len(self._pending))
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, 5.0)
                continue
            if self._failing_since is not None:
                log.info("ledger_write_recovered",
                         outage_seconds=round(time.monotonic() - self._failing_since, 1))
                self._failing_since = None
            backoff = 0.2
            with self._lock:
                self._inflight = 0
                self._durable = max(self._durable, upto)
                metrics.LEDGER_BUFFERED.set(len(self._pending))
                self._lock.notify_all()

    def _store(self, batch: dict[tuple[str, str], tuple[dict[str, Any], int]]) -> None:
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for (kind, _key), (row, _seq) in batch.items():
            by_kind.setdefault(kind, []).append(row)
        with self.engine.begin() as conn:
            for kind, rows in by_kind.items():
                for start in range(0, len(rows), self.chunk_size):
                    _upsert(conn, TABLES[kind], PRIMARY_KEYS[kind],
                            rows[start:start + self.chunk_size])

    # --- reads ----------------------------------------------------------------------------
    def _read(self, statement: Any) -> list[dict[str, Any]]:
        try:
            with self.engine.connect() as conn:
                return [dict(r._mapping) for r in conn.execute(statement)]
        except Exception as exc:
            raise LedgerUnavailable(_short(exc)) from None

    def load_unfinished(self, instance_id: str, limit: int = 200_000) -> list[dict[str, Any]]:
        """This instance's payments still in flight (replicas sharing a ledger each
        follow only their own)."""
        return self._read(
            sa.select(payments)
            .where(payments.c.finished.is_(False), payments.c.instance_id == instance_id)
            .order_by(payments.c.intended_at).limit(limit)
        )

    def load_recent_finished(self, instance_id: str, since: datetime,
                             limit: int = 20_000) -> list[dict[str, Any]]:
        return self._read(
            sa.select(payments)
            .where(payments.c.finished.is_(True), payments.c.instance_id == instance_id,
                   payments.c.intended_at >= since)
            .order_by(payments.c.intended_at.desc()).limit(limit)
        )

    def query(self, q: PaymentQuery) -> list[dict[str, Any]]:
        statement = sa.select(payments)
        if q.status:
            statement = statement.where(payments.c.status == q.status)
        if q.simulation_id:
            statement = statement.where(payments.c.simulation_id == q.simulation_id)
        if q.since:
            statement = statement.where(payments.c.intended_at >= q.since)
        if q.channel:
            statement = statement.where(payments.c.channel == q.channel)
        if q.route:
            statement = statement.where(payments.c.route == q.route)
        statement = statement.order_by(
            payments.c.intended_at.desc(), payments.c.payment_id
        ).limit(q.limit).offset(q.offset)
        return self._read(statement)

    def get(self, identifier: str) -> dict[str, Any] | None:
        rows = self._read(
            sa.select(payments).where(sa.or_(payments.c.payment_id == identifier,
                                             payments.c.transaction_id == identifier)).limit(1)
        )
        return rows[0] if rows else None

    def count_by_status(self, simulation_id: str | None = None) -> dict[str, int]:
        statement = sa.select(payments.c.status, sa.func.count().label("n")) \
            .group_by(payments.c.status)
        if simulation_id is not None:
            statement = statement.where(payments.c.simulation_id == simulation_id)
        return {row["status"]: int(row["n"]) for row in self._read(statement)}

    def count_by_counted_outcome(self, simulation_id: str) -> dict[str, int]:
        statement = (
            sa.select(payments.c.counted_outcome, sa.func.count().label("n"))
            .where(payments.c.simulation_id == simulation_id)
            .group_by(payments.c.counted_outcome)
        )
        return {str(row["counted_outcome"] or "uncounted"): int(row["n"])
                for row in self._read(statement)}

    def durations(self, simulation_id: str) -> dict[str, list[float]]:
        """Each step's durations and the total (intended send to final step) of a
        simulation's finished, non-rejected payments."""
        columns = [payments.c.channel, payments.c.outcome,
                   *[payments.c[f"{s.value}_seconds"] for s in ALL_STEPS],
                   payments.c.settled_since, payments.c.completed_since]
        rows = self._read(
            sa.select(*columns).where(payments.c.simulation_id == simulation_id)
        )
        result: dict[str, list[float]] = {s.value: [] for s in ALL_STEPS}
        result["total"] = []
        for row in rows:
            for step in ALL_STEPS:
                value = row[f"{step.value}_seconds"]
                if value is not None:
                    result[step.value].append(float(value))
            if row["outcome"] in (Outcome.SUCCESS.value, Outcome.FAILED.value):
                total = row["completed_since"] if row["channel"] == Channel.KAFKA.value \
                    else row["settled_since"]
                if total is not None:
                    result["total"].append(float(total))
        return result

    def load_simulations(self) -> list[dict[str, Any]]:
        return self._read(sa.select(simulations).order_by(simulations.c.created_at))

    def load_deposits(self) -> list[dict[str, Any]]:
        return self._read(sa.select(deposits).order_by(deposits.c.at))

    def has_history(self, clearing: str, account: str, flush_timeout: float = 2.0) -> bool:
        """Whether the ledger holds anything that moved money on this account: a
        deposit of any reason (carried-forward payments included) or a payment from
        or to it. Rows still buffered are stored first. Raises ``LedgerUnavailable``
        when that cannot be told."""
        if not self.available or not self.flush(flush_timeout):
            raise LedgerUnavailable("ledger not writable: buffered rows not stored")
        d, p = deposits.c, payments.c
        checks = [
            sa.select(d.deposit_id).where(d.clearing_number == clearing,
                                          d.account_number == account).limit(1),
            sa.select(p.payment_id).where(p.from_clearing == clearing,
                                          p.from_account == account).limit(1),
            sa.select(p.payment_id).where(p.to_clearing == clearing,
                                          p.to_account == account).limit(1),
        ]
        try:
            with self.engine.connect() as conn:
                # one by one: the deposits answer for nearly every account, the scans of
                # the (unindexed) payment columns only run for a really new account
                return any(conn.execute(check).first() is not None for check in checks)
        except Exception as exc:
            raise LedgerUnavailable(_short(exc)) from None

    # --- retention --------------------------------------------------------------------------
    def prune(
        self,
        max_age: timedelta,
        max_payments: int,
        now_utc: datetime,
        *,
        followed: Callable[[], Iterable[str]] | None = None,
        instance_id: str = "",
        quiet: timedelta = PRUNE_QUIET,
        batch_size: int = PRUNE_BATCH,
        flush_timeout: float = 10.0,
    ) -> int:
        """Delete settled payments (``settled_clause``) intended before ``now_utc -
        max_age``, then the oldest settled ones while there are more than
        ``max_payments`` rows, folding their effect into ``carry_forward`` deposits;
        delete finished simulations older than ``max_age``. Returns how many
        payments were deleted.

        Kept whatever their age: unfinished payments (stuck ones included: they may
        still move money), payments ``followed()`` names (the tracker may still
        write them) and rows written within ``quiet`` of ``now_utc`` (a payment that
        started being followed after that call). Buffered rows are stored first, so
        no older snapshot of a deleted payment can arrive afterwards; raises
        ``LedgerUnavailable`` if they cannot be.
        """
        keep = frozenset(followed()) if followed is not None else frozenset()
        if not self.flush(flush_timeout):
            raise LedgerUnavailable("buffered rows could not be stored before pruning")
        cutoff = now_utc - max_age
        p = payments.c
        settled = sa.and_(settled_clause(), p.updated_at < now_utc - quiet)
        with self.engine.connect() as conn:
            total = int(conn.execute(sa.select(sa.func.count()).select_from(payments))
                        .scalar_one())
        over = max(0, total - max_payments)  # rows the count limit still wants gone
        deleted = 0
        after: tuple[datetime, str] | None = None
        while True:
            page = sa.select(p.payment_id, p.intended_at).where(settled)
            if after is not None:
                page = page.where(sa.or_(
                    p.intended_at > after[0],
                    sa.and_(p.intended_at == after[0], p.payment_id > after[1])))
            with self.engine.connect() as conn:
                rows = conn.execute(page.order_by(p.intended_at, p.payment_id)
                                    .limit(batch_size)).all()
            if not rows:
                break
            after = (rows[-1][1], rows[-1][0])
            chosen: list[str] = []
            done = False
            for payment_id, intended_at in rows:
                if intended_at >= cutoff and over - len(chosen) <= 0:
                    done = True
                    break
                if payment_id not in keep:
                    chosen.append(payment_id)
            removed = self._delete_settled(chosen, settled, instance_id)
            deleted += removed
            over -= removed
            if done or len(rows) < batch_size:
                break
        with self.engine.begin() as conn:
            conn.execute(sa.delete(simulations).where(
                simulations.c.created_at < cutoff, simulations.c.state != "running"))
        return deleted

    def _delete_settled(self, ids: Sequence[str], settled: sa.ColumnElement[bool],
                        instance_id: str) -> int:
        """Delete these payments (those still settled) and carry their effect
        forward, in one transaction."""
        if not ids:
            return 0
        p = payments.c
        columns = (p.channel, p.outcome, p.from_clearing, p.from_account, p.to_clearing,
                   p.to_account, p.amount)
        gone: Sequence[Any]
        with self.engine.begin() as conn:
            if conn.dialect.delete_returning:  # SQLite, PostgreSQL
                gone = conn.execute(sa.delete(payments).where(p.payment_id.in_(ids), settled)
                                    .returning(*columns)).all()
            else:  # read (locked) then delete exactly what was read
                locked = conn.execute(sa.select(p.payment_id, *columns).where(
                    p.payment_id.in_(ids), settled).with_for_update()).all()
                conn.execute(sa.delete(payments).where(
                    p.payment_id.in_([row.payment_id for row in locked])))
                gone = locked
            net: dict[tuple[str, str], Decimal] = {}
            for row in gone:
                source, destination = carry_effect(row.channel, row.outcome)
                if source:
                    key = (row.from_clearing, row.from_account)
                    net[key] = net.get(key, Decimal(0)) + source * row.amount
                if destination:
                    key = (row.to_clearing, row.to_account)
                    net[key] = net.get(key, Decimal(0)) + destination * row.amount
            for (clearing, account), amount in sorted(net.items()):
                if amount:
                    _carry_forward(conn, clearing, account, amount, instance_id)
        return len(gone)


def _carry_forward(conn: Connection, clearing: str, account: str, amount: Decimal,
                   instance_id: str) -> None:
    """Add ``amount`` to the account's one ``carry_forward`` deposit (created at the
    first prune), so the deposits stay few however often retention runs.

    Its time becomes now (wall clock, UTC): the books take a deposit as perhaps not
    applied yet only for a reconciliation that read the banks before it, i.e. one
    running during this prune - whose ledger read, if not one snapshot, may see the
    deleted payments and the carry both; as a range the carry cannot turn that into
    drift. Any later reconciliation takes it exactly."""
    at = datetime.now(UTC)
    d = deposits.c
    current = conn.execute(
        sa.select(d.deposit_id, d.amount, d.at)
        .where(d.reason == CARRY_FORWARD, d.clearing_number == clearing,
               d.account_number == account)
        .order_by(d.deposit_id).limit(1).with_for_update()
    ).first()
    if current is None:
        conn.execute(sa.insert(deposits).values(
            deposit_id=str(uuid.uuid4()), instance_id=instance_id, clearing_number=clearing,
            account_number=account, amount=amount, reason=CARRY_FORWARD, at=at))
        return
    updated = conn.execute(
        sa.update(deposits)
        .where(d.deposit_id == current.deposit_id, d.amount == current.amount)
        .values(amount=current.amount + amount, at=max(at, current.at))
    ).rowcount
    if updated != 1:  # changed under us: roll the whole batch back, the next run retries
        raise LedgerUnavailable(f"carry-forward deposit of {account} changed concurrently")


def _engine(url: str) -> Engine:
    parsed = resolve_database_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            engine = sa.create_engine(
                parsed, poolclass=StaticPool, connect_args={"check_same_thread": False}
            )
        else:
            engine = sa.create_engine(
                parsed, connect_args={"check_same_thread": False, "timeout": 10}
            )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            if database not in ("", ":memory:"):
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.close()

        return engine
    if parsed.get_backend_name() == "postgresql":
        return sa.create_engine(
            parsed, pool_pre_ping=True, pool_size=4, max_overflow=4, pool_timeout=5,
            connect_args={"connect_timeout": 3},
        )
    return sa.create_engine(parsed, pool_pre_ping=True)


@functools.lru_cache(maxsize=16)
def _upsert_statement(dialect: str, table: sa.Table, key: str) -> Any:
    """One statement object per table, so SQLAlchemy compiles it once."""
    insert = sqlite.insert(table) if dialect == "sqlite" else postgresql.insert(table)
    return insert.on_conflict_do_update(
        index_elements=[key],
        set_={c.name: insert.excluded[c.name] for c in table.columns if c.name != key},
    )


def _upsert(conn: Connection, table: sa.Table, key: str, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        conn.execute(_upsert_statement(name, table, key), list(rows))
        return
    ids = [row[key] for row in rows]
    conn.execute(sa.delete(table).where(table.c[key].in_(ids)))
    conn.execute(sa.insert(table), list(rows))


def _short(exc: BaseException) -> str:
    """An error without the SQL statement or parameters SQLAlchemy appends."""
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__
