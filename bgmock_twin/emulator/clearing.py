"""The emulated clearing service.

It maps a bankgood number to (clearing number, account number), forwards an
initiated payment to the destination bank (``transactions.forwarded``, keyed by
the destination clearing number) or fails it at once (``transactions.completed``
FAILED, keyed by the source clearing number), and relays the destination's
answer back to the source. As in BGMock, the initiated handler skips a
transaction it has seen, while the processed handler is not idempotent: a
redelivered ``transactions.processed`` yields a second ``transactions.completed``.
The forwarded event copies the initiated event's ``createdAt`` (null when a bank
sent it) and leaves ``updatedAt`` null; a processed event for a transaction the
clearing never saw is ignored (its REST door still answers 202). Mappings have
UUID ids and no list endpoint.
"""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from bgmock_twin.contract import (
    TOPIC_COMPLETED,
    TOPIC_FORWARDED,
    IncomingTransactionEvent,
    OutgoingTransactionEvent,
    Status,
    TransactionResponseEvent,
)
from bgmock_twin.contract.tables import (
    bank_mappings,
    clearing_metadata,
    clearing_outbox_events,
    clearing_outgoing_transactions,
)
from bgmock_twin.emulator.common import (
    DUPLICATE,
    HANDLED,
    UNKNOWN_TRANSACTION,
    accepted,
    body_event,
    health,
    opt_str,
    outgoing_json,
    path_uuid,
)
from bgmock_twin.emulator.db import Database, money, run_in, utcnow
from bgmock_twin.emulator.outbox import add_event
from bgmock_twin.emulator.web import ApiError, Request, Response, Router


def unknown_bankgood_message(bankgood_number: str | None) -> str:
    """The clearing's failure message for a payee it cannot map."""
    return f"No bank-mapping found for {bankgood_number}"


class UnknownTransaction(LookupError):
    """A processed event for a transaction the clearing never saw."""


def mapping_json(row: Row[Any]) -> dict[str, Any]:
    return {
        "id": row.id,
        "bankgoodNumber": row.bankgood_number,
        "clearingNumber": row.clearing_number,
        "accountNumber": row.account_number,
        "bankName": row.bank_name,
    }


class ClearingService:
    metadata = clearing_metadata
    outbox = clearing_outbox_events

    def __init__(self, db: Database) -> None:
        self.name = "clearing"
        self.db = db
        table = clearing_outgoing_transactions
        # The hot statements, built once (see bank._Statements).
        self._select_mapping = sa.select(bank_mappings).where(
            bank_mappings.c.bankgood_number == sa.bindparam("bankgood"))
        self._select_tx = sa.select(table).where(table.c.transaction_id == sa.bindparam("id"))
        self._select_tx_locked = db.locked(self._select_tx)
        self._insert_tx = table.insert()
        self._set_status = table.update().where(
            table.c.transaction_id == sa.bindparam("p_id")).values(
            status=sa.bindparam("p_status"), updated_at=sa.bindparam("p_now"))

    # --- bank mappings ------------------------------------------------------------------
    def _mapping(self, conn: Connection, bankgood: str | None) -> Row[Any] | None:
        return conn.execute(self._select_mapping, {"bankgood": bankgood}).first()

    def create_mapping(self, request: Request) -> Response:
        body = request.json_object()
        values = {
            "bankgood_number": opt_str(body, "bankgoodNumber"),
            "clearing_number": opt_str(body, "clearingNumber"),
            "account_number": opt_str(body, "accountNumber"),
            "bank_name": opt_str(body, "bankName"),
        }
        if values["bankgood_number"] is None:
            raise ApiError(500, "bankgood_number must not be null")
        try:
            with self.db.begin() as conn:
                conn.execute(bank_mappings.insert().values(**values))
                row = self._mapping(conn, values["bankgood_number"])
        except IntegrityError:
            # A duplicate bankgood number is a constraint error, answered 500.
            raise ApiError(500, "duplicate bankgood number") from None
        assert row is not None
        return Response.json(201, mapping_json(row))

    def get_mapping(self, request: Request) -> Response:
        with self.db.begin() as conn:
            row = self._mapping(conn, request.params["bankgoodNumber"])
        if row is None:
            raise ApiError(404, "Bank mapping not found", spring=False)
        return Response.json(200, mapping_json(row))

    def update_mapping(self, request: Request) -> Response:
        body = request.json_object()
        values = {
            "clearing_number": opt_str(body, "clearingNumber"),
            "account_number": opt_str(body, "accountNumber"),
            "bank_name": opt_str(body, "bankName"),
        }
        bankgood = request.params["bankgoodNumber"]
        with self.db.begin() as conn:
            row = self._mapping(conn, bankgood)
            if row is None:
                raise ApiError(404, "Bank mapping not found", spring=False)
            conn.execute(bank_mappings.update().where(bank_mappings.c.id == row.id)
                         .values(**values))
            updated = self._mapping(conn, bankgood)
        assert updated is not None
        return Response.json(200, mapping_json(updated))

    def delete_mapping(self, request: Request) -> Response:
        with self.db.begin() as conn:
            deleted = conn.execute(bank_mappings.delete().where(
                bank_mappings.c.bankgood_number == request.params["bankgoodNumber"]))
        if deleted.rowcount == 0:
            raise ApiError(404, "Bank mapping not found", spring=False)
        return Response.empty(204)

    # --- payments ------------------------------------------------------------------------
    def handle_initiated(self, event: OutgoingTransactionEvent,
                         conn: Connection | None = None) -> str:
        """Step 3: forward to the destination bank, or fail an unknown bankgood number."""
        if event.transaction_id is None or event.amount is None:
            raise ValueError("an initiated event needs transactionId and amount")
        money(event.amount)
        return run_in(self.db, conn, functools.partial(self._initiated, event=event))

    def _initiated(self, conn: Connection, event: OutgoingTransactionEvent) -> str:
        transaction_id = event.transaction_id
        assert transaction_id is not None and event.amount is not None
        amount = money(event.amount)
        seen = conn.execute(self._select_tx, {"id": transaction_id}).first()
        if seen is not None:
            return DUPLICATE
        mapping = self._mapping(conn, event.to_bankgood_number)
        status = Status.PENDING if mapping is not None else Status.FAILED
        now = utcnow()
        conn.execute(self._insert_tx, {
            "transaction_id": transaction_id,
            "from_clearing_number": event.from_clearing_number,
            "from_account_number": event.from_account_number,
            "to_bankgood_number": event.to_bankgood_number,
            "amount": amount, "status": status.value, "created_at": now,
            "updated_at": now,
        })
        if mapping is None:
            add_event(conn, self.outbox, TOPIC_COMPLETED, event.from_clearing_number,
                      TransactionResponseEvent(
                          transaction_id, Status.FAILED,
                          unknown_bankgood_message(event.to_bankgood_number)))
        else:
            # The dates are the initiated event's createdAt (usually null) and no
            # updatedAt, written as Jackson writes a LocalDateTime: an array.
            add_event(conn, self.outbox, TOPIC_FORWARDED, mapping.clearing_number,
                      IncomingTransactionEvent(
                          transaction_id=transaction_id,
                          to_clearing_number=mapping.clearing_number,
                          to_account_number=mapping.account_number,
                          amount=amount, status=Status.PENDING,
                          created_at=event.created_at, updated_at=None,
                      ), dates="array")
        return HANDLED

    def handle_processed(self, event: TransactionResponseEvent,
                         conn: Connection | None = None) -> str:
        """Step 5: record the destination's answer and tell the source (every time)."""
        return run_in(self.db, conn, functools.partial(self._processed, event=event),
                      duplicates=False)

    def _processed(self, conn: Connection, event: TransactionResponseEvent) -> str:
        tx = conn.execute(self._select_tx_locked, {"id": event.transaction_id}).first()
        if tx is None:
            raise UnknownTransaction(str(event.transaction_id))
        conn.execute(self._set_status, {"p_id": event.transaction_id,
                                        "p_status": event.status.value, "p_now": utcnow()})
        add_event(conn, self.outbox, TOPIC_COMPLETED, tx.from_clearing_number,
                  TransactionResponseEvent(event.transaction_id, event.status,
                                           event.message))
        return HANDLED

    def process_processed(self, event: TransactionResponseEvent,
                          conn: Connection | None = None) -> str:
        try:
            return self.handle_processed(event, conn)
        except UnknownTransaction:
            return UNKNOWN_TRANSACTION

    def post_outgoing(self, request: Request) -> Response:
        event: OutgoingTransactionEvent = body_event(request, "outgoing")
        self.handle_initiated(event)
        return accepted("Transaction accepted for clearing", event.transaction_id)

    def post_processed(self, request: Request) -> Response:
        event: TransactionResponseEvent = body_event(request, "response")
        # An unknown transaction is ignored by the real handler: 202 all the same.
        self.process_processed(event)
        return accepted("Processed transaction accepted", event.transaction_id)

    def get_transaction(self, request: Request) -> Response:
        transaction_id = path_uuid(request, "transactionId")
        table = clearing_outgoing_transactions
        with self.db.begin() as conn:
            row = conn.execute(sa.select(table).where(
                table.c.transaction_id == transaction_id)).first()
        if row is None:
            raise ApiError(404, "Transaction not found", spring=False)
        return Response.json(200, outgoing_json(row))

    def router(self) -> Router:
        r = Router()
        r.add("GET", "/clearing/health", health)
        r.add("POST", "/clearing/bank-mapping", self.create_mapping)
        r.add("GET", "/clearing/bank-mapping/{bankgoodNumber}", self.get_mapping)
        r.add("PUT", "/clearing/bank-mapping/{bankgoodNumber}", self.update_mapping)
        r.add("DELETE", "/clearing/bank-mapping/{bankgoodNumber}", self.delete_mapping)
        r.add("GET", "/clearing/transaction/{transactionId}", self.get_transaction)
        r.add("POST", "/clearing/transaction/outgoing", self.post_outgoing)
        r.add("POST", "/clearing/transaction/processed", self.post_processed)
        return r
