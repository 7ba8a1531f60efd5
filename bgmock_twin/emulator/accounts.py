"""The accounts of an emulated bank: their REST routes and their versioned writes.

Accounts carry a version, as BGMock's ``@Version`` entity does. A write loads the
account unlocked and, after BGMock's load-to-flush window (``flush_window_seconds``,
its round trips to the database, during which other writers commit), writes it
with a compare-and-set on the version it read. A concurrent write committed in
between makes the write touch no row: ``StaleAccount``, the whole transaction
rolled back. On REST that is Spring's 500 with nothing stored; a listener retries.
"""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from bgmock_twin import metrics
from bgmock_twin.contract.tables import accounts
from bgmock_twin.emulator.common import opt_amount, opt_str, query_amount
from bgmock_twin.emulator.db import Database, StaleAccount, money, utcnow
from bgmock_twin.emulator.web import ApiError, Request, Response
from bgmock_twin.logs import get_logger

log = get_logger(__name__)

RESERVED_MESSAGE = "Funds reserved"
INSUFFICIENT_MESSAGE = "Insufficient available funds"
NO_ACCOUNT_MESSAGE = "Account not found"


def account_json(row: Row[Any]) -> dict[str, Any]:
    return {
        "accountId": row.account_id,
        "accountNumber": row.account_number,
        "accountHolder": row.account_holder,
        "balance": money(row.balance),
        "reservedBalance": money(row.reserved_balance),
        "createdAt": row.created_at,
        "updatedAt": row.updated_at,
    }



class Accounts:
    """One bank's accounts (REST handlers and the versioned writes its payment
    handlers share)."""

    def __init__(self, name: str, db: Database, flush_window_seconds: float = 0.0) -> None:
        self.name = name
        self.db = db
        self.flush_window_seconds = flush_window_seconds
        self._select = sa.select(accounts).where(
            accounts.c.account_number == sa.bindparam("number"))
        # Hibernate's versioned update: a compare-and-set on the version read.
        self._set_money = accounts.update().where(
            accounts.c.account_id == sa.bindparam("p_id"),
            sa.func.coalesce(accounts.c.version, 0) == sa.bindparam("p_expected")).values(
            balance=sa.bindparam("p_balance"), reserved_balance=sa.bindparam("p_reserved"),
            updated_at=sa.bindparam("p_now"), version=sa.bindparam("p_version"))

    def row(self, conn: Connection, number: str | None) -> Row[Any] | None:
        """The account as it is now, unlocked (its version is checked on write)."""
        return conn.execute(self._select, {"number": number}).first()

    def set_money(self, conn: Connection, row: Row[Any], *, balance: Decimal | None = None,
                  reserved: Decimal | None = None) -> None:
        """Write ``row``'s money if its version is still the one read; otherwise
        ``StaleAccount`` (the caller's transaction is then rolled back whole)."""
        version = row.version or 0
        written = conn.execute(self._set_money, {
            "p_id": row.account_id, "p_expected": version,
            "p_balance": money(row.balance) if balance is None else balance,
            "p_reserved": money(row.reserved_balance) if reserved is None else reserved,
            "p_now": utcnow(), "p_version": version + 1,
        })
        if written.rowcount != 1:
            raise StaleAccount(row.account_number)

    def read(self, number: str | None) -> Row[Any] | None:
        """A REST handler's first step: load the account (its own short transaction,
        as under READ COMMITTED nothing holds it until the versioned write)."""
        with self.db.begin() as conn:
            row = self.row(conn, number)
        if self.flush_window_seconds > 0:
            # BGMock's round trips between the load and the flush: other writers
            # (listeners, other requests) commit meanwhile, on any database.
            time.sleep(self.flush_window_seconds)
        return row

    def lost_race(self, exc: StaleAccount, path: str) -> ApiError:
        """A REST write that lost the race on an account: Spring's 500, nothing kept."""
        metrics.EMULATOR_OPTIMISTIC_LOCK_FAILURES.labels(service=self.name, origin="rest").inc()
        log.info("emulator_optimistic_lock_failure", service=self.name, path=path,
                 origin="rest")
        return ApiError(500, str(exc))

    def _set_account(self, conn: Connection, row: Row[Any], **values: Any) -> None:
        """A versioned write of other fields (the same compare-and-set as money)."""
        version = row.version or 0
        written = conn.execute(accounts.update().where(
            accounts.c.account_id == row.account_id,
            sa.func.coalesce(accounts.c.version, 0) == version).values(
            updated_at=utcnow(), version=version + 1, **values))
        if written.rowcount != 1:
            raise StaleAccount(row.account_number)

    def create_account(self, request: Request) -> Response:
        body = request.json_object()
        number = opt_str(body, "accountNumber")
        holder = opt_str(body, "accountHolder")
        balance = money(opt_amount(body, "balance") or Decimal(0))
        reserved = money(opt_amount(body, "reservedBalance") or Decimal(0))
        if number is None:
            raise ApiError(500, "account_number must not be null")  # a not-null violation
        now = utcnow()
        account_id = uuid.uuid4()
        try:
            with self.db.begin() as conn:
                conn.execute(accounts.insert().values(
                    account_id=account_id, account_number=number, account_holder=holder,
                    balance=balance, reserved_balance=reserved, version=0,
                    created_at=now, updated_at=now,
                ))
                row = self.row(conn, number)
        except IntegrityError:
            # BGMock answers a duplicate account number with the constraint error: 500.
            raise ApiError(500, "duplicate account number") from None
        assert row is not None
        return Response.json(201, account_json(row))

    def list_accounts(self, request: Request) -> Response:
        with self.db.begin() as conn:
            rows = conn.execute(sa.select(accounts).order_by(accounts.c.created_at)).all()
        return Response.json(200, [account_json(row) for row in rows])

    def get_account(self, request: Request) -> Response:
        with self.db.begin() as conn:
            row = self.row(conn, request.params["accountNumber"])
        if row is None:
            raise ApiError(404, "Account not found")
        return Response.json(200, account_json(row))

    def update_account(self, request: Request) -> Response:
        body = request.json_object()
        balance = opt_amount(body, "balance")
        holder = opt_str(body, "accountHolder")
        new_number = opt_str(body, "accountNumber")
        try:
            with self.db.begin() as conn:
                row = self.row(conn, request.params["accountNumber"])
                if row is None:
                    raise ApiError(404, "Account not found")
                if balance is None or balance < 0:
                    raise ApiError(400, "Balance cannot be null or negative")
                if new_number is None:
                    raise ApiError(500, "account_number must not be null")
                self._set_account(conn, row, account_holder=holder, account_number=new_number)
                updated = self.row(conn, new_number)
        except IntegrityError:
            raise ApiError(500, "duplicate account number") from None
        except StaleAccount as exc:
            raise self.lost_race(exc, request.path) from None
        assert updated is not None
        return Response.json(200, account_json(updated))

    def delete_account(self, request: Request) -> Response:
        with self.db.begin() as conn:
            row = self.row(conn, request.params["accountNumber"])
            if row is None:
                raise ApiError(404, "Account not found")
            conn.execute(accounts.delete().where(accounts.c.account_id == row.account_id))
        return Response.empty(204)

    def adjust(self, request: Request, operation: str) -> Response:
        amount = query_amount(request)
        number = request.params["accountNumber"]
        if operation == "reserve":
            return self._reserve(number, money(amount), request.path)
        if amount <= 0:
            raise ApiError(400, "Amount must be positive")
        amount = money(amount)
        row = self.read(number)
        if row is None:
            raise ApiError(404, "Account not found")
        balance, reserved = money(row.balance), money(row.reserved_balance)
        if operation == "deposit":
            balance += amount
        elif operation == "commit":
            if reserved < amount:
                raise ApiError(400, "Not enough reserved funds")
            reserved -= amount
            balance -= amount
        else:
            if reserved < amount:
                raise ApiError(400, "Not enough reserved funds to release")
            reserved -= amount
        updated = self._write_money(row, balance, reserved, request.path)
        return Response.json(200, account_json(updated))

    def _write_money(self, row: Row[Any], balance: Decimal, reserved: Decimal,
                     path: str) -> Row[Any]:
        """A REST handler's second step: the versioned write; 500 if it lost a race."""
        try:
            with self.db.begin() as conn:
                self.set_money(conn, row, balance=balance, reserved=reserved)
                updated = self.row(conn, row.account_number)
        except StaleAccount as exc:
            raise self.lost_race(exc, path) from None
        assert updated is not None
        return updated

    def _reserve(self, number: str, amount: Decimal, path: str) -> Response:
        """BGMock's reserve answers 200 with a result object, whatever happened, and
        does not check that the amount is positive."""
        row = self.read(number)
        if row is None:
            return Response.json(200, {"success": False, "message": NO_ACCOUNT_MESSAGE,
                                       "account": None})
        balance, reserved = money(row.balance), money(row.reserved_balance)
        if balance - reserved < amount:
            return Response.json(200, {"success": False, "message": INSUFFICIENT_MESSAGE,
                                       "account": account_json(row)})
        updated = self._write_money(row, balance, reserved + amount, path)
        return Response.json(200, {"success": True, "message": RESERVED_MESSAGE,
                                   "account": account_json(updated)})


    # --- books faults -------------------------------------------------------------------
    def corrupt_balance(self, account_number: str, delta: Decimal) -> Decimal:
        """Change a balance behind BGMock's back (a books fault): one relative SQL
        update, so it loses no concurrent write, that also bumps the version, so no
        concurrent write loses it: a payment that loaded the account before it fails
        its compare-and-set (BGMock's 500, nothing stored) instead of writing the old
        balance back over the fault, which a test would then never see go away."""
        delta = money(delta)
        with self.db.begin() as conn:
            changed = conn.execute(accounts.update()
                                   .where(accounts.c.account_number == account_number)
                                   .values(balance=accounts.c.balance + delta,
                                           version=sa.func.coalesce(accounts.c.version, 0) + 1))
            if changed.rowcount != 1:
                raise KeyError(account_number)
            row = self.row(conn, account_number)
        assert row is not None
        return money(row.balance)
