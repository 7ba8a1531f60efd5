"""Leases in the shared ledger: how replicas agree, without a coordinator of their own.

A lease is a named row (``twin_leases``) with a holder and an expiry. Taking or
renewing it is one conditional ``UPDATE`` (the row is ours, or its lease has run
out), which the database serialises: on PostgreSQL the second writer waits for the
first's row lock and re-reads the condition, on SQLite writers are serialised
anyway. So exactly one replica holds a lease at a time, and a replica that dies
loses it when it expires, without anyone having to notice the death.

Uses:
- ``replica:<instance id>``: every replica renews its own (a heartbeat); the live
  replicas are the holders of unexpired ``replica:`` leases (``live``);
- a singleton job of the fleet (the canary, the reconciliation) runs on whichever
  replica holds its lease.

Expiry is on the replicas' wall clocks (UTC): they must agree within a small part
of the lease's time to live, as NTP keeps Kubernetes nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bgmock_twin.tracking.ledger.schema import leases

REPLICA_PREFIX = "replica:"


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Lease:
    name: str
    holder: str
    expires_at: datetime


class Leases:
    """Named leases taken by ``holder`` (this replica's instance id)."""

    def __init__(self, engine: Engine, holder: str,
                 clock: Callable[[], datetime] = _utc_now) -> None:
        self.engine = engine
        self.holder = holder
        self.clock = clock

    def acquire(self, name: str, ttl_seconds: float) -> bool:
        """Take the lease ``name`` or renew it for ``ttl_seconds``: True if this holder
        has it now (it was free, expired or already ours)."""
        now = self.clock()
        expires = now + timedelta(seconds=ttl_seconds)
        c = leases.c
        with self.engine.begin() as conn:
            taken = conn.execute(
                sa.update(leases)
                .where(c.name == name, sa.or_(c.holder == self.holder, c.expires_at <= now))
                .values(holder=self.holder, expires_at=expires, renewed_at=now)
            ).rowcount
            if taken:
                return True
            exists = conn.execute(sa.select(c.holder).where(c.name == name)).first()
            if exists is not None:
                return False
        return self._insert(name, now, expires)

    def _insert(self, name: str, now: datetime, expires: datetime) -> bool:
        """The first take of a lease nobody ever held: of two replicas inserting at
        once, the primary key lets one in."""
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(leases).values(
                    name=name, holder=self.holder, expires_at=expires, renewed_at=now))
        except sa.exc.IntegrityError:
            return False
        return True

    def release(self, name: str) -> None:
        """Give the lease up at once (a clean stop), if this holder has it."""
        c = leases.c
        with self.engine.begin() as conn:
            conn.execute(sa.delete(leases).where(c.name == name, c.holder == self.holder))

    def held(self, name: str) -> Lease | None:
        """The lease ``name`` if someone holds it now."""
        c = leases.c
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(c.name, c.holder, c.expires_at)
                               .where(c.name == name, c.expires_at > self.clock())).first()
        return Lease(row.name, row.holder, row.expires_at) if row is not None else None

    def live(self, prefix: str = REPLICA_PREFIX) -> list[Lease]:
        """Every unexpired lease whose name starts with ``prefix``, by name."""
        c = leases.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(c.name, c.holder, c.expires_at)
                .where(c.name.startswith(prefix, autoescape=True), c.expires_at > self.clock())
                .order_by(c.name)).all()
        return [Lease(r.name, r.holder, r.expires_at) for r in rows]

    def expired(self, prefix: str = REPLICA_PREFIX) -> list[Lease]:
        """Every expired lease whose name starts with ``prefix``: for ``replica:``,
        the replicas that died (or stopped) without anyone taking over from them."""
        c = leases.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(c.name, c.holder, c.expires_at)
                .where(c.name.startswith(prefix, autoescape=True), c.expires_at <= self.clock())
                .order_by(c.name)).all()
        return [Lease(r.name, r.holder, r.expires_at) for r in rows]


def replica_lease(instance_id: str) -> str:
    return f"{REPLICA_PREFIX}{instance_id}"
