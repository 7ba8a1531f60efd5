"""The fleet's shared simulations in the ledger: the statements ``tracking.fleet`` runs.

Every statement is short and direct (no write-behind): a block is sent only after
the database said it is this replica's, a stop is seen by the others on their next
poll, a dead replica's payments move to exactly one live replica. Conditional
``UPDATE``s and primary keys decide each race, as for the leases (``leases``): on
PostgreSQL a second writer waits for the first's row lock and re-reads the
condition. Every call raises ``LedgerUnavailable`` when the database cannot answer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from bgmock_twin.tracking.fleet_plan import BlockState
from bgmock_twin.tracking.ledger.schema import (
    fleet_blocks,
    fleet_runs,
    fleet_shares,
    leases,
    payments,
)
from bgmock_twin.tracking.ledger.store import LedgerUnavailable, short_error


@dataclass(frozen=True, slots=True)
class FleetRun:
    simulation_id: str
    creator: str
    spec: str
    planned: int
    block_size: int
    state: str
    created_at: datetime
    starts_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class ShareRow:
    instance_id: str
    dispatched: int
    dropped: int
    sent: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class PaymentCounts:
    """A simulation's payments in the ledger, read at one moment."""

    recorded: int
    outcomes: dict[str, int]  # counted outcome -> payments (the rest: not counted yet)

    @property
    def unfinished(self) -> int:
        return self.recorded - sum(self.outcomes.values())


class FleetStore:
    """The fleet tables, read and written by ``holder`` (this replica)."""

    def __init__(self, engine: Engine, holder: str) -> None:
        self.engine = engine
        self.holder = holder

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.IntegrityError:
            raise
        except Exception as exc:
            raise LedgerUnavailable(short_error(exc)) from None

    def _insert(self, table: sa.Table) -> Any:
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(table)

    # --- simulations -------------------------------------------------------------------------
    def create(self, run: FleetRun) -> None:
        with self._begin() as conn:
            conn.execute(sa.insert(fleet_runs).values(
                simulation_id=run.simulation_id, creator=run.creator, spec=run.spec,
                planned=run.planned, block_size=run.block_size, state=run.state,
                created_at=run.created_at, starts_at=run.starts_at))

    def runs(self, states: Sequence[str] | None = None) -> list[FleetRun]:
        statement = sa.select(fleet_runs)
        if states is not None:
            statement = statement.where(fleet_runs.c.state.in_(states))
        with self._begin() as conn:
            return [FleetRun(**row._mapping) for row in conn.execute(statement)]

    def run(self, simulation_id: str) -> FleetRun | None:
        with self._begin() as conn:
            row = conn.execute(sa.select(fleet_runs).where(
                fleet_runs.c.simulation_id == simulation_id)).first()
        return FleetRun(**row._mapping) if row is not None else None

    def end(self, simulation_id: str, state: str, at: datetime) -> bool:
        """Move a running simulation to ``state`` (stopped, finished): True if this
        call did it."""
        c = fleet_runs.c
        with self._begin() as conn:
            return bool(conn.execute(
                sa.update(fleet_runs).where(c.simulation_id == simulation_id,
                                            c.state == "running")
                .values(state=state, finished_at=at)).rowcount)

    # --- blocks ------------------------------------------------------------------------------
    def blocks(self, simulation_id: str) -> dict[int, BlockState]:
        c = fleet_blocks.c
        with self._begin() as conn:
            rows = conn.execute(sa.select(c.block, c.holder, c.done)
                                .where(c.simulation_id == simulation_id)).all()
        return {int(r.block): BlockState(r.holder, bool(r.done)) for r in rows}

    def claim(self, simulation_id: str, blocks: Sequence[int], now: datetime) -> list[int]:
        """Claim the blocks nobody holds; the ones this call got."""
        if not blocks:
            return []
        c = fleet_blocks.c
        statement = self._insert(fleet_blocks).values([
            {"simulation_id": simulation_id, "block": b, "holder": self.holder,
             "done": False, "claimed_at": now} for b in blocks
        ]).on_conflict_do_nothing().returning(c.block)
        with self._begin() as conn:
            return sorted(int(r.block) for r in conn.execute(statement))

    def take(self, simulation_id: str, block: int, holder: str, now: datetime) -> bool:
        """Take a block still held by ``holder`` (a replica that is gone), not done."""
        c = fleet_blocks.c
        with self._begin() as conn:
            return bool(conn.execute(
                sa.update(fleet_blocks).where(c.simulation_id == simulation_id,
                                              c.block == block, c.holder == holder,
                                              c.done.is_(False))
                .values(holder=self.holder, claimed_at=now)).rowcount)

    def mark_done(self, simulation_id: str, blocks: Sequence[int], now: datetime) -> None:
        if not blocks:
            return
        c = fleet_blocks.c
        with self._begin() as conn:
            conn.execute(sa.update(fleet_blocks).where(
                c.simulation_id == simulation_id, c.block.in_(list(blocks)),
                c.holder == self.holder).values(done=True, done_at=now))

    def last_done(self, simulation_id: str) -> datetime | None:
        c = fleet_blocks.c
        with self._begin() as conn:
            value = conn.execute(sa.select(sa.func.max(c.done_at))
                                 .where(c.simulation_id == simulation_id)).scalar()
        return value if isinstance(value, datetime) else None

    # --- shares ------------------------------------------------------------------------------
    def write_share(self, simulation_id: str, dispatched: int, dropped: int, sent: int,
                    now: datetime) -> None:
        values = {"simulation_id": simulation_id, "instance_id": self.holder,
                  "dispatched": dispatched, "dropped": dropped, "sent": sent, "updated_at": now}
        statement = self._insert(fleet_shares).values(values).on_conflict_do_update(
            index_elements=["simulation_id", "instance_id"],
            set_={k: values[k] for k in ("dispatched", "dropped", "sent", "updated_at")})
        with self._begin() as conn:
            conn.execute(statement)

    def shares(self, simulation_id: str) -> list[ShareRow]:
        c = fleet_shares.c
        with self._begin() as conn:
            rows = conn.execute(sa.select(c.instance_id, c.dispatched, c.dropped, c.sent,
                                          c.updated_at)
                                .where(c.simulation_id == simulation_id)
                                .order_by(c.instance_id)).all()
        return [ShareRow(r.instance_id, int(r.dispatched), int(r.dropped), int(r.sent),
                         r.updated_at) for r in rows]

    # --- payments ----------------------------------------------------------------------------
    def intended_times(self, simulation_id: str, since: datetime,
                       until: datetime) -> list[datetime]:
        """Intended send times of the simulation's stored payments in [since, until]."""
        p = payments.c
        with self._begin() as conn:
            return [r.intended_at for r in conn.execute(
                sa.select(p.intended_at).where(p.simulation_id == simulation_id,
                                               p.intended_at >= since,
                                               p.intended_at <= until))]

    def counts(self, simulation_id: str) -> PaymentCounts:
        """The simulation's payments recorded, by counted outcome: one statement, so
        the outcomes and the payments not counted yet are of one moment (two reads
        let a payment counted in between be in neither)."""
        p = payments.c
        with self._begin() as conn:
            rows = conn.execute(sa.select(p.counted_outcome, sa.func.count())
                                .where(p.simulation_id == simulation_id)
                                .group_by(p.counted_outcome)).all()
        outcomes = {str(r[0]): int(r[1]) for r in rows if r[0] is not None}
        return PaymentCounts(recorded=sum(int(r[1]) for r in rows), outcomes=outcomes)

    def take_payments(self, dead: str) -> list[dict[str, Any]]:
        """Move the unfinished payments of the replica ``dead`` to this one and return
        their rows: the row lock lets exactly one live replica have each."""
        p = payments.c
        with self._begin() as conn:
            ids = [r.payment_id for r in conn.execute(
                sa.update(payments).where(p.instance_id == dead, p.finished.is_(False))
                .values(instance_id=self.holder).returning(p.payment_id))]
            if not ids:
                return []
            return [dict(r._mapping) for r in conn.execute(
                sa.select(payments).where(p.payment_id.in_(ids)))]

    def expire_lease(self, lease_name: str, now: datetime) -> None:
        """End this replica's own lease now (its clean stop)."""
        c = leases.c
        with self._begin() as conn:
            conn.execute(sa.update(leases).where(c.name == lease_name, c.holder == self.holder)
                         .values(expires_at=now))

    def forget_replica(self, lease_name: str, now: datetime) -> None:
        """Remove a replica's expired lease once its payments moved (if it is still
        expired: a replica back in the meantime keeps its own)."""
        c = leases.c
        with self._begin() as conn:
            conn.execute(sa.delete(leases).where(c.name == lease_name, c.expires_at <= now))
