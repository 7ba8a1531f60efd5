"""The ledger's tables and the SQL types they need, and how a ledger URL becomes an engine.

Kept apart from the code that writes and reads the tables so the books (which read
them with their own statements) and the upgrade of older ledgers see one definition.
Money is exact on every backend and timestamps are UTC in and out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.pool import StaticPool

from bgmock_twin.contract import CENT
from bgmock_twin.database_urls import resolve_database_url
from bgmock_twin.tracking.lifecycle import ALL_STEPS


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
    # a rejection after which the request may have reached BGMock (``tracking.refusals``)
    sa.Column("refusal_ambiguous", sa.Boolean, nullable=False, default=False,
              server_default=sa.false()),
    # how the transaction id was found when the bank's 202 never reached the twin
    # (``tracking.rematch``: initiated_event or bank_database); null for the 202
    sa.Column("matched_by", sa.String(16)),
    sa.Column("finished_at", UtcDateTime),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    # the steps observed are rows of ``twin_payment_steps`` (below); ledgers written
    # before it keep their old ``<step>_at/_since/_seconds`` columns, unused once
    # ``upgrade`` copied them there
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

# --- the fleet: leases that replicas sharing one ledger take and renew (``leases``) ---
leases = sa.Table(
    "twin_leases", metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("holder", sa.String(63), nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Column("renewed_at", UtcDateTime, nullable=False),
)

# --- the fleet's shared simulations (``fleet_store``): one row per simulation that
# every live replica runs, its schedule's blocks as claimed by replicas, and each
# replica's share of it. Written directly (not through the write-behind buffer):
# a claim must be decided by the database before the block is sent.
fleet_runs = sa.Table(
    "twin_fleet_runs", metadata,
    sa.Column("simulation_id", sa.String(36), primary_key=True),
    sa.Column("creator", sa.String(63), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("planned", sa.Integer, nullable=False),
    sa.Column("block_size", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("starts_at", UtcDateTime, nullable=False),
    sa.Column("finished_at", UtcDateTime),
)

fleet_blocks = sa.Table(
    "twin_fleet_blocks", metadata,
    sa.Column("simulation_id", sa.String(36), primary_key=True),
    sa.Column("block", sa.Integer, primary_key=True),
    sa.Column("holder", sa.String(63), nullable=False),
    sa.Column("done", sa.Boolean, nullable=False, default=False),
    sa.Column("claimed_at", UtcDateTime, nullable=False),
    sa.Column("done_at", UtcDateTime),
)

fleet_shares = sa.Table(
    "twin_fleet_shares", metadata,
    sa.Column("simulation_id", sa.String(36), primary_key=True),
    sa.Column("instance_id", sa.String(63), primary_key=True),
    sa.Column("dispatched", sa.Integer, nullable=False),
    sa.Column("dropped", sa.Integer, nullable=False),
    sa.Column("sent", sa.Integer, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

# --- payment steps (issue 12): appended, never rewritten ------------------------------------
# One narrow row per step the twin observed of a payment, appended in batches by the
# ledger's writer; the payment's own row is written when it is registered and after
# that only its few summary columns change (``STATE_COLUMNS``). The steps of a
# payment are never rewritten: a step seen again is a repeat (``lifecycle``).
# The key starts with the payment's intended send time, so the steps of the payments
# in flight (recent ones) are appended at the end of the key's B-tree: keyed by the
# random payment id alone, each insert dirtied a page of its own and the cost grew
# with the ledger (measured in SQLite: 9 to 25 us a row from 0 to 400k rows; 4.6 us
# flat with this key). Readers know each payment's intended time (its row).
payment_steps = sa.Table(
    "twin_payment_steps", metadata,
    sa.Column("intended_at", UtcDateTime, primary_key=True),
    sa.Column("payment_id", sa.String(36), primary_key=True),
    sa.Column("step", sa.String(16), primary_key=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("since_intended", sa.Float, nullable=False),  # seconds, monotonic
    sa.Column("seconds", sa.Float, nullable=False),  # since the step before it
    sqlite_with_rowid=False,
)

# The columns of a payment's row that change after it was registered, in the order
# the ledger's bulk writer updates them.
STATE_COLUMNS = (
    "transaction_id", "status", "state", "finished", "outcome", "counted_outcome",
    "final_status", "stuck_step", "message", "refusal_ambiguous", "matched_by",
    "finished_at", "updated_at",
)

# Upgrades done once per database (``upgrade``): one row per upgrade's name.
upgrades = sa.Table(
    "twin_ledger_upgrades", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("done_at", UtcDateTime, nullable=False),
)


def step_keys(step: str) -> tuple[str, str, str]:
    """The keys of one step in a payment's flat mapping (``rows.payment_row``), which
    were its columns in ledgers before ``twin_payment_steps``."""
    return f"{step}_at", f"{step}_since", f"{step}_seconds"


LEGACY_STEP_COLUMNS = tuple(key for step in ALL_STEPS for key in step_keys(step.value))
# --- end of payment steps --------------------------------------------------------------------

TABLES = {"payment": payments, "simulation": simulations, "deposit": deposits}
PRIMARY_KEYS = {"payment": "payment_id", "simulation": "simulation_id", "deposit": "deposit_id"}

# Deposit reasons written by the tracking package (provisioning writes "initial" and
# "top_up" too): the balance an adopted account had when this ledger first saw it,
# and the folded effect of pruned payments.
OPENING = "opening"
CARRY_FORWARD = "carry_forward"


def make_engine(url: str, reader: bool = False) -> Engine:
    """An engine for a ledger URL: SQLite in WAL mode (or in memory, one shared
    connection), PostgreSQL with a small pool and short connect timeout.

    ``reader``: the engine of the API's reads, apart from the writer's, so readers
    never take the connections the writer needs; its SQLite connections are
    ``query_only``, its PostgreSQL pool small (heavy reads are bounded in the API)."""
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
            if reader:
                cursor.execute("PRAGMA query_only=ON")
            cursor.close()

        return engine
    if parsed.get_backend_name() == "postgresql":
        return sa.create_engine(
            parsed, pool_pre_ping=True, pool_size=2 if reader else 4,
            max_overflow=4, pool_timeout=10 if reader else 5,
            connect_args={"connect_timeout": 3},
        )
    return sa.create_engine(parsed, pool_pre_ping=True)


def is_in_memory(url: str) -> bool:
    """An in-memory SQLite ledger: one database per connection, so it cannot have a
    reader engine of its own."""
    parsed = resolve_database_url(url)
    return parsed.get_backend_name() == "sqlite" and (parsed.database or "") in ("", ":memory:")
