"""One database per emulated service, through SQLAlchemy Core.

Without a URL a service gets a private in-memory SQLite database: one connection
kept open for the emulator's lifetime, handed out by a one-slot pool, so every
user of the engine (the emulator's threads and the twin's reconciliation alike)
is serialised and sees committed data only. With a URL (e.g. PostgreSQL) the
engine is pooled.

Accounts are written as Hibernate writes a ``@Version`` entity: the row is read
without a lock, and the update is a compare-and-set on the version read
(``UPDATE ... SET version = v + 1 WHERE account_id = ? AND version = v``). When
another writer committed in between, the update touches no row and the whole
transaction fails with ``StaleAccount`` (Hibernate's optimistic-lock failure),
on SQLite and PostgreSQL alike. Transaction rows (outgoing, the clearing's) are
still read ``FOR UPDATE`` where the database has row locks, as their handlers
are not the racing writers the contract describes.
"""

from __future__ import annotations

import sqlite3
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import QueuePool

from bgmock_twin.contract import CENT
from bgmock_twin.database_urls import resolve_database_url

# SQLite has no DECIMAL; SQLAlchemy stores Numeric(19, 2) as REAL and says so once.
# Amounts are always computed in Python as Decimal and written already rounded, so
# the round trip is exact for the magnitudes BGMock handles (< 1e13).
warnings.filterwarnings(
    "ignore", message=r"Dialect sqlite\+pysqlite does \*not\* support Decimal objects natively"
)

# The longest a request waits for the in-memory database's single connection.
SQLITE_CHECKOUT_TIMEOUT_SECONDS = 30


class _KeptOpen(sqlite3.Connection):
    """The in-memory database lives as long as its one connection: the pool may
    'close' it (on dispose or invalidation) without losing the data."""

    def close(self) -> None:
        return None

    def really_close(self) -> None:
        super().close()


def utcnow() -> datetime:
    """Naive UTC, like a ``LocalDateTime`` on a server running in UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


# numeric(19, 2): 17 digits before the point.
MAX_AMOUNT = Decimal("1e17")


def money(value: Decimal) -> Decimal:
    """An amount as ``numeric(19, 2)`` stores it (PostgreSQL rounds half up).
    Raises ``ValueError`` for what the column cannot hold."""
    if not value.is_finite() or abs(value) >= MAX_AMOUNT:
        raise ValueError("amount out of range")
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


class StaleAccount(Exception):
    """An account changed between its read and its compare-and-set update (BGMock's
    ``ObjectOptimisticLockingFailureException``): nothing of the transaction is kept.
    On REST the caller answers 500; a listener retries the record."""

    def __init__(self, account_number: str) -> None:
        super().__init__(f"Row was updated or deleted by another transaction "
                         f"(account {account_number})")
        self.account_number = account_number


_OUTBOX_WRITTEN = "bgmock_outbox_written"


def note_outbox_row(conn: Connection) -> None:
    """Mark ``conn``'s transaction as one that writes an outbox row (``Database.begin``
    counts it in ``outbox_commits`` once committed)."""
    conn.info[_OUTBOX_WRITTEN] = True


class Database:
    """An engine plus the transaction helper the services use."""

    def __init__(self, url: str | None, metadata: sa.MetaData, name: str) -> None:
        self.name = name
        self.url = url
        self._sqlite_memory: _KeptOpen | None = None
        self._outbox_commits = 0
        self._commits_lock = threading.Lock()
        if url is None:
            memory = sqlite3.connect(":memory:", check_same_thread=False, factory=_KeptOpen)
            self._sqlite_memory = memory
            self.engine: Engine = sa.create_engine(
                "sqlite://", creator=lambda: memory, poolclass=QueuePool,
                pool_size=1, max_overflow=0, pool_timeout=SQLITE_CHECKOUT_TIMEOUT_SECONDS,
            )
        elif (resolved := resolve_database_url(url)).get_backend_name() == "sqlite":
            self.engine = sa.create_engine(
                resolved, poolclass=QueuePool, pool_size=1, max_overflow=0,
                pool_timeout=SQLITE_CHECKOUT_TIMEOUT_SECONDS,
                connect_args={"check_same_thread": False, "timeout": 30},
            )
        else:
            self.engine = sa.create_engine(
                resolved, pool_size=10, max_overflow=20, pool_pre_ping=True, pool_timeout=30,
            )
        self.row_locks = self.engine.dialect.name == "postgresql"
        metadata.create_all(self.engine)

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """One database transaction: committed on success, rolled back on error."""
        with self.engine.begin() as conn:
            try:
                yield conn
            finally:
                wrote_outbox = bool(conn.info.pop(_OUTBOX_WRITTEN, False))
        if wrote_outbox:
            with self._commits_lock:
                self._outbox_commits += 1

    @property
    def outbox_commits(self) -> int:
        """Transactions that wrote outbox rows (``note_outbox_row``) committed so far,
        each counted once its commit returned: a reader that saw a count and then read
        the outbox has seen every row committed before that count (the publisher's
        idle beats)."""
        return self._outbox_commits

    def locked(self, select: sa.Select[Any]) -> sa.Select[Any]:
        """``SELECT ... FOR UPDATE`` where the database has row locks."""
        return select.with_for_update() if self.row_locks else select

    def dispose(self) -> None:
        self.engine.dispose()
        if self._sqlite_memory is not None:
            self._sqlite_memory.really_close()
            self._sqlite_memory = None


def run_in(
    db: Database,
    conn: Connection | None,
    body: Callable[[Connection], str],
    duplicates: bool = True,
) -> str:
    """Run an event handler's ``body`` in the caller's transaction (a listener's
    batch) or in a transaction of its own. In its own transaction, a unique
    violation means the same event was handled concurrently: ``"duplicate"``."""
    if conn is not None:
        return body(conn)
    try:
        with db.begin() as own:
            return body(own)
    except IntegrityError:
        if not duplicates:
            raise
        return "duplicate"
