"""``Ledger``: the one object the rest of the twin holds for its ledger.

The write-behind store with the reads (``queries``) and retention (``retention``)
on top, so callers keep one handle while each concern lives in its own module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from bgmock_twin.tracking.ledger import queries, retention
from bgmock_twin.tracking.ledger.queries import PaymentQuery
from bgmock_twin.tracking.ledger.rows import payment_row, record_from_row, state_of, step_of
from bgmock_twin.tracking.ledger.store import LedgerStore
from bgmock_twin.tracking.lifecycle import Payment, Step
from bgmock_twin.tracking.records import PaymentRecord

# How many payments a restart reads back at a time: as one list, 100k in flight were
# about 300 MB of row mappings at once, which the allocator kept after they were freed.
RESUME_CHUNK = 2_000


class Ledger(LedgerStore):
    """The twin's record of every synthetic payment, its simulations and deposits."""

    def write_payment(self, payment: Payment, now_utc: datetime) -> int:
        """The payment's whole row (and its steps): when it is registered, or whenever
        its whole state must be written again."""
        return self.write("payment", payment_row(payment, now_utc))

    def write_change(self, payment: Payment, step: Step | None, now_utc: datetime,
                     narrow: bool = False, transaction: bool = False) -> int:
        """What changed in a payment written before: its changed columns and the step
        it reached (``step``, None if none), appended; ``narrow``: only its furthest
        step moved (``state``), no other column; ``transaction``: its transaction id
        changed. Its whole row if its last write was dropped."""
        if self.needs_whole_row(payment.payment_id):
            return self.write_payment(payment, now_utc)
        return self.write_progress(
            payment.payment_id, payment.intended_at,
            None if narrow else state_of(payment, now_utc),
            payment.state, now_utc, step_of(payment, step) if step is not None else None,
            transaction and not narrow)

    # --- reads ------------------------------------------------------------------------------
    def load_unfinished(self, instance_id: str, limit: int = 200_000) -> list[dict[str, Any]]:
        """This instance's payments still in flight (replicas sharing a ledger each
        follow only their own)."""
        return queries.unfinished(self.engine, instance_id, limit)

    def load_recent_finished(self, instance_id: str, since: datetime,
                             limit: int = 20_000) -> list[dict[str, Any]]:
        return queries.recent_finished(self.engine, instance_id, since, limit)

    def unfinished_chunks(self, instance_id: str, limit: int = 200_000,
                          chunk_size: int = RESUME_CHUNK) -> Iterator[list[dict[str, Any]]]:
        """``load_unfinished`` a chunk at a time (each its own read, see
        ``RESUME_CHUNK``)."""
        return queries.unfinished_chunks(self.engine, instance_id, limit, chunk_size)

    def recent_finished_chunks(self, instance_id: str, since: datetime,
                               limit: int = 20_000, chunk_size: int = RESUME_CHUNK
                               ) -> Iterator[list[dict[str, Any]]]:
        """``load_recent_finished`` a chunk at a time."""
        return queries.recent_finished_chunks(self.engine, instance_id, since, limit,
                                              chunk_size)

    def known_transactions(self, transaction_ids: list[str]) -> set[str]:
        """Which of these transaction ids a stored payment holds (any instance)."""
        return queries.known_transactions(self.engine, transaction_ids)

    def query(self, q: PaymentQuery) -> list[PaymentRecord]:
        """Payments matching ``q``, newest first."""
        return [record_from_row(row) for row in queries.payment_rows(self.read_engine, q)]

    def query_chunks(self, q: PaymentQuery, chunk_size: int = 500
                     ) -> Iterator[list[PaymentRecord]]:
        """Payments matching ``q``, newest first, in bounded chunks (see
        ``queries.payment_row_chunks``): what exports stream from."""
        for rows in queries.payment_row_chunks(self.read_engine, q, chunk_size):
            yield [record_from_row(row) for row in rows]

    def get(self, identifier: str) -> PaymentRecord | None:
        """One payment by its payment id or its BGMock transaction id."""
        row = queries.payment_row_by_id(self.read_engine, identifier)
        return record_from_row(row) if row is not None else None

    def count_by_status(self, simulation_id: str | None = None) -> dict[str, int]:
        return queries.count_by_status(self.engine, simulation_id)

    def count_by_counted_outcome(self, simulation_id: str) -> dict[str, int]:
        return queries.count_by_counted_outcome(self.engine, simulation_id)

    def durations(self, simulation_id: str) -> dict[str, list[float]]:
        return queries.durations(self.engine, simulation_id)

    def load_simulations(self) -> list[dict[str, Any]]:
        return queries.all_simulations(self.engine)

    def load_deposits(self) -> list[dict[str, Any]]:
        return queries.all_deposits(self.engine)

    def has_history(self, clearing: str, account: str, flush_timeout: float = 2.0) -> bool:
        """See ``queries.has_history``; the rows still buffered are stored first."""
        return queries.has_history(self.engine, clearing, account,
                                   lambda: self.available and self.flush(flush_timeout))

    # --- retention --------------------------------------------------------------------------
    def prune(
        self,
        max_age: timedelta,
        max_payments: int,
        now_utc: datetime,
        *,
        followed: Callable[[], Iterable[str]] | None = None,
        instance_id: str = "",
        quiet: timedelta = retention.PRUNE_QUIET,
        batch_size: int = retention.PRUNE_BATCH,
        flush_timeout: float = 10.0,
    ) -> int:
        """See ``retention.prune``."""
        return retention.prune(self.engine, self.flush, max_age, max_payments, now_utc,
                               followed=followed, instance_id=instance_id, quiet=quiet,
                               batch_size=batch_size, flush_timeout=flush_timeout)
