"""Ledgers for tests: a started twin ledger (stopped and closed afterwards), and a
ledger as an earlier version of the twin wrote it (for the upgrade on open)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from bgmock_twin.tracking.ledger import Ledger, payments
from bgmock_twin.tracking.ledger.schema import LEGACY_STEP_COLUMNS, UtcDateTime, make_engine


@contextmanager
def running_ledger(url: str, **options: Any) -> Iterator[Ledger]:
    book = Ledger(url, **options)
    assert book.open()
    book.start()
    try:
        yield book
    finally:
        book.stop(2)
        book.close()


def write_old_ledger(url: str, rows: list[dict[str, object]],
                     lacking: frozenset[str] = frozenset()) -> None:
    """A ledger as versions before ``twin_payment_steps`` wrote it: the steps in
    ``<step>_at/_since/_seconds`` columns of the payment's row, and without the
    payment columns named in ``lacking`` (added by later versions)."""
    old = sa.MetaData()
    table = sa.Table(payments.name, old, *[
        sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
        for c in payments.columns if c.name not in lacking], *[
        sa.Column(name, UtcDateTime if name.endswith("_at") else sa.Float)
        for name in LEGACY_STEP_COLUMNS])
    engine = make_engine(url)
    try:
        old.create_all(engine)
        with engine.begin() as conn:
            conn.execute(sa.insert(table), [
                {k: v for k, v in row.items() if k not in lacking} for row in rows])
    finally:
        engine.dispose()
