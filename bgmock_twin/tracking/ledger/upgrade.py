"""Ledgers written by earlier versions of the twin keep working: on open, the tables
that are missing are created and older tables get the columns added since.

The SQLite files and PostgreSQL databases users already have hold finished payments
whose money effect the books and retention still read, so an upgrade must give each
old row the value the old code would have derived. It runs once per database: a
column that exists is never filled again, and the copy of the old step columns into
``twin_payment_steps`` is recorded in ``twin_ledger_upgrades`` in the transaction
that made it.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateColumn

from bgmock_twin.tracking.ledger.schema import (
    LEGACY_STEP_COLUMNS,
    metadata,
    payment_steps,
    payments,
    step_keys,
    upgrades,
)
from bgmock_twin.tracking.lifecycle import ALL_STEPS

STEP_ROWS = "payment_step_rows"  # the name of the step columns' copy in ``upgrades``

# The old text rule, before the ambiguity of a refusal had its own column: the
# messages after which a rejected request may still have reached the bank. Used
# only to fill ``refusal_ambiguous`` of rows written before it existed.
LEGACY_AMBIGUOUS_MARKERS = (": timeout", ": connection", ": bad_body", "not produced")


def ensure_schema(engine: Engine) -> None:
    """Create the missing tables, then add the missing columns to the old ones."""
    metadata.create_all(engine)
    columns = {c["name"] for c in sa.inspect(engine).get_columns(payments.name)}
    if "refusal_ambiguous" not in columns:
        with engine.begin() as conn:
            add_refusal_ambiguous(conn)
    if "matched_by" not in columns:
        with engine.begin() as conn:
            add_matched_by(conn)
    if set(LEGACY_STEP_COLUMNS) <= columns:
        with engine.begin() as conn:
            done = conn.execute(sa.select(upgrades.c.name)
                                .where(upgrades.c.name == STEP_ROWS)).first()
            if done is None:
                copy_step_columns(conn)


def copy_step_columns(conn: Connection) -> None:
    """Copy the steps a ledger written before ``twin_payment_steps`` kept in its
    ``<step>_at/_since/_seconds`` columns into step rows (the old columns stay, no
    longer written or read), and record that it was done. Another replica doing it
    at the same moment makes the record's insert fail: the caller retries and finds
    it done."""
    for step in ALL_STEPS:
        at, since, seconds = step_keys(step.value)
        conn.execute(sa.text(
            f"INSERT INTO {payment_steps.name} "  # noqa: S608
            "(intended_at, payment_id, step, at, since_intended, seconds) "
            f"SELECT intended_at, payment_id, :step, {at}, COALESCE({since}, 0), "
            f"COALESCE({seconds}, 0) "
            f"FROM {payments.name} WHERE {at} IS NOT NULL ON CONFLICT DO NOTHING"),
            {"step": step.value})
    conn.execute(sa.insert(upgrades).values(name=STEP_ROWS, done_at=datetime.now(UTC)))


def add_matched_by(conn: Connection) -> None:
    """Add ``matched_by`` (null): every older payment got its id from the bank's 202
    or never got one (re-matching did not exist), so null is the value the old code
    meant. A concurrent upgrade makes this fail like ``add_refusal_ambiguous``."""
    column = CreateColumn(payments.c.matched_by).compile(dialect=conn.dialect)
    conn.execute(sa.text(f"ALTER TABLE {payments.name} ADD COLUMN {column}"))


def add_refusal_ambiguous(conn: Connection) -> None:
    """Add ``refusal_ambiguous`` (false) and set it on the rejections the old text
    rule took as ambiguous. Another replica upgrading at the same moment makes this
    fail (the column exists): the caller retries and finds it done."""
    column = CreateColumn(payments.c.refusal_ambiguous).compile(dialect=conn.dialect)
    conn.execute(sa.text(f"ALTER TABLE {payments.name} ADD COLUMN {column}"))
    p = payments.c
    conn.execute(sa.update(payments).where(
        p.outcome == "rejected",
        sa.or_(*[p.message.contains(marker, autoescape=True)
                 for marker in LEGACY_AMBIGUOUS_MARKERS]),
    ).values(refusal_ambiguous=True))
