"""A started twin ledger for tests, stopped and closed afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bgmock_twin.tracking.ledger import Ledger


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
