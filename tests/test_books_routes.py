"""The books' typed results as the API renders them: camelCase field names, data
(check, bank and service names) kept as it is."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bgmock_twin.api.books_routes import reconciliation_body, render_books_status
from bgmock_twin.books import checks as c
from bgmock_twin.books.lag import GroupState, LagStatus
from bgmock_twin.books.readings import OutboxStats, StoredRow
from bgmock_twin.books.report import Report
from bgmock_twin.books.results import BankDrift, CheckResult, CheckStatus
from bgmock_twin.books.service import BooksStatus

NOW = datetime(2025, 11, 20, 10, 0, 0)


def test_pending_report_before_the_first_run() -> None:
    body = reconciliation_body(None, 30.0).model_dump(mode="json")
    assert body["ranAt"] is None and body["status"] == "pending"
    assert body["violations"] == 0 and body["checks"] == {} and body["intervalSeconds"] == 30.0


def test_report_fields_are_camel_case_and_data_is_kept() -> None:
    backlog = c.outbox_backlog({"bank_a": OutboxStats("bank_a", 3, NOW - timedelta(seconds=45))},
                               NOW, 100, 30, ["bank_a"])
    stale = c.stale_pending({"clearing": [StoredRow(
        "clearing", "outgoing_transactions", uuid.UUID(int=1), "X1",
        Decimal("1.00"), "PENDING", NOW - timedelta(seconds=60), "BG1")]},
        NOW, 30, ["clearing"], {"BG1": ("09", "X9")})
    drift = CheckResult.of(c.BALANCE_DRIFT, [], None,
                           drift={"bank_a": BankDrift(Decimal("0"), 0)})
    report = Report(datetime(2025, 11, 20, 10, tzinfo=UTC), 1.23456,
                    {c.OUTBOX_BACKLOG: backlog, c.STALE_PENDING: stale, c.BALANCE_DRIFT: drift},
                    {"db_bank_a": "ok"}, {"bank_a": timedelta(hours=-5)})
    body = reconciliation_body(report, 30.0).model_dump(mode="json")
    assert body["ranAt"] == "2025-11-20T10:00:00+00:00" and body["durationSeconds"] == 1.235
    assert body["clockOffsetsSeconds"] == {"bank_a": -18000.0}
    assert body["status"] == "violated" and body["violations"] == 2
    assert list(body["checks"]) == [c.BALANCE_DRIFT, c.OUTBOX_BACKLOG, c.STALE_PENDING]
    assert body["checks"][c.BALANCE_DRIFT]["detail"] == {"drift": {"bank_a": "0"},
                                                         "driftingAccounts": {"bank_a": 0}}
    assert "reason" not in body["checks"][c.BALANCE_DRIFT]
    outbox = body["checks"][c.OUTBOX_BACKLOG]
    assert outbox["detail"] == {"services": {"bank_a": {"unpublished": 3,
                                                        "oldestAgeSeconds": 45.0}}}
    assert outbox["offending"][0]["evidence"]["oldestAgeSeconds"] == 45.0
    evidence = body["checks"][c.STALE_PENDING]["offending"][0]["evidence"]
    assert evidence["transactionId"] == str(uuid.UUID(int=1))
    assert evidence["bankgoodNumber"] == "BG1"
    assert evidence["mapping"] == {"clearingNumber": "09", "accountNumber": "X9"}


def test_books_status_section() -> None:
    status = BooksStatus(datetime(2025, 11, 20, 10, tzinfo=UTC), "ok",
                         {c.CONSERVATION: CheckStatus.OK}, 0,
                         {"g": GroupState({"t": 2}, 17.5, None, True, LagStatus.STALL,
                                          {"t": 42.5}),
                          "typo": GroupState({}, None, None, False, LagStatus.MISSING)})
    assert render_books_status(status) == {
        "lastRun": "2025-11-20T10:00:00+00:00", "status": "ok",
        "checks": {c.CONSERVATION: "ok"}, "violations": 0,
        "consumerLag": {"g": {"lag": {"t": 2}, "lastProgress": 17.5, "error": None,
                              "committedOffsets": True, "status": "STALL",
                              "lagSeconds": {"t": 42.5}},
                        "typo": {"lag": {}, "lastProgress": None, "error": None,
                                 "committedOffsets": False, "status": "MISSING",
                                 "lagSeconds": None}}}
    without_lag = BooksStatus(None, "pending", {}, 0, None)
    assert render_books_status(without_lag) == {"lastRun": None, "status": "pending",
                                                "checks": {}, "violations": 0}
