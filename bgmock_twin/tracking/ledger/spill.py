"""Rows the ledger could not store before the twin stopped, kept in a spill file.

The write-behind buffer holds rows while the ledger database cannot take them (a
full disk, PostgreSQL gone). Stopped in that state, the twin would lose them; so
``LedgerStore.stop`` writes them here as JSON lines (one ``{"kind", "row"}`` per
line, money as exact strings, timestamps as ISO-8601 UTC) and the next start reads
them back into the ledger before anything else (whole rows are upserts by primary
key, a payment's progress is its changed columns set again and its step rows, which
a repeat leaves alone, so reading a file twice does no harm).

Where: ``TWIN_LEDGER_SPILL_DIR`` when set, else next to an SQLite ledger's file (the
working directory for PostgreSQL). The disk that made the ledger fail may be the
one the spill is meant for, so when writing there fails the file goes to the
system's temporary directory instead, and the start reads both places. A file is
named after a hash of the ledger URL and the instance id, so twins sharing a
directory never read each other's rows; files are written under a temporary name
and renamed once complete, so a half-written spill is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from bgmock_twin.tracking.ledger.schema import (
    LEGACY_STEP_COLUMNS,
    TABLES,
    Money,
    UtcDateTime,
    payment_steps,
    payments,
)

PREFIX = "bgmock-twin-ledger-spill"
Row = tuple[str, dict[str, Any]]  # (kind, whole row)


def default_directory(url: str) -> Path:
    """Next to an SQLite ledger's file; the working directory otherwise."""
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:"):
        return Path(database).resolve().parent
    return Path.cwd()


def is_persistent(url: str) -> bool:
    """False for an in-memory SQLite ledger: nothing outlives the process anyway."""
    parsed = make_url(url)
    return not (parsed.get_backend_name() == "sqlite"
                and (parsed.database or "") in ("", ":memory:"))


# --- rows as lines and back (pure) ------------------------------------------------------
def encode(kind: str, row: dict[str, Any]) -> str:
    return json.dumps({"kind": kind, "row": {k: _plain(v) for k, v in row.items()}},
                      separators=(",", ":"))


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def decode(line: str) -> Row:
    """A line back into (kind, row) with the column types the writer expects;
    ValueError if it is not a row of a known table."""
    data = json.loads(line)
    if not isinstance(data, dict) or data.get("kind") not in SPILLED \
            or not isinstance(data.get("row"), dict):
        raise ValueError("not a ledger row")
    kind = str(data["kind"])
    table = SPILLED[kind]
    row: dict[str, Any] = {}
    for name, value in data["row"].items():
        if name in table.c:
            row[name] = _typed(table.c[name].type, value)
        elif kind == "payment" and name in LEGACY_STEP_COLUMNS:  # the steps it carries
            row[name] = _step_value(name, value)
        else:
            raise ValueError(f"unknown column {name!r}")
    return kind, row


# the kinds of lines a spill file holds and the table each is typed by: whole rows,
# and a payment's progress as its changed columns and its step rows (``store``)
SPILLED = {**TABLES, "payment_state": payments, "payment_step": payment_steps}


def _step_value(name: str, value: Any) -> Any:
    if value is None:
        return None
    return datetime.fromisoformat(str(value)) if name.endswith("_at") else float(value)


def _typed(column_type: Any, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(column_type, Money):
        return Decimal(str(value))
    if isinstance(column_type, UtcDateTime):
        return datetime.fromisoformat(str(value))
    return value


# --- the files --------------------------------------------------------------------------
class Spill:
    """The spill files of one ledger (its URL) and one instance."""

    def __init__(self, directory: Path, url: str, instance_id: str) -> None:
        self.directory = directory
        self.fallback = Path(tempfile.gettempdir())
        digest = hashlib.sha256(f"{url}|{instance_id}".encode()).hexdigest()[:12]
        self.stem = f"{PREFIX}.{digest}"

    def write(self, rows: Iterable[Row]) -> Path:
        """Write ``rows`` to a new spill file; its path. Tries the spill directory,
        then the temporary directory; OSError if neither takes the file."""
        lines = [encode(kind, row) + "\n" for kind, row in rows]
        name = f"{self.stem}.{time.time_ns()}.jsonl"
        errors: list[str] = []
        for directory in dict.fromkeys([self.directory, self.fallback]):
            path = directory / name
            partial = directory / f".{name}.partial"
            try:
                directory.mkdir(parents=True, exist_ok=True)
                with partial.open("w", encoding="utf-8") as out:
                    out.writelines(lines)
                    out.flush()
                    os.fsync(out.fileno())
                partial.replace(path)
                return path
            except OSError as exc:
                errors.append(f"{directory}: {exc.strerror or exc}")
                partial.unlink(missing_ok=True)
        raise OSError("; ".join(errors))

    def files(self) -> list[Path]:
        """This ledger's spill files, oldest first (both places)."""
        found: set[Path] = set()
        for directory in (self.directory, self.fallback):
            if directory.is_dir():
                found.update(directory.glob(f"{self.stem}.*.jsonl"))
        return sorted(found, key=lambda p: (_stamp(p), str(p)))

    @staticmethod
    def read(path: Path) -> tuple[list[Row], int]:
        """The rows of one file, and how many lines were not rows (skipped)."""
        rows: list[Row] = []
        bad = 0
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if not line.strip():
                    continue
                try:
                    rows.append(decode(line))
                except (ValueError, TypeError, ArithmeticError):
                    bad += 1
        return rows, bad


def _stamp(path: Path) -> int:
    try:
        return int(path.name.rsplit(".", 2)[-2])
    except (IndexError, ValueError):
        return 0
