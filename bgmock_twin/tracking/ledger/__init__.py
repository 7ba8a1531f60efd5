"""The twin's own record of every synthetic payment, its simulations and deposits.

Persisted with SQLAlchemy Core (``TWIN_DATABASE_URL``: an SQLite file by default,
PostgreSQL in production), so a restarted twin resumes following the payments in
flight and nothing it measured is lost. One module per concern:

- ``schema``: the SQL types, the tables, the engine of a ledger URL;
- ``rows``: a payment as a row and back (pure);
- ``store``: the write-behind buffer and its writer thread;
- ``bulk``: the writer's statements (whole rows, changed columns, appended step
  rows), each batch one DBAPI ``executemany``;
- ``spill``: rows unwritten at shutdown, kept in a file the next start reads back;
- ``queries``: every read the twin and its API make;
- ``retention``: pruning with the money carry-forward;
- ``upgrade``: the tables created, and older ledgers brought up to date, on open;
- ``core``: ``Ledger``, the store with the reads and retention on top.

The names below are the package's public surface (importable from here as before
the split).
"""

from bgmock_twin.tracking.ledger.core import Ledger
from bgmock_twin.tracking.ledger.queries import PaymentQuery
from bgmock_twin.tracking.ledger.retention import (
    PRUNE_BATCH,
    PRUNE_QUIET,
    carry_effect,
    settled_clause,
)
from bgmock_twin.tracking.ledger.rows import payment_from_row, payment_row, record_from_row
from bgmock_twin.tracking.ledger.schema import (
    CARRY_FORWARD,
    OPENING,
    PRIMARY_KEYS,
    TABLES,
    Money,
    UtcDateTime,
    deposits,
    metadata,
    payments,
    simulations,
)
from bgmock_twin.tracking.ledger.store import LedgerUnavailable

__all__ = [
    "CARRY_FORWARD", "OPENING", "PRIMARY_KEYS", "PRUNE_BATCH",
    "PRUNE_QUIET", "TABLES", "Ledger", "LedgerUnavailable", "Money", "PaymentQuery",
    "UtcDateTime", "carry_effect", "deposits", "metadata", "payment_from_row", "payment_row",
    "payments", "record_from_row", "settled_clause", "simulations",
]
