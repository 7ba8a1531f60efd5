"""The ledger writer's statements: whole payment rows, the few columns that change
afterwards, and appended step rows, each batch sent with one DBAPI ``executemany``.

The writer stores thousands of changes a second (one per Kafka event followed), so
it does not go through SQLAlchemy's per-row parameter processing: the statements
are fixed text prepared once per dialect, the values are converted here exactly as
the column types (``schema.Money``, ``schema.UtcDateTime``) would convert them, and
on PostgreSQL a batch is one ``execute_values`` round trip instead of one per row.
Other databases go through SQLAlchemy Core, as before.

A batch arrives as ``(kind, row)`` pairs (see ``store``):

- ``payment``: a payment's whole flat mapping (``rows.payment_row``): its row is
  upserted and the steps it carries are appended;
- ``progress``: ``{"payment_id", "intended_at", "full", "tx", "state", "updated_at",
  "steps"}`` (``tx``: the transaction id changed), what
  changed since: the ``STATE_COLUMNS`` values (``full``, a tuple) when more than
  the furthest step changed, else only ``state`` and ``updated_at`` (the narrow
  update, which touches no indexed column), and new step tuples (step, at, since,
  seconds);
- ``payment_state`` / ``payment_step``: the same, one row each (spill files; a
  state row with only ``state`` and ``updated_at`` is a narrow update);
- ``simulation`` / ``deposit``: whole rows, upserted with Core.

Payments are written before the progress of any payment, so an update never comes
before the row it updates in one batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bgmock_twin.contract import CENT
from bgmock_twin.tracking.ledger.schema import (
    STATE_COLUMNS,
    TABLES,
    payment_steps,
    payments,
    step_keys,
)
from bgmock_twin.tracking.lifecycle import ALL_STEPS

Row = tuple[str, dict[str, Any]]
StepTuple = tuple[str, datetime, float, float]  # step, at, since intended, seconds

PAYMENT_COLUMNS = tuple(c.name for c in payments.columns)
STEP_COLUMNS = ("intended_at", "payment_id", "step", "at", "since_intended", "seconds")
_MONEY = frozenset(c.name for c in payments.columns if c.name == "amount")
_TIMES = frozenset(c.name for c in payments.columns
                   if isinstance(c.type, sa.types.TypeDecorator)
                   and c.type.impl.__class__ is sa.DateTime)
_FLAGS = frozenset(c.name for c in payments.columns if isinstance(c.type, sa.Boolean))
# A full update sets every changing column but the transaction id, which changes once
# (the 202, or a re-match) and is set on its own then: setting an indexed column,
# even to its own value, rewrites its index entry (measured 3x the cost in SQLite).
assert STATE_COLUMNS[0] == "transaction_id"
UPDATED = STATE_COLUMNS[1:]
_STEP_KEYS = tuple((step.value, *step_keys(step.value)) for step in ALL_STEPS)
_PG_CASTS = {"amount": "numeric", "finished": "boolean", "refusal_ambiguous": "boolean",
             "intended_at": "timestamptz",
             "at": "timestamptz", "since_intended": "float8", "seconds": "float8",
             **{name: "timestamptz" for name in _TIMES}}
PAGE = 1000  # rows per PostgreSQL ``execute_values`` statement


# --- values as the driver takes them (pure) -----------------------------------------------
def sqlite_time(value: datetime | None) -> str | None:
    """A timestamp as SQLAlchemy's SQLite ``DateTime`` stores it (naive UTC text)."""
    if value is None:
        return None
    if value.tzinfo is not None and value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    # "YYYY-MM-DD HH:MM:SS.ffffff" (without the "+00:00" of an aware UTC time)
    return value.isoformat(" ", "microseconds")[:26]


class _LastTime:
    """``convert`` of the timestamp seen last, remembered: the changes of one poll
    share one ``updated_at``."""

    def __init__(self, convert: Any) -> None:
        self.convert = convert
        self.value: datetime | None = None
        self.text: Any = None

    def __call__(self, value: datetime | None) -> Any:
        if value is not self.value:
            self.value, self.text = value, self.convert(value)
        return self.text


def pg_time(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _money(value: Any, sqlite: bool) -> Any:
    if value is None:
        return None
    amount = Decimal(value).quantize(CENT)
    return format(amount, "f") if sqlite else amount


def _converter(name: str, sqlite: bool) -> Any:
    if name in _MONEY:
        return lambda v: _money(v, sqlite)
    if name in _TIMES or name == "at":
        return sqlite_time if sqlite else pg_time
    if name in _FLAGS:
        return (lambda v: None if v is None else int(bool(v))) if sqlite else \
            (lambda v: None if v is None else bool(v))
    return None


class Statements:
    """The statements and value conversions of one dialect (SQLite or PostgreSQL).
    Their text is built from the schema's own table and column names (``noqa: S608``);
    every value is a parameter."""

    def __init__(self, dialect: str) -> None:
        self.sqlite = dialect == "sqlite"
        self._payment_conv = [_converter(n, self.sqlite) for n in PAYMENT_COLUMNS]
        self._state_conv = [_converter(n, self.sqlite) for n in UPDATED]
        self._time = sqlite_time if self.sqlite else pg_time
        table, steps = payments.name, payment_steps.name
        updates = ", ".join(f"{n} = excluded.{n}" for n in PAYMENT_COLUMNS if n != "payment_id")
        if self.sqlite:
            marks = ", ".join("?" for _ in PAYMENT_COLUMNS)
            self.upsert_payments = (
                f"INSERT INTO {table} ({', '.join(PAYMENT_COLUMNS)}) VALUES ({marks}) "  # noqa: S608
                f"ON CONFLICT (payment_id) DO UPDATE SET {updates}")
            sets = ", ".join(f"{n} = ?" for n in UPDATED)
            self.update_states = f"UPDATE {table} SET {sets} WHERE payment_id = ?"  # noqa: S608
            self.update_transactions = \
                f"UPDATE {table} SET transaction_id = ? WHERE payment_id = ?"  # noqa: S608
            self.update_narrow = \
                f"UPDATE {table} SET state = ?, updated_at = ? WHERE payment_id = ?"  # noqa: S608
            self.insert_steps = (
                f"INSERT INTO {steps} ({', '.join(STEP_COLUMNS)}) "  # noqa: S608
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")
        else:
            self.upsert_payments = (
                f"INSERT INTO {table} ({', '.join(PAYMENT_COLUMNS)}) VALUES %s "  # noqa: S608
                f"ON CONFLICT (payment_id) DO UPDATE SET {updates}")
            self.payments_template = _template(PAYMENT_COLUMNS)
            sets = ", ".join(f"{n} = v.{n}" for n in UPDATED)
            self.update_states = (
                f"UPDATE {table} AS p SET {sets} FROM (VALUES %s) "  # noqa: S608
                f"AS v({', '.join(UPDATED)}, payment_id) WHERE p.payment_id = v.payment_id")
            self.states_template = _template((*UPDATED, "payment_id"))
            self.update_transactions = (
                f"UPDATE {table} AS p SET transaction_id = v.transaction_id "  # noqa: S608
                "FROM (VALUES %s) AS v(transaction_id, payment_id) "
                "WHERE p.payment_id = v.payment_id")
            self.update_narrow = (
                f"UPDATE {table} AS p SET state = v.state, updated_at = v.updated_at "  # noqa: S608
                "FROM (VALUES %s) AS v(state, updated_at, payment_id) "
                "WHERE p.payment_id = v.payment_id")
            self.narrow_template = _template(("state", "updated_at", "payment_id"))
            self.insert_steps = (
                f"INSERT INTO {steps} ({', '.join(STEP_COLUMNS)}) VALUES %s "  # noqa: S608
                "ON CONFLICT DO NOTHING")
            self.steps_template = _template(STEP_COLUMNS)

    def payment_values(self, row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(conv(row.get(name)) if conv else row.get(name)
                     for name, conv in zip(PAYMENT_COLUMNS, self._payment_conv, strict=True))

    def state_values(self, payment_id: str, state: Sequence[Any]) -> tuple[Any, ...]:
        """``UPDATED`` values of ``STATE_COLUMNS`` values, and the payment id."""
        return (*(conv(value) if conv else value
                  for value, conv in zip(state[1:], self._state_conv, strict=True)),
                payment_id)


def _template(columns: Sequence[str]) -> str:
    """An ``execute_values`` row template that types every value, so a column whose
    values in one page are all null still matches its column's type."""
    return "(" + ", ".join(f"%s::{_PG_CASTS[c]}" if c in _PG_CASTS else "%s"
                           for c in columns) + ")"


_STATEMENTS = {"sqlite": Statements("sqlite"), "postgresql": Statements("postgresql")}
_NARROW_KEYS = frozenset(("payment_id", "state", "updated_at"))


# --- a batch as statements --------------------------------------------------------------------
def steps_of_row(row: dict[str, Any]) -> list[StepTuple]:
    """The steps a payment's flat mapping carries (its ``<step>_at`` keys)."""
    found = []
    for step, at_key, since_key, seconds_key in _STEP_KEYS:
        at = row.get(at_key)
        if at is not None:
            found.append((step, at, float(row.get(since_key) or 0.0),
                          float(row.get(seconds_key) or 0.0)))
    return found


class Writes:
    """One batch sorted by statement: whole payment rows, full and narrow updates,
    step rows, whole rows of the other tables."""

    def __init__(self) -> None:
        self.whole: list[dict[str, Any]] = []
        self.full: dict[str, Sequence[Any]] = {}  # payment id -> STATE_COLUMNS values
        self.transactions: dict[str, str | None] = {}  # payment id -> new transaction id
        self.narrow: dict[str, tuple[str, datetime]] = {}  # payment id -> (state, at)
        self.steps: list[tuple[str, datetime, StepTuple]] = []  # payment id, intended
        self.others: dict[str, list[dict[str, Any]]] = {}

    def add(self, kind: str, row: dict[str, Any]) -> None:
        payment_id = row.get("payment_id")
        if kind == "progress":
            assert payment_id is not None
            full = row["full"]
            if full is not None:
                self.full[payment_id] = full
                self.narrow.pop(payment_id, None)
                if row.get("tx"):
                    self.transactions[payment_id] = full[0]
            else:
                self._narrow(payment_id, row["state"], row["updated_at"])
            steps = row["steps"]
            if steps:
                intended_at = row["intended_at"]
                if len(steps) == 1:  # the common case: one step per payment and batch
                    self.steps.append((payment_id, intended_at, steps[0]))
                else:
                    self.steps.extend([(payment_id, intended_at, step) for step in steps])
        elif kind == "payment":
            assert payment_id is not None
            self.whole.append(row)
            intended_at = row["intended_at"]
            self.steps.extend((payment_id, intended_at, step) for step in steps_of_row(row))
        elif kind == "payment_state":
            assert payment_id is not None
            if set(row) == _NARROW_KEYS:
                self._narrow(payment_id, row["state"], row["updated_at"])
            else:
                self.full[payment_id] = tuple(row.get(n) for n in STATE_COLUMNS)
                self.narrow.pop(payment_id, None)
                self.transactions[payment_id] = row.get("transaction_id")
        elif kind == "payment_step":
            assert payment_id is not None
            self.steps.append((payment_id, row["intended_at"], (
                row["step"], row["at"], float(row["since_intended"]), float(row["seconds"]))))
        else:
            self.others.setdefault(kind, []).append(row)

    def _narrow(self, payment_id: str, state: str, updated_at: datetime) -> None:
        full = self.full.get(payment_id)
        if full is None:
            self.narrow[payment_id] = (state, updated_at)
        else:
            self.full[payment_id] = with_narrow(full, state, updated_at)


_STATE_AT, _UPDATED_AT = STATE_COLUMNS.index("state"), STATE_COLUMNS.index("updated_at")


def with_narrow(full: Sequence[Any], state: str, updated_at: datetime) -> tuple[Any, ...]:
    """``STATE_COLUMNS`` values with a newer ``state`` and ``updated_at``."""
    values = list(full)
    values[_STATE_AT], values[_UPDATED_AT] = state, updated_at
    return tuple(values)


def store_rows(conn: Connection, rows: Iterable[Row]) -> None:
    """Store a batch of (kind, row) pairs in ``conn``'s transaction."""
    writes = Writes()
    for kind, row in rows:
        writes.add(kind, row)
    statements = _STATEMENTS.get(conn.dialect.name)
    if statements is None:
        _store_with_core(conn, writes)
    elif statements.sqlite:
        _store_sqlite(conn, statements, writes)
    else:
        _store_postgres(conn, statements, writes)
    for kind, group in writes.others.items():
        upsert(conn, TABLES[kind], _key(kind), group)


def _key(kind: str) -> str:
    return str(TABLES[kind].primary_key.columns.values()[0].name)


def _store_sqlite(conn: Connection, st: Statements, w: Writes) -> None:
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    at = _LastTime(sqlite_time)
    try:
        if w.whole:
            cursor.executemany(st.upsert_payments, [st.payment_values(r) for r in w.whole])
        if w.transactions:
            cursor.executemany(st.update_transactions,
                               [(tx, p) for p, tx in w.transactions.items()])
        if w.full:
            cursor.executemany(st.update_states,
                               [st.state_values(p, s) for p, s in w.full.items()])
        if w.narrow:
            cursor.executemany(st.update_narrow, [(state, at(updated), p) for p, (
                state, updated) in w.narrow.items()])
        if w.steps:
            intended_at = _LastTime(sqlite_time)  # a payment's steps come one after another
            cursor.executemany(st.insert_steps, [
                (intended_at(intended), p, step, at(when), since, seconds)
                for p, intended, (step, when, since, seconds) in w.steps])
    finally:
        cursor.close()


def _store_postgres(conn: Connection, st: Statements, w: Writes) -> None:
    from psycopg2.extras import execute_values

    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        if w.whole:
            # one row per payment in a statement: ON CONFLICT cannot touch a row twice
            latest = {r["payment_id"]: r for r in w.whole}
            execute_values(cursor, st.upsert_payments,
                           [st.payment_values(r) for r in latest.values()],
                           template=st.payments_template, page_size=PAGE)
        if w.transactions:
            execute_values(cursor, st.update_transactions,
                           [(tx, p) for p, tx in w.transactions.items()], page_size=PAGE)
        if w.full:
            execute_values(cursor, st.update_states,
                           [st.state_values(p, s) for p, s in w.full.items()],
                           template=st.states_template, page_size=PAGE)
        if w.narrow:
            execute_values(cursor, st.update_narrow,
                           [(state, pg_time(updated), p)
                            for p, (state, updated) in w.narrow.items()],
                           template=st.narrow_template, page_size=PAGE)
        if w.steps:
            execute_values(cursor, st.insert_steps,
                           [(pg_time(intended), p, step, pg_time(when), since, seconds)
                            for p, intended, (step, when, since, seconds) in w.steps],
                           template=st.steps_template, page_size=PAGE)
    finally:
        cursor.close()


def _store_with_core(conn: Connection, w: Writes) -> None:
    """Any other database: SQLAlchemy Core, row by row where it must."""
    names = {c.name for c in payments.columns}
    upsert(conn, payments, "payment_id",
           [{k: v for k, v in row.items() if k in names} for row in w.whole])
    p = payments.c
    for payment_id, state in w.full.items():
        conn.execute(sa.update(payments).where(p.payment_id == payment_id)
                     .values(dict(zip(STATE_COLUMNS, state, strict=True))))
    for payment_id, (furthest, updated_at) in w.narrow.items():
        conn.execute(sa.update(payments).where(p.payment_id == payment_id)
                     .values(state=furthest, updated_at=updated_at))
    s = payment_steps.c
    for payment_id, intended_at, (step, at, since, seconds) in w.steps:
        exists = conn.execute(sa.select(s.step).where(
            s.intended_at == intended_at, s.payment_id == payment_id, s.step == step)).first()
        if exists is None:
            conn.execute(sa.insert(payment_steps).values(
                intended_at=intended_at, payment_id=payment_id, step=step, at=at,
                since_intended=since, seconds=seconds))


def upsert(conn: Connection, table: sa.Table, key: str, rows: Sequence[dict[str, Any]]) -> None:
    """Whole rows of the small tables (simulations, deposits) through Core."""
    if not rows:
        return
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        conn.execute(_upsert_statement(name, table, key), list(rows))
        return
    ids = [row[key] for row in rows]
    conn.execute(sa.delete(table).where(table.c[key].in_(ids)))
    conn.execute(sa.insert(table), list(rows))


_UPSERTS: dict[tuple[str, str], Any] = {}


def _upsert_statement(dialect: str, table: sa.Table, key: str) -> Any:
    """One statement object per table, so SQLAlchemy compiles it once."""
    from sqlalchemy.dialects import postgresql, sqlite

    cached = _UPSERTS.get((dialect, table.name))
    if cached is None:
        insert = sqlite.insert(table) if dialect == "sqlite" else postgresql.insert(table)
        cached = insert.on_conflict_do_update(
            index_elements=[key],
            set_={c.name: insert.excluded[c.name] for c in table.columns if c.name != key},
        )
        _UPSERTS[(dialect, table.name)] = cached
    return cached
