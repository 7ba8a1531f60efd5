"""The ledger writer's statements: whole payment rows, the few columns that change
afterwards, and appended step rows, each batch sent as a few statements.

The writer stores thousands of changes a second (one per Kafka event followed), so
it does not go through SQLAlchemy's per-row parameter processing: the statements
are fixed text prepared once per dialect, the values are converted here exactly as
the column types (``schema.Money``, ``schema.UtcDateTime``) would convert them, and
on PostgreSQL a page of a thousand rows is one statement over one array per column
(``unnest``) instead of one per row. On SQLite a batch is a few multi-row statements
(``VALUES (...), (...)``, in power-of-two pages): ``executemany`` gives up the GIL
around every row's step and waits to get it back, which behind the busy sender
thread made a batch of a hundred rows take 80-370 ms of wall time for 1-9 ms of CPU,
against 13-15 ms as one statement (measured with a spinning thread beside it).
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

import functools
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bgmock_twin.contract import CENT
from bgmock_twin.tracking.ledger.rows import STEP_KEYS
from bgmock_twin.tracking.ledger.schema import (
    STATE_COLUMNS,
    TABLES,
    payment_steps,
    payments,
)

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
_STEP_KEYS = tuple((step.value, *keys) for step, *keys in STEP_KEYS)
PAGE = 1000  # rows per PostgreSQL statement (its arrays' size)


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
    """The value conversions of one dialect (SQLite or PostgreSQL); its subclasses hold
    the statements. Their text is built from the schema's own table and column names
    (``noqa: S608``); every value is a parameter."""

    def __init__(self, sqlite: bool) -> None:
        self._payment_conv = [_converter(n, sqlite) for n in PAYMENT_COLUMNS]
        self._state_conv = [_converter(n, sqlite) for n in UPDATED]

    def payment_values(self, row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(conv(row.get(name)) if conv else row.get(name)
                     for name, conv in zip(PAYMENT_COLUMNS, self._payment_conv, strict=True))

    def state_values(self, payment_id: str, state: Sequence[Any]) -> tuple[Any, ...]:
        """``UPDATED`` values of ``STATE_COLUMNS`` values, and the payment id."""
        return (*(conv(value) if conv else value
                  for value, conv in zip(state[1:], self._state_conv, strict=True)),
                payment_id)


_TABLE, _STEPS = payments.name, payment_steps.name
_UPSERT_SETS = ", ".join(f"{n} = excluded.{n}" for n in PAYMENT_COLUMNS if n != "payment_id")


# SQLite's limit on a statement's parameters (32766 since 3.32, 999 before)
SQLITE_MAX_PARAMETERS = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999
SQLITE_PAGE = 512  # the most rows in one SQLite statement (fewer for wide rows)
# UPDATE ... FROM came with SQLite 3.33 (2020); before it an update goes row by row
SQLITE_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33)


@dataclass(frozen=True)
class MultiRow:
    """One SQLite statement over many rows of ``width`` values: ``head`` + ``VALUES
    (?, ...), ...`` + ``tail``. A batch goes as pages of power-of-two sizes, so a
    connection's statement cache holds a few texts, not one per batch size."""

    head: str
    width: int
    tail: str = ""
    row_by_row: str | None = None  # the statement for one row, where SQLite is older

    def page_sizes(self, count: int) -> list[int]:
        """``count`` rows as pages: the largest first, each a power of two."""
        largest = 1 << (min(SQLITE_PAGE, SQLITE_MAX_PARAMETERS // self.width).bit_length() - 1)
        sizes = [largest] * (count // largest)
        rest = count % largest
        while rest:
            size = 1 << (rest.bit_length() - 1)
            sizes.append(size)
            rest -= size
        return sizes

    def text(self, rows: int) -> str:
        return _multi_row_text(self.head, self.width, self.tail, rows)

    def execute(self, cursor: Any, rows: Sequence[Sequence[Any]]) -> None:
        if self.row_by_row is not None and not SQLITE_UPDATE_FROM:
            cursor.executemany(self.row_by_row, rows)
            return
        start = 0
        for size in self.page_sizes(len(rows)):
            page = rows[start:start + size]
            start += size
            cursor.execute(self.text(size), [value for row in page for value in row])


@functools.lru_cache(maxsize=128)
def _multi_row_text(head: str, width: int, tail: str, rows: int) -> str:
    one = "(" + ", ".join("?" * width) + ")"
    return f"{head} VALUES {', '.join([one] * rows)}{tail}"


def _update_from_values(sets: Sequence[str]) -> MultiRow:
    """An UPDATE of ``sets`` from rows of (*values, payment id), joined on the key (the
    columns of SQLite's ``VALUES`` are ``column1``, ``column2``, ...)."""
    assignments = ", ".join(f"{name} = v.column{i}" for i, name in enumerate(sets, start=1))
    return MultiRow(
        f"UPDATE {_TABLE} SET {assignments} FROM (",  # noqa: S608
        len(sets) + 1, f") AS v WHERE {_TABLE}.payment_id = v.column{len(sets) + 1}",
        row_by_row=f"UPDATE {_TABLE} SET {', '.join(f'{n} = ?' for n in sets)} "  # noqa: S608
                   "WHERE payment_id = ?")


class SqliteStatements(Statements):
    """A few multi-row statements per batch (``MultiRow``)."""

    def __init__(self) -> None:
        super().__init__(sqlite=True)
        self.upsert_payments = MultiRow(
            f"INSERT INTO {_TABLE} ({', '.join(PAYMENT_COLUMNS)})",
            len(PAYMENT_COLUMNS), f" ON CONFLICT (payment_id) DO UPDATE SET {_UPSERT_SETS}")
        self.update_states = _update_from_values(UPDATED)
        self.update_transactions = _update_from_values(("transaction_id",))
        self.update_narrow = _update_from_values(("state", "updated_at"))
        self.insert_steps = MultiRow(
            f"INSERT INTO {_STEPS} ({', '.join(STEP_COLUMNS)})",
            len(STEP_COLUMNS), " ON CONFLICT DO NOTHING")


# --- PostgreSQL: a page of rows as one array literal per column (pure) --------------------------
def pg_text(value: object) -> str:
    """Text as an element of a PostgreSQL array literal: quoted, and escaped as the
    server's array input reads it (``NULL`` unquoted is the null)."""
    if value is None:
        return "NULL"
    if not isinstance(value, str):
        value = str(value)
    if "\\" in value or '"' in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{value}"'


def _pg_time(value: datetime | None) -> str:
    return "NULL" if value is None else value.isoformat()


def _pg_number(value: Decimal | float | None) -> str:
    return "NULL" if value is None else str(value)


def _pg_flag(value: bool | None) -> str:
    return "NULL" if value is None else ("t" if value else "f")


_PG_DIALECT = sa.engine.URL.create("postgresql").get_dialect()()


def _pg_element(column: sa.Column[Any]) -> Callable[[Any], str]:
    kind = column.type.impl if isinstance(column.type, sa.types.TypeDecorator) else column.type
    if isinstance(kind, sa.String):
        return pg_text
    if isinstance(kind, sa.DateTime):
        return _pg_time
    if isinstance(kind, sa.Boolean):
        return _pg_flag
    if isinstance(kind, sa.Numeric | sa.Float):  # Money, and the durations
        return _pg_number
    raise TypeError(f"no array element for the column {column.name}")


_PG_COLUMNS = {c.name: c for table in (payments, payment_steps) for c in table.columns}


@dataclass(frozen=True)
class Unnest:
    """A statement over ``unnest`` of one array parameter per column, each cast to its
    column's type: the server reads a page of rows as a few array literals, which costs
    it and the driver a third of what a multi-row ``VALUES`` list does (measured: 17 us
    against 51 us a step row, 34-54 us against 108-126 us a payment row)."""

    sql: str
    elements: tuple[Callable[[Any], str], ...]

    @classmethod
    def over(cls, head: str, columns: Sequence[str], tail: str) -> Unnest:
        """``head unnest(<one parameter per column>) tail``."""
        arrays = ", ".join(
            f"%s::{_PG_COLUMNS[c].type.compile(dialect=_PG_DIALECT)}[]" for c in columns)
        return cls(f"{head}unnest({arrays}){tail}",
                   tuple(_pg_element(_PG_COLUMNS[c]) for c in columns))

    def arrays(self, rows: Sequence[Sequence[Any]]) -> list[str]:
        """Rows as one array literal per column (pure)."""
        if not rows:
            return ["{}" for _ in self.elements]
        return ["{" + ",".join(map(element, column)) + "}"
                for element, column in zip(self.elements, zip(*rows, strict=True), strict=True)]

    def execute(self, cursor: Any, rows: Sequence[Sequence[Any]]) -> None:
        for start in range(0, len(rows), PAGE):
            cursor.execute(self.sql, self.arrays(rows[start:start + PAGE]))


class PgStatements(Statements):
    """One statement per page of a thousand rows (``Unnest``)."""

    def __init__(self) -> None:
        super().__init__(sqlite=False)
        self.upsert_payments = Unnest.over(
            f"INSERT INTO {_TABLE} ({', '.join(PAYMENT_COLUMNS)}) SELECT * FROM ",  # noqa: S608
            PAYMENT_COLUMNS, f" ON CONFLICT (payment_id) DO UPDATE SET {_UPSERT_SETS}")
        sets = ", ".join(f"{n} = v.{n}" for n in UPDATED)
        self.update_states = Unnest.over(
            f"UPDATE {_TABLE} AS p SET {sets} FROM ", (*UPDATED, "payment_id"),  # noqa: S608
            f" AS v({', '.join(UPDATED)}, payment_id) WHERE p.payment_id = v.payment_id")
        self.update_transactions = Unnest.over(
            f"UPDATE {_TABLE} AS p SET transaction_id = v.transaction_id FROM ",  # noqa: S608
            ("transaction_id", "payment_id"),
            " AS v(transaction_id, payment_id) WHERE p.payment_id = v.payment_id")
        self.update_narrow = Unnest.over(
            f"UPDATE {_TABLE} AS p SET state = v.state, updated_at = v.updated_at "  # noqa: S608
            "FROM ", ("state", "updated_at", "payment_id"),
            " AS v(state, updated_at, payment_id) WHERE p.payment_id = v.payment_id")
        self.insert_steps = Unnest.over(
            f"INSERT INTO {_STEPS} ({', '.join(STEP_COLUMNS)}) SELECT * FROM ",  # noqa: S608
            STEP_COLUMNS, " ON CONFLICT DO NOTHING")


_SQLITE, _POSTGRES = SqliteStatements(), PgStatements()
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
    dialect = conn.dialect.name
    if dialect == "sqlite":
        _store_sqlite(conn, _SQLITE, writes)
    elif dialect == "postgresql":
        _store_postgres(conn, _POSTGRES, writes)
    else:
        _store_with_core(conn, writes)
    for kind, group in writes.others.items():
        upsert(conn, TABLES[kind], _key(kind), group)


def _key(kind: str) -> str:
    return str(TABLES[kind].primary_key.columns.values()[0].name)


def _store_sqlite(conn: Connection, st: SqliteStatements, w: Writes) -> None:
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    at = _LastTime(sqlite_time)
    try:
        if w.whole:
            st.upsert_payments.execute(cursor, [st.payment_values(r) for r in w.whole])
        if w.transactions:
            st.update_transactions.execute(cursor, [(tx, p) for p, tx in w.transactions.items()])
        if w.full:
            st.update_states.execute(cursor, [st.state_values(p, s) for p, s in w.full.items()])
        if w.narrow:
            st.update_narrow.execute(cursor, [(state, at(updated), p) for p, (
                state, updated) in w.narrow.items()])
        if w.steps:
            intended_at = _LastTime(sqlite_time)  # a payment's steps come one after another
            st.insert_steps.execute(cursor, [
                (intended_at(intended), p, step, at(when), since, seconds)
                for p, intended, (step, when, since, seconds) in w.steps])
    finally:
        cursor.close()


def _store_postgres(conn: Connection, st: PgStatements, w: Writes) -> None:
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        if w.whole:
            # one row per payment in a statement: ON CONFLICT cannot touch a row twice
            latest = {r["payment_id"]: r for r in w.whole}
            st.upsert_payments.execute(cursor, [st.payment_values(r) for r in latest.values()])
        if w.transactions:
            st.update_transactions.execute(cursor, [(tx, p) for p, tx in w.transactions.items()])
        if w.full:
            st.update_states.execute(cursor, [st.state_values(p, s) for p, s in w.full.items()])
        if w.narrow:
            st.update_narrow.execute(cursor, [(state, pg_time(updated), p)
                                              for p, (state, updated) in w.narrow.items()])
        if w.steps:
            st.insert_steps.execute(cursor, [
                (pg_time(intended), p, step, pg_time(when), since, seconds)
                for p, intended, (step, when, since, seconds) in w.steps])
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
