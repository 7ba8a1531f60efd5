"""The banks' journals and clocks (pure): where each recent payment stood at a
bank when its balances were read, and how far each service's clock is from the
twin's (BGMock stores local times)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from bgmock_twin.books.model import DestinationView, PaymentFact, SourceView, payment_is_certain
from bgmock_twin.books.readings import FinishedPayment
from bgmock_twin.books.sources import PaymentMeta
from bgmock_twin.books.sql import BankBooks, BankSnapshot, ClearingSnapshot
from bgmock_twin.contract import CLEARING, Channel


def clock_offset(samples: Iterable[tuple[datetime, datetime]]) -> timedelta | None:
    """A service's clock minus the twin's, from (created_at on the service's clock,
    naive; intended send time on the twin's, UTC) pairs of the same payments.

    A row is written after the twin meant to send, so each difference is the
    offset plus a delay: the smallest is the closest estimate (None without data).
    """
    best: timedelta | None = None
    for created_at, intended_at in samples:
        difference = created_at - intended_at.astimezone(UTC).replace(tzinfo=None)
        if best is None or difference < best:
            best = difference
    return best


def with_views(
    payments: Sequence[PaymentFact],
    meta: Mapping[str, PaymentMeta],
    books: Mapping[str, BankBooks],
    absent_since: Mapping[str, datetime],
) -> list[PaymentFact]:
    """Pin each uncertain payment to what the banks' journals showed (pure).

    A row's status says where the payment stood. A missing row says "not there
    yet" only when the journal was read completely and the payment is recent
    enough (intended at or after ``absent_since[bank]``, UTC; banks without an
    entry prove nothing by absence) for its rows to be in the window. A payment
    whose transaction id is not known yet (the bank's 202 is on its way) is "not
    there" at an account whose journal holds no row the ledger cannot explain:
    ``meta`` must list every payment intended since the window began.
    """
    known = {info.transaction_id for info in meta.values() if info.transaction_id is not None}
    unexplained_out = {(bank, row[1]) for bank, b in books.items()
                       for tx, row in b.outgoing.items() if tx not in known}
    unexplained_in = {(bank, row[1]) for bank, b in books.items()
                      for tx, row in b.incoming.items() if tx not in known}
    result: list[PaymentFact] = []
    for payment in payments:
        info = meta.get(payment.payment_id)
        if info is None or payment_is_certain(payment):
            result.append(payment)
            continue
        tx = info.transaction_id
        source_view: SourceView | None = None
        src_bank = payment.source.bank
        src = books.get(src_bank)
        if src is not None and payment.channel is Channel.REST:
            row = src.outgoing.get(tx) if tx is not None else None
            if row is not None:
                source_view = {"PENDING": SourceView.PENDING, "SUCCESS": SourceView.SUCCESS,
                               "FAILED": SourceView.FAILED}.get(row[0])
            elif src.complete and _recent(info, absent_since.get(src_bank)) and (
                    tx is not None or (src_bank, payment.source.number) not in unexplained_out):
                source_view = SourceView.ABSENT
        destination_view: DestinationView | None = None
        dst_bank = payment.destination.bank
        dst = books.get(dst_bank)
        if dst is not None:
            row = dst.incoming.get(tx) if tx is not None else None
            if row is not None and row[0] == "SUCCESS":
                destination_view = DestinationView.CREDITED
            elif (row is not None and row[0] == "FAILED") or (
                    row is None and dst.complete and _recent(info, absent_since.get(dst_bank))
                    and (tx is not None or (dst_bank, payment.destination.number)
                         not in unexplained_in)):
                destination_view = DestinationView.NOT_CREDITED
        result.append(PaymentFact(payment.payment_id, payment.channel, payment.source,
                                  payment.destination, payment.amount, payment.progress,
                                  source_view, destination_view))
    return result


def _recent(info: PaymentMeta, since: datetime | None) -> bool:
    return since is not None and info.intended_at >= since


def learn_offsets(candidates: Sequence[FinishedPayment],
                  banks: Mapping[str, BankSnapshot],
                  clearing: ClearingSnapshot | None) -> dict[str, timedelta]:
    """Estimate each service's clock offset from the rows of the payments whose
    statuses were just read (found by id, so whatever the offset)."""
    samples: dict[str, list[tuple[datetime, datetime]]] = {}
    offsets: dict[str, timedelta] = {}
    for payment in candidates:
        if payment.intended_at is None:
            continue
        found: list[tuple[str, datetime | None]] = []
        for bank, snapshot in banks.items():
            found.append((bank, snapshot.created_at.get(payment.transaction_id)))
        if clearing is not None:
            found.append((CLEARING.name, clearing.created_at.get(payment.transaction_id)))
        for service, created_at in found:
            if created_at is not None:
                samples.setdefault(service, []).append((created_at, payment.intended_at))
    for service, pairs in samples.items():
        offset = clock_offset(pairs)
        if offset is not None:
            offsets[service] = offset
    return offsets
