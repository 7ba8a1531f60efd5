"""An emulated bank service (Bank A = clearing 01, Bank B = 02).

It follows ``shared/bgmock-contract.md``: accounts with a reserved balance, an
outgoing payment that reserves funds and emits ``transactions.initiated``
through the outbox (or is stored FAILED with no event, still answered 202),
incoming payments from ``transactions.forwarded`` that credit the payee and emit
``transactions.processed``, and ``transactions.completed`` that settles or
releases the reservation. Every state change and its outbox row share one
database transaction; events already handled are skipped.

Accounts carry a version (``accounts.py``): a payment reads the payer in one step
and writes it (after its inserts, in Hibernate's flush order) with a
compare-and-set on that version in the next, so a listener's credit, commit or
release (or another request) committed in between makes the request fail with 500
and store nothing (``db.StaleAccount``). A listener that loses such a race has its
record retried. The window between the load and the write is BGMock's
(``flush_window_seconds``, its round trips to the database), so races happen
under load at the rate they happen in BGMock, not at random.
"""

from __future__ import annotations

import functools
import uuid
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bgmock_twin.contract import (
    TOPIC_INITIATED,
    TOPIC_PROCESSED,
    IncomingTransactionEvent,
    OutgoingTransactionEvent,
    Status,
    TransactionResponseEvent,
)
from bgmock_twin.contract.tables import (
    bank_metadata,
    bank_outbox_events,
    bank_outgoing_transactions,
    incoming_transactions,
)
from bgmock_twin.emulator.accounts import Accounts
from bgmock_twin.emulator.common import (
    DUPLICATE,
    HANDLED,
    UNKNOWN_TRANSACTION,
    accepted,
    body_event,
    health,
    incoming_json,
    opt_amount,
    opt_str,
    opt_uuid,
    outgoing_json,
    path_uuid,
)
from bgmock_twin.emulator.db import Database, StaleAccount, money, run_in, utcnow
from bgmock_twin.emulator.outbox import add_event
from bgmock_twin.emulator.web import ApiError, Request, Response, Router
from bgmock_twin.logs import get_logger

log = get_logger(__name__)

ACCEPTED_MESSAGE = "Transaction received"
PROCESSED_MESSAGE = "Transaction processed"
# What Spring's RestClient exception says when the payee lookup answers 404 (inferred).
UNKNOWN_ACCOUNT_MESSAGE = 'Transaction failed: 404 NOT_FOUND "Account not found"'


class _Statements:
    """The hot statements, built once: SQLAlchemy then skips building and keying them
    on every call (most of the cost of a small statement)."""

    def __init__(self, db: Database) -> None:
        out, inc = bank_outgoing_transactions, incoming_transactions
        self.outgoing = sa.select(out).where(out.c.transaction_id == sa.bindparam("id"))
        self.outgoing_locked = db.locked(self.outgoing)
        self.insert_outgoing = out.insert()
        self.set_outgoing_status = out.update().where(
            out.c.transaction_id == sa.bindparam("p_id")).values(
            status=sa.bindparam("p_status"), updated_at=sa.bindparam("p_now"))
        self.incoming = sa.select(inc.c.transaction_id).where(
            inc.c.transaction_id == sa.bindparam("id"))
        self.insert_incoming = inc.insert()




class BankService:
    """One bank: its database, its REST routes and its event handlers."""

    metadata = bank_metadata
    outbox = bank_outbox_events

    def __init__(self, name: str, clearing_number: str, db: Database,
                 flush_window_seconds: float = 0.0) -> None:
        self.name = name
        self.clearing_number = clearing_number
        self.db = db
        self.sql = _Statements(db)
        self.accounts = Accounts(name, db, flush_window_seconds)

    # --- outgoing payments ------------------------------------------------------------
    def create_outgoing(self, request: Request) -> Response:
        """Step 1: reserve, store PENDING + outbox; or store FAILED. Always 202,
        except a null amount or payer, or a lost race on the payer's account: 500
        with nothing stored."""
        body = request.json_object()
        client_id = opt_uuid(body, "transactionId")
        from_account = opt_str(body, "fromAccountNumber")
        to_bankgood = opt_str(body, "toBankgoodNumber")
        raw_amount = opt_amount(body, "amount")
        if client_id is not None:
            with self.db.begin() as conn:
                seen = conn.execute(self.sql.outgoing, {"id": client_id}).first()
            if seen is not None:
                return accepted("Transaction already processed", client_id)
        if raw_amount is None or from_account is None:
            # The real service dereferences both before storing anything: a 500.
            raise ApiError(500, "amount and fromAccountNumber are required")
        amount = money(raw_amount)
        transaction_id = uuid.uuid4()
        now = utcnow()
        account = self.accounts.read(from_account)
        status = Status.PENDING
        if amount <= 0 or account is None or (
            money(account.balance) - money(account.reserved_balance) < amount
        ):
            status = Status.FAILED
        try:
            with self.db.begin() as conn:
                conn.execute(self.sql.insert_outgoing, {
                    "transaction_id": transaction_id,
                    "from_clearing_number": self.clearing_number,
                    "from_account_number": from_account, "to_bankgood_number": to_bankgood,
                    "amount": amount, "status": status.value, "created_at": now,
                    "updated_at": now,
                })
                if status is Status.PENDING:
                    assert account is not None
                    # The bank copies the timestamps before the database fills them:
                    # null dates.
                    add_event(conn, self.outbox, TOPIC_INITIATED, self.clearing_number,
                              OutgoingTransactionEvent(
                                  transaction_id=transaction_id,
                                  from_clearing_number=self.clearing_number,
                                  from_account_number=from_account,
                                  to_bankgood_number=to_bankgood,
                                  amount=amount, status=Status.PENDING,
                              ))
                    # Hibernate flushes inserts first, then the versioned update.
                    self.accounts.set_money(conn, account,
                                    reserved=money(account.reserved_balance) + amount)
        except StaleAccount as exc:
            raise self.accounts.lost_race(exc, request.path) from None
        return accepted(ACCEPTED_MESSAGE, transaction_id)

    def get_outgoing(self, request: Request) -> Response:
        transaction_id = path_uuid(request, "transactionId")
        with self.db.begin() as conn:
            row = conn.execute(sa.select(bank_outgoing_transactions).where(
                bank_outgoing_transactions.c.transaction_id == transaction_id)).first()
        if row is None:
            return Response.empty(404)
        return Response.json(200, outgoing_json(row))

    def delete_outgoing(self, request: Request) -> Response:
        transaction_id = path_uuid(request, "transactionId")
        table = bank_outgoing_transactions
        with self.db.begin() as conn:
            deleted = conn.execute(table.delete().where(table.c.transaction_id == transaction_id))
        if deleted.rowcount == 0:
            return Response.text(404, "Outgoing transaction not found")
        return Response.text(200, "Outgoing transaction deleted successfully")

    def handle_completed(self, event: TransactionResponseEvent,
                         conn: Connection | None = None) -> str:
        """Step 6: settle (SUCCESS) or release (FAILED) the reservation, once."""
        return run_in(self.db, conn, functools.partial(self._completed, event=event))

    def _completed(self, conn: Connection, event: TransactionResponseEvent) -> str:
        tx = conn.execute(self.sql.outgoing_locked, {"id": event.transaction_id}).first()
        if tx is None:
            return UNKNOWN_TRANSACTION  # e.g. a payment injected straight into Kafka
        if tx.status != Status.PENDING.value or event.status is Status.PENDING:
            return DUPLICATE
        account = self.accounts.row(conn, tx.from_account_number)
        if account is not None:
            amount = money(tx.amount)
            reserved = money(account.reserved_balance) - amount
            if event.status is Status.SUCCESS:
                self.accounts.set_money(conn, account, reserved=reserved,
                                balance=money(account.balance) - amount)
            else:
                self.accounts.set_money(conn, account, reserved=reserved)
        conn.execute(self.sql.set_outgoing_status, {
            "p_id": event.transaction_id, "p_status": event.status.value,
            "p_now": utcnow()})
        return HANDLED

    def post_completed(self, request: Request) -> Response:
        """The REST door into the completed handler: 200 with an empty body."""
        event: TransactionResponseEvent = body_event(request, "response")
        try:
            self.handle_completed(event)
        except StaleAccount as exc:
            raise self.accounts.lost_race(exc, request.path) from None
        return Response.empty(200)

    # --- incoming payments ------------------------------------------------------------
    def handle_forwarded(self, event: IncomingTransactionEvent,
                         conn: Connection | None = None) -> str:
        """Step 4: credit the payee (or fail), store it, emit ``transactions.processed``."""
        return run_in(self.db, conn, functools.partial(self._forwarded, event=event))

    def _forwarded(self, conn: Connection, event: IncomingTransactionEvent) -> str:
        seen = conn.execute(self.sql.incoming, {"id": event.transaction_id}).first()
        if seen is not None:
            return DUPLICATE
        amount = money(event.amount)
        account = self.accounts.row(conn, event.to_account_number)
        if account is not None:
            self.accounts.set_money(conn, account, balance=money(account.balance) + amount)
            status, message = Status.SUCCESS, PROCESSED_MESSAGE
        else:
            status, message = Status.FAILED, UNKNOWN_ACCOUNT_MESSAGE
        now = utcnow()
        conn.execute(self.sql.insert_incoming, {
            "transaction_id": event.transaction_id,
            "to_clearing_number": event.to_clearing_number,
            "to_account_number": event.to_account_number,
            "amount": amount, "status": status.value, "created_at": now,
            "updated_at": now,
        })
        add_event(conn, self.outbox, TOPIC_PROCESSED, self.clearing_number,
                  TransactionResponseEvent(event.transaction_id, status, message))
        return HANDLED

    def post_incoming(self, request: Request) -> Response:
        """The REST door into the forwarded handler: 200 with an empty body."""
        event: IncomingTransactionEvent = body_event(request, "incoming")
        try:
            self.handle_forwarded(event)
        except StaleAccount as exc:
            raise self.accounts.lost_race(exc, request.path) from None
        return Response.empty(200)

    def get_incoming(self, request: Request) -> Response:
        transaction_id = path_uuid(request, "transactionId")
        with self.db.begin() as conn:
            row = conn.execute(sa.select(incoming_transactions).where(
                incoming_transactions.c.transaction_id == transaction_id)).first()
        if row is None:
            return Response.empty(404)
        return Response.json(200, incoming_json(row))

    def delete_incoming(self, request: Request) -> Response:
        transaction_id = path_uuid(request, "transactionId")
        table = incoming_transactions
        with self.db.begin() as conn:
            deleted = conn.execute(table.delete().where(table.c.transaction_id == transaction_id))
        if deleted.rowcount == 0:
            return Response.text(404, "Incoming transaction not found")
        return Response.text(200, "Incoming transaction deleted successfully")

    # --- books faults -------------------------------------------------------------------
    def corrupt_balance(self, account_number: str, delta: Decimal) -> Decimal:
        return self.accounts.corrupt_balance(account_number, delta)

    # --- routes ---------------------------------------------------------------------------
    def router(self) -> Router:
        r = Router()
        r.add("GET", "/bank/health", health)
        r.add("GET", "/bank/account", self.accounts.list_accounts)
        r.add("POST", "/bank/account", self.accounts.create_account)
        r.add("GET", "/bank/account/{accountNumber}", self.accounts.get_account)
        r.add("PUT", "/bank/account/{accountNumber}", self.accounts.update_account)
        r.add("DELETE", "/bank/account/{accountNumber}", self.accounts.delete_account)
        for operation in ("deposit", "reserve", "commit", "release"):
            r.add("POST", f"/bank/account/{{accountNumber}}/{operation}",
                  functools.partial(self.accounts.adjust, operation=operation))
        r.add("POST", "/bank/transaction/outgoing", self.create_outgoing)
        r.add("POST", "/bank/transaction/outgoing/completed", self.post_completed)
        r.add("GET", "/bank/transaction/outgoing/{transactionId}", self.get_outgoing)
        r.add("DELETE", "/bank/transaction/outgoing/{transactionId}", self.delete_outgoing)
        r.add("POST", "/bank/transaction/incoming", self.post_incoming)
        r.add("GET", "/bank/transaction/incoming/{transactionId}", self.get_incoming)
        r.add("DELETE", "/bank/transaction/incoming/{transactionId}", self.delete_incoming)
        return r
