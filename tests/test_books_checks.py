"""The invariant checks, on hand-made readings: each finds exactly what it is for,
names the offender with its evidence, and says "unknown" rather than guess."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal

from bgmock_twin.api.books_routes import check_body
from bgmock_twin.books import checks as c
from bgmock_twin.books.checks import (
    AccountReading,
    CheckStatus,
    FinishedPayment,
    OutboxStats,
    PendingSum,
    StoredRow,
)
from bgmock_twin.books.model import AccountKey, DepositFact, PaymentFact, Progress, expect
from bgmock_twin.contract import Channel
from bgmock_twin.tracking.lifecycle import Outcome

D = Decimal
A1 = AccountKey("bank_a", "TWIN-A-001")
A2 = AccountKey("bank_a", "TWIN-A-002")
B1 = AccountKey("bank_b", "TWIN-B-001")
NOW = datetime(2025, 11, 20, 10, 0, 0)


def _model(*payments: PaymentFact):  # type: ignore[no-untyped-def]
    deposits = [DepositFact(a, D("100.00")) for a in (A1, A2, B1)]
    return expect([A1, A2, B1], deposits, payments, ("bank_a", "bank_b"))


def _read(account: AccountKey, balance: str, reserved: str = "0") -> AccountReading:
    return AccountReading(account, D(balance), D(reserved), "rest")


def test_clean_books_report_ok_with_zero_drift() -> None:
    model = _model(PaymentFact("p", Channel.REST, A1, B1, D("10"), Progress.SUCCEEDED))
    readings = {A1: _read(A1, "90"), A2: _read(A2, "100"), B1: _read(B1, "110")}
    drift = c.balance_drift(model, readings, ["bank_a", "bank_b"])
    assert drift.status is CheckStatus.OK and drift.violations == []
    assert drift.detail == {"drift": {"bank_a": "0", "bank_b": "0"},
                            "drifting_accounts": {"bank_a": 0, "bank_b": 0}}
    assert c.conservation(model, readings).status is CheckStatus.OK


def test_drift_names_the_account_and_amount() -> None:
    model = _model()
    readings = {A1: _read(A1, "125.50"), A2: _read(A2, "100"), B1: _read(B1, "100")}
    result = c.balance_drift(model, readings, ["bank_a", "bank_b"])
    assert result.status is CheckStatus.VIOLATED
    (violation,) = result.violations
    assert violation.subject == "bank_a/TWIN-A-001"
    assert violation.evidence["actual"] == "125.50"
    assert violation.evidence["expected"] == {"min": "100.00", "max": "100.00"}
    assert violation.evidence["drift"] == "25.50"
    assert result.detail["drift"] == {"bank_a": "25.50", "bank_b": "0"}
    assert result.detail["drifting_accounts"] == {"bank_a": 1, "bank_b": 0}
    # money from nowhere also breaks conservation
    conserved = c.conservation(model, readings)
    assert conserved.status is CheckStatus.VIOLATED
    assert conserved.violations[0].evidence["difference"] == "25.50"
    assert "appeared" in conserved.violations[0].message


def test_money_moved_between_twin_accounts_behind_its_back_is_drift_not_loss() -> None:
    model = _model()
    readings = {A1: _read(A1, "90"), A2: _read(A2, "110"), B1: _read(B1, "100")}
    assert len(c.balance_drift(model, readings, ["bank_a", "bank_b"]).violations) == 2
    assert c.conservation(model, readings).status is CheckStatus.OK


def test_in_flight_payment_is_not_drift() -> None:
    model = _model(PaymentFact("p", Channel.REST, A1, B1, D("10"), Progress.RESERVED))
    for a1, b1 in (("100", "100"), ("100", "110"), ("90", "110")):
        readings = {A1: _read(A1, a1, "10"), A2: _read(A2, "100"), B1: _read(B1, b1)}
        assert c.balance_drift(model, readings, ["bank_a", "bank_b"]).status is CheckStatus.OK
        assert c.conservation(model, readings).status is CheckStatus.OK


def test_missing_account_is_drift_but_an_unread_bank_is_unknown() -> None:
    model = _model()
    result = c.balance_drift(model, {A1: None, A2: _read(A2, "100")}, ["bank_a"])
    assert result.status is CheckStatus.VIOLATED
    assert result.violations[0].evidence["actual"] is None
    clean = c.balance_drift(model, {A1: _read(A1, "100"), A2: _read(A2, "100")}, ["bank_a"])
    assert clean.status is CheckStatus.UNKNOWN and "bank_b" in (clean.reason or "")
    assert clean.detail["drift"] == {"bank_a": "0"}
    assert c.conservation(model, {A1: _read(A1, "100")}).status is CheckStatus.UNKNOWN


def test_reserved_bounds() -> None:
    result = c.reserved_bounds([_read(A1, "100", "-1"), _read(A2, "100", "100"),
                                _read(B1, "5", "6")])
    assert [v.subject for v in result.violations] == ["bank_a/TWIN-A-001", "bank_b/TWIN-B-001"]
    assert result.violations[1].evidence == {
        "bank": "bank_b", "account": "TWIN-B-001", "balance": "5", "reserved": "6",
        "source": "rest"}


def test_reserved_matches_pending_only_once_the_difference_is_stable() -> None:
    mismatch = PendingSum(A1, D("30"), D("20"))
    first = c.reserved_matches_pending([mismatch], {})
    assert first.status is CheckStatus.OK and first.detail == {"unconfirmed": 1}
    moving = c.reserved_matches_pending([mismatch], {A1: D("5")})
    assert moving.status is CheckStatus.OK
    stable = c.reserved_matches_pending([mismatch], {A1: D("10")})
    assert stable.status is CheckStatus.VIOLATED
    assert stable.violations[0].evidence["difference"] == "10"


def _finished(outcome: str, channel: str = "rest") -> FinishedPayment:
    return FinishedPayment("pay-1", uuid.UUID(int=1), Channel(channel), Outcome(outcome),
                           "bank_a", "bank_b")


def test_status_agreement_rules() -> None:
    tx = uuid.UUID(int=1)
    agree = {"bank_a:outgoing": {tx: "SUCCESS"}, "clearing": {tx: "SUCCESS"},
             "bank_b:incoming": {tx: "SUCCESS"}}
    assert c.status_agreement([_finished("success")], agree).status is CheckStatus.OK
    disagree = {**agree, "clearing": {tx: "FAILED"}}
    result = c.status_agreement([_finished("success")], disagree)
    assert result.status is CheckStatus.VIOLATED
    assert result.violations[0].evidence["statuses"] == {
        "bank_a:outgoing": "SUCCESS", "clearing": "FAILED", "bank_b:incoming": "SUCCESS"}
    missing_dst = {**agree, "bank_b:incoming": {}}
    assert "bank_b:incoming has no row" in \
        c.status_agreement([_finished("success")], missing_dst).violations[0].message
    failed = {"bank_a:outgoing": {tx: "FAILED"}, "clearing": {tx: "FAILED"},
              "bank_b:incoming": {}}
    assert c.status_agreement([_finished("failed")], failed).status is CheckStatus.OK
    rejected = {"bank_a:outgoing": {tx: "FAILED"}, "clearing": {}, "bank_b:incoming": {}}
    assert c.status_agreement([_finished("rejected")], rejected).status is CheckStatus.OK
    leaked = {**rejected, "clearing": {tx: "PENDING"}}
    assert c.status_agreement([_finished("rejected")], leaked).status is CheckStatus.VIOLATED
    # Kafka channel: the source bank is never asked
    kafka = {"clearing": {tx: "SUCCESS"}, "bank_b:incoming": {tx: "SUCCESS"}}
    assert c.status_agreement([_finished("success", "kafka")], kafka).status is CheckStatus.OK
    # a service that was not read makes it unknown, never a violation
    partial = c.status_agreement([_finished("success")], {"bank_a:outgoing": {tx: "SUCCESS"}})
    assert partial.status is CheckStatus.UNKNOWN and "clearing" in (partial.reason or "")


def test_outbox_backlog_by_count_and_age() -> None:
    stats = {
        "bank_a": OutboxStats("bank_a", 0, None),
        "bank_b": OutboxStats("bank_b", 3, NOW - timedelta(seconds=45)),
        "clearing": OutboxStats("clearing", 500, NOW - timedelta(seconds=1)),
    }
    result = c.outbox_backlog(stats, NOW, max_pending=100, max_age_seconds=30)
    assert [v.subject for v in result.violations] == ["outbox bank_b", "outbox clearing"]
    assert result.violations[0].evidence["oldest_age_seconds"] == 45.0
    assert result.detail["services"]["bank_a"] == {"unpublished": 0, "oldest_age_seconds": 0.0}
    ok = c.outbox_backlog({"bank_a": stats["bank_a"]}, NOW, 100, 30)
    assert ok.status is CheckStatus.UNKNOWN


def _row(service: str, age: float, status: str = "PENDING") -> StoredRow:
    return StoredRow(service, "outgoing_transactions", uuid.UUID(int=7), "X", D("1"), status,
                     NOW - timedelta(seconds=age))


def test_stale_pending_and_outbox_integrity() -> None:
    rows = {"bank_a": [_row("bank_a", 31), _row("bank_a", 29), _row("bank_a", 99, "SUCCESS")],
            "bank_b": [], "clearing": []}
    result = c.stale_pending(rows, NOW, 30)
    assert [v.evidence["age_seconds"] for v in result.violations] == [31.0]
    # the clearing's mapping of the payee goes into the evidence when it was looked up
    routed = {"clearing": [StoredRow("clearing", "outgoing_transactions", uuid.UUID(int=8),
                                     "A", D("2"), "PENDING", NOW - timedelta(seconds=60),
                                     "BG-9")]}
    lost = c.stale_pending(routed, NOW, 30, ["clearing"], {"BG-9": ("03", "ACC")})
    assert lost.violations[0].evidence["mapping"] == {"clearing_number": "03",
                                                      "account_number": "ACC"}
    unmapped = c.stale_pending(routed, NOW, 30, ["clearing"], {"BG-9": None})
    assert unmapped.violations[0].evidence["mapping"] is None
    assert "mapping" not in c.stale_pending(routed, NOW, 30, ["clearing"], {}).violations[
        0].evidence
    integrity = c.outbox_integrity({"bank_a": [_row("bank_a", 1)], "bank_b": [],
                                    "clearing": []})
    assert integrity.status is CheckStatus.VIOLATED
    assert integrity.violations[0].evidence["transaction_id"] == str(uuid.UUID(int=7))
    assert c.outbox_integrity({"bank_a": []}).status is CheckStatus.UNKNOWN


def test_report_shape_is_bounded() -> None:
    many = [_read(AccountKey("bank_a", f"X{i}"), "1", "2") for i in range(80)]
    body = check_body(c.reserved_bounds(many)).model_dump(mode="json")
    assert body["violations"] == 80 and len(body["offending"]) == c.EVIDENCE_LIMIT
