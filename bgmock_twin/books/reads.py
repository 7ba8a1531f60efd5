"""Reads with a deadline on a small pool: a read that misses it, or fails, leaves
its checks ``unknown`` and is not waited for again while it still runs, so a slow
database costs a reconciliation its budget, never the scheduler's other jobs."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import Engine

from bgmock_twin.books.sql import (
    BankBooks,
    BankSnapshot,
    ClearingSnapshot,
    read_bank_books,
    read_bank_db,
    read_clearing_db,
)

T = TypeVar("T")


class SourceBusy(Exception):
    """The previous read of this source has not finished yet."""


class Reads:
    """Reads on a small pool, each with a deadline; a source whose previous read is
    still running is not read again (it reports busy at once)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="books-read")
        self._running: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()

    def submit(self, name: str, func: Callable[[], T]) -> Future[T]:
        with self._lock:
            previous = self._running.get(name)
            if previous is not None and not previous.done():
                failed: Future[T] = Future()
                failed.set_exception(SourceBusy(f"{name}: previous read still running"))
                return failed
            future = self._pool.submit(func)
            self._running[name] = future
            return future

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True, slots=True)
class Got(Generic[T]):
    value: T | None
    state: str  # "ok", "timeout", "busy ..." or "error: ..."
    error: Exception | None = None  # what the read raised


def outcome(future: Future[T], deadline: float) -> Got[T]:
    """The value of a read, or None and why it has none."""
    try:
        return Got(future.result(timeout=max(0.0, deadline - time.monotonic())), "ok")
    except FutureTimeout:
        return Got(None, "timeout")
    except SourceBusy:
        return Got(None, "busy (previous read still running)")
    except Exception as exc:
        return Got(None, f"error: {_short(exc)}", exc)


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    first = text.splitlines()[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {first[:160]}"


def bind_bank(engine: Engine, bank: str, ids_out: list[uuid.UUID], ids_in: list[uuid.UUID],
               cutoff: datetime, timeout_ms: int) -> Callable[[], BankSnapshot]:
    def read() -> BankSnapshot:
        return read_bank_db(engine, bank, ids_out, ids_in, cutoff, timeout_ms)

    return read


def bind_clearing(engine: Engine, ids: list[uuid.UUID], cutoff: datetime,
                   timeout_ms: int) -> Callable[[], ClearingSnapshot]:
    def read() -> ClearingSnapshot:
        return read_clearing_db(engine, ids, (), cutoff, timeout_ms)

    return read


def bind_books(engine: Engine, bank: str, numbers: list[str], since: datetime,
                timeout_ms: int) -> Callable[[], BankBooks]:
    def read() -> BankBooks:
        return read_bank_books(engine, bank, numbers, since, timeout_ms)

    return read
