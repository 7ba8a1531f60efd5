"""A real PostgreSQL for tests.

Uses the local server on 127.0.0.1:5432 when it answers; otherwise makes a
throwaway cluster with ``initdb``/``pg_ctl`` on a free port. Each test session gets
fresh databases with unique names, dropped at the end.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bgmock_twin.database_urls import resolve_database_url
from tests.support.ports import free_port, port_open, wait_for


def writable_engine(url: str, **options: object) -> Engine:
    """An engine for a test's own writes, from a URL in any form a user writes."""
    return sa.create_engine(resolve_database_url(url), **options)  # type: ignore[arg-type]


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class PostgresServer:
    def __init__(self) -> None:
        self.port = 5432
        self.user = "postgres"
        self.data_dir: Path | None = None
        self.created: list[str] = []

    def start(self) -> None:
        if port_open(5432) and self._can_connect(5432):
            return
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise RuntimeError(
                "PostgreSQL is needed: nothing answers on 127.0.0.1:5432 and no initdb/pg_ctl "
                "is installed to make a throwaway cluster"
            )
        self.port = free_port()
        self.data_dir = Path(tempfile.mkdtemp(prefix="bgmock-pg-"))
        run_as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root
            shutil.chown(self.data_dir, "postgres")
            run_as = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*run_as, initdb, "-D", str(self.data_dir), "-A", "trust", "-U", "postgres"],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run([*run_as, pg_ctl, "-D", str(self.data_dir), "-l", str(self.data_dir / "log"),
                        "-o", f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1", "start"],
                       check=True, stdout=subprocess.DEVNULL)
        wait_for(lambda: self._can_connect(self.port), timeout=30, message="throwaway postgres")

    def _can_connect(self, port: int) -> bool:
        for user in ("postgres", "root"):
            try:
                engine = writable_engine(f"postgresql://{user}@127.0.0.1:{port}/postgres")
                with engine.connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
                engine.dispose()
                self.user = user
                return True
            except Exception:
                continue
        return False

    def url(self, database: str = "postgres") -> str:
        # The seed's own form: plain postgresql://, as users write it.
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "bgmock_test") -> str:
        """Create a fresh database and return its SQLAlchemy URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        engine = writable_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        self.created.append(name)
        return self.url(name)

    def stop(self) -> None:
        engine = writable_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                for name in self.created:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        except Exception:
            pass
        finally:
            engine.dispose()
        if self.data_dir is not None:
            pg_ctl = _pg_bin("pg_ctl")
            run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
            subprocess.run([*run_as, str(pg_ctl), "-D", str(self.data_dir), "-m", "immediate", "stop"],
                           check=False, stdout=subprocess.DEVNULL)
            shutil.rmtree(self.data_dir, ignore_errors=True)
