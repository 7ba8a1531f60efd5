"""Read-only SQLAlchemy engines for the three BGMock databases.

Sessions are read-only at the database level where the backend supports it
(PostgreSQL ``default_transaction_read_only``) and carry a short statement timeout,
so a slow database costs a check its timeout, never a hung job.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bgmock_twin.database_urls import resolve_database_url


def readonly_engine(url: str, statement_timeout_ms: int, connect_timeout_s: int = 3) -> Engine:
    parsed = resolve_database_url(url)
    if parsed.get_backend_name() == "postgresql":
        options = f"-c default_transaction_read_only=on -c statement_timeout={statement_timeout_ms}"
        return sa.create_engine(
            parsed,
            pool_pre_ping=True,
            pool_size=2,
            max_overflow=2,
            pool_timeout=connect_timeout_s,
            connect_args={"connect_timeout": connect_timeout_s, "options": options},
        )
    return sa.create_engine(parsed, pool_pre_ping=True)


def select_one(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
