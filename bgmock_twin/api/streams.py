"""Large reads of the ledger, streamed and bounded, so that reading never starves
the load or the following of payments.

An answer is written to the socket chunk by chunk as the ledger gives the rows
(``Ledger.query_chunks``: one short read per chunk, keyset-resumed), so the memory a
request holds is one chunk, whatever its size, and it is given back when the chunk
is sent. Heavy reads (exports, big pages) also take one of a few ``ReadSlots``: a
read beyond them is answered 429 with ``Retry-After`` at once instead of queueing
work behind the ones running. A slot is given back when the stream ends, fails or
the client goes away.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import ctypes.util
import io
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

from starlette.concurrency import run_in_threadpool

from bgmock_twin.api.wire import WireResponse
from bgmock_twin.tracking.records import EXPORT_COLUMNS, PaymentRecord, cursor_of, export_row

CHUNK_ROWS = 500  # rows per ledger read and per write to the socket
HEAVY_PAGE = 1000  # a JSON page above this many items counts as a heavy read
RETRY_AFTER_SECONDS = 2

Chunks = Iterator[list[PaymentRecord]]
View = Callable[[PaymentRecord], WireResponse]


class Slot:
    """One taken place among ``ReadSlots``; ``release`` is idempotent."""

    def __init__(self, owner: ReadSlots) -> None:
        self._owner = owner
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._owner._give_back()


class ReadSlots:
    """At most ``limit`` heavy reads at a time; ``take`` never waits."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._taken = 0

    def take(self) -> Slot | None:
        with self._lock:
            if self._taken >= self.limit:
                return None
            self._taken += 1
        return Slot(self)

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._taken

    def _give_back(self) -> None:
        with self._lock:
            self._taken -= 1
            idle = self._taken == 0
        if idle:
            give_memory_back()


def give_memory_back() -> None:
    """Hand the heap freed by the heavy reads back to the system (glibc keeps it in
    per-thread arenas otherwise: RSS that never comes down after a storm)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc: nothing to trim
        return None


_LIBC = _libc()


# --- encoders: what goes on the wire before, per chunk and after -------------------------------
class CsvEncoder:
    media_type = "text/csv; charset=utf-8"

    def start(self) -> bytes:
        return _csv_lines([list(EXPORT_COLUMNS)])

    def rows(self, records: list[PaymentRecord]) -> bytes:
        exported = (export_row(r) for r in records)
        return _csv_lines([cell(row.get(c)) for c in EXPORT_COLUMNS] for row in exported)

    def end(self) -> bytes:
        return b""


class NdjsonEncoder:
    media_type = "application/x-ndjson"

    def __init__(self, view: View) -> None:
        self.view = view

    def start(self) -> bytes:
        return b""

    def rows(self, records: list[PaymentRecord]) -> bytes:
        return b"".join(self.view(r).model_dump_json(by_alias=True).encode() + b"\n"
                        for r in records)

    def end(self) -> bytes:
        return b""


class PageEncoder:
    """The JSON page: ``items`` as they come, then where the next page starts. The
    ledger is asked for one item more than ``limit``: it is not sent, it only tells
    that there is more."""

    media_type = "application/json"

    def __init__(self, view: View, limit: int, offset: int) -> None:
        self.view = view
        self.limit = limit
        self.offset = offset
        self._sent = 0
        self._last: PaymentRecord | None = None
        self._more = False

    def start(self) -> bytes:
        return b'{"items":['

    def rows(self, records: list[PaymentRecord]) -> bytes:
        parts = []
        for record in records:
            if self._sent >= self.limit:
                self._more = True
                break
            parts.append(self.view(record).model_dump_json(by_alias=True).encode())
            self._sent += 1
            self._last = record
        lead = b"," if self._sent > len(parts) and parts else b""
        return lead + b",".join(parts)

    def end(self) -> bytes:
        more = self._more and self._last is not None
        next_offset = self.offset + self.limit if more else None
        next_cursor = cursor_of(self._last) if more and self._last is not None else None
        tail = {"limit": self.limit, "offset": self.offset, "nextOffset": next_offset,
                "nextCursor": next_cursor, "hasMore": more}
        return b"]," + json.dumps(tail, separators=(",", ":"))[1:].encode()


Encoder = CsvEncoder | NdjsonEncoder | PageEncoder


async def stream(first: list[PaymentRecord], chunks: Chunks, encoder: Encoder,
                 slot: Slot | None) -> AsyncIterator[bytes]:
    """``first`` (read before the answer began, so an unavailable ledger is still a
    503) and then the rest of ``chunks``, each fetched off the event loop. A ledger
    failure mid-way breaks the stream off unfinished (no final chunk), so a client
    never takes a cut export for a whole one."""
    try:
        head = encoder.start()
        chunk = first
        while chunk:
            yield head + encoder.rows(chunk)
            head = b""
            chunk = await run_in_threadpool(next, chunks, [])
        yield head + encoder.end()
    finally:
        if slot is not None:
            slot.release()
        close = getattr(chunks, "close", None)
        if close is not None:
            with contextlib.suppress(ValueError):  # still running in a worker thread
                close()


async def first_chunk(chunks: Chunks) -> list[PaymentRecord]:
    return await run_in_threadpool(next, chunks, [])


# --- cells -------------------------------------------------------------------------------------
def cell(value: Any) -> str:
    """A value as a CSV cell: empty for None, ISO 8601 times, plain decimals."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def _csv_lines(rows: Any) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue().encode()
