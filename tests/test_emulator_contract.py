"""The embedded emulator speaks BGMock's contract exactly: every endpoint, status
code, body shape, event, key, header and quirk of ``shared/bgmock-contract.md``.

Raw ``requests`` against the real HTTP ports; events read back from the
in-process bus by a manual-assign "spy" consumer; SQLite books. The helpers
(``World``, ``Spy``) live in ``tests.support.emulator_world``.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from prometheus_client import REGISTRY

from bgmock_twin.bus.base import Record
from bgmock_twin.bus.memory import InMemoryBus, partition_for_key
from bgmock_twin.contract import (
    TOPIC_COMPLETED,
    TOPIC_FORWARDED,
    TOPIC_INITIATED,
    TOPIC_PROCESSED,
    TYPE_ID_HEADER,
    TYPE_OUTGOING,
    TYPE_RESPONSE,
    OutgoingTransactionEvent,
    Status,
    encode_event,
    loads_json,
)
from bgmock_twin.contract.tables import bank_outgoing_transactions, clearing_outbox_events
from bgmock_twin.emulator import EmulatorConfig
from tests.support.emulator_world import FAST_OUTBOX, World, emulator_world
from tests.support.ports import wait_for

CLEARING_INCOMING = "com.clearingservice.event.IncomingTransactionEvent"
CLEARING_RESPONSE = "com.clearingservice.event.TransactionResponseEvent"
SPRING_KEYS = {"timestamp", "status", "error", "path"}


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with emulator_world(EmulatorConfig(
        host="127.0.0.1", bus=InMemoryBus(),
        db_urls={"bank_a": None, "bank_b": None, "clearing": None},
        outbox_interval_seconds=FAST_OUTBOX,
    )) as w:
        yield w


def body_of(record: Record) -> dict[str, Any]:
    return loads_json(record.value or b"")  # type: ignore[no-any-return]


def lock_failures(service: str, origin: str) -> float:
    return REGISTRY.get_sample_value("bgmock_emulator_optimistic_lock_failures_total", {
        "service": service, "origin": origin}) or 0.0


def events_count(service: str, topic: str, result: str) -> float:
    return REGISTRY.get_sample_value("bgmock_emulator_events_total", {
        "service": service, "topic": topic, "result": result}) or 0.0


# --- plain endpoints -------------------------------------------------------------------------
def test_health_endpoints_answer_plain_ok(world: World) -> None:
    for url in (f"{world.a}/bank/health", f"{world.b}/bank/health", f"{world.c}/clearing/health"):
        answer = world.http.get(url)
        assert answer.status_code == 200
        assert answer.text == "OK"
        assert answer.headers["Content-Type"].startswith("text/plain")
    assert world.emulator.admin_url is None
    head = world.http.head(f"{world.a}/bank/health")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == "2"
    # Spring Boot 3 matches no trailing slash.
    assert world.http.get(f"{world.a}/bank/health/").status_code == 404


def test_account_crud_shapes_and_status_codes(world: World) -> None:
    number = f"ACC-{uuid.uuid4().hex[:8]}"
    created = world.http.post(f"{world.a}/bank/account", json={
        "accountNumber": number, "accountHolder": "Ann", "balance": 1000})
    assert created.status_code == 201
    body = loads_json(created.content)
    assert set(body) == {"accountId", "accountNumber", "accountHolder", "balance",
                         "reservedBalance", "createdAt", "updatedAt"}
    uuid.UUID(body["accountId"])
    assert body["accountNumber"] == number and body["accountHolder"] == "Ann"
    # Amounts are JSON numbers with 2 decimals; REST dates are ISO without a zone.
    assert '"balance":1000.00' in created.text and '"reservedBalance":0.00' in created.text
    assert datetime.fromisoformat(body["createdAt"]).tzinfo is None

    listed = world.http.get(f"{world.a}/bank/account")
    assert listed.status_code == 200
    assert number in [item["accountNumber"] for item in listed.json()]
    assert number not in [item["accountNumber"] for item in world.http.get(
        f"{world.b}/bank/account").json()]  # Bank B has its own books

    got = world.http.get(f"{world.a}/bank/account/{number}")
    assert got.status_code == 200 and loads_json(got.content)["balance"] == Decimal("1000.00")

    missing = world.http.get(f"{world.a}/bank/account/NOPE-{uuid.uuid4().hex[:6]}")
    assert missing.status_code == 404
    assert set(missing.json()) == SPRING_KEYS and missing.json()["status"] == 404

    duplicate = world.http.post(f"{world.a}/bank/account", json={
        "accountNumber": number, "accountHolder": "Other", "balance": 5})
    assert duplicate.status_code == 500  # a constraint error, not a 409
    assert set(duplicate.json()) == SPRING_KEYS
    assert world.get_account("01", number)["accountHolder"] == "Ann"

    no_number = world.http.post(f"{world.a}/bank/account", json={"accountHolder": "X"})
    assert no_number.status_code == 500

    updated = world.http.put(f"{world.a}/bank/account/{number}", json={
        "accountNumber": number, "accountHolder": "Ann Updated", "balance": 1000})
    assert updated.status_code == 200 and updated.json()["accountHolder"] == "Ann Updated"
    negative = world.http.put(f"{world.a}/bank/account/{number}", json={
        "accountNumber": number, "accountHolder": "Ann", "balance": -1})
    assert negative.status_code == 400
    assert world.http.put(f"{world.a}/bank/account/NOPE-x", json={
        "accountNumber": "x", "balance": 1}).status_code == 404

    assert world.http.delete(f"{world.a}/bank/account/{number}").status_code == 204
    assert world.http.get(f"{world.a}/bank/account/{number}").status_code == 404
    assert world.http.delete(f"{world.a}/bank/account/{number}").status_code == 404


def test_deposit_reserve_commit_release(world: World) -> None:
    number = world.account("02", "100.00")
    url = f"{world.b}/bank/account/{number}"
    deposit = world.http.post(f"{url}/deposit", params={"amount": "50.25"})
    assert deposit.status_code == 200
    assert loads_json(deposit.content)["balance"] == Decimal("150.25")
    for bad in ("0", "-5", "abc", "NaN"):
        answer = world.http.post(f"{url}/deposit", params={"amount": bad})
        assert answer.status_code == 400, bad
        assert set(answer.json()) == SPRING_KEYS
    assert world.http.post(f"{url}/deposit").status_code == 400  # no amount at all
    assert world.http.post(f"{world.b}/bank/account/NOPE-1/deposit",
                           params={"amount": "1"}).status_code == 404

    reserve = world.http.post(f"{url}/reserve", params={"amount": "100"})
    assert reserve.status_code == 200
    result = loads_json(reserve.content)
    assert set(result) == {"success", "message", "account"} and result["success"] is True
    assert result["account"]["reservedBalance"] == Decimal("100.00")
    assert isinstance(result["message"], str)
    # available = balance - reserved = 50.25: refused, still a 200, the account unchanged
    refused = world.http.post(f"{url}/reserve", params={"amount": "50.26"})
    assert refused.status_code == 200
    refused_body = loads_json(refused.content)
    assert refused_body["success"] is False and refused_body["message"]
    assert refused_body["account"]["reservedBalance"] == Decimal("100.00")
    commit = world.http.post(f"{url}/commit", params={"amount": "40"})
    assert commit.status_code == 200
    assert world.balances("02", number) == (Decimal("110.25"), Decimal("60.00"))
    assert world.http.post(f"{url}/commit", params={"amount": "60.01"}).status_code == 400
    assert world.http.post(f"{url}/release", params={"amount": "60.01"}).status_code == 400
    assert world.http.post(f"{url}/release", params={"amount": "60"}).status_code == 200
    assert world.balances("02", number) == (Decimal("110.25"), Decimal("0.00"))
    # No positivity check on reserve: zero and negative amounts "succeed" as written.
    zero = world.http.post(f"{url}/reserve", params={"amount": "0"})
    assert zero.status_code == 200 and zero.json()["success"] is True
    negative = world.http.post(f"{url}/reserve", params={"amount": "-5"})
    assert negative.status_code == 200 and negative.json()["success"] is True
    assert world.balances("02", number) == (Decimal("110.25"), Decimal("-5.00"))
    assert world.http.post(f"{url}/release", params={"amount": "0"}).status_code == 400
    nobody = world.http.post(f"{world.b}/bank/account/NOPE-2/reserve", params={"amount": "1"})
    assert nobody.status_code == 200
    assert nobody.json() == {"success": False, "message": "Account not found", "account": None}


def test_bank_mapping_crud(world: World) -> None:
    bankgood = f"BG-{uuid.uuid4().hex[:8]}"
    body = {"bankgoodNumber": bankgood, "clearingNumber": "02", "accountNumber": "X1",
            "bankName": "Bank B"}
    created = world.http.post(f"{world.c}/clearing/bank-mapping", json=body)
    assert created.status_code == 201
    assert set(created.json()) == {"id", *body}
    uuid.UUID(created.json()["id"])  # a UUID, not a sequence number
    # There is no list endpoint: only GET by bankgood number.
    assert world.http.get(f"{world.c}/clearing/bank-mapping").status_code == 405
    assert {k: created.json()[k] for k in body} == body
    assert world.http.post(f"{world.c}/clearing/bank-mapping", json=body).status_code == 500
    got = world.http.get(f"{world.c}/clearing/bank-mapping/{bankgood}")
    assert got.status_code == 200 and got.json()["accountNumber"] == "X1"
    missing = world.http.get(f"{world.c}/clearing/bank-mapping/NOPE-{bankgood}")
    assert missing.status_code == 404 and "error" in missing.json()
    put = world.http.put(f"{world.c}/clearing/bank-mapping/{bankgood}", json={
        "clearingNumber": "01", "accountNumber": "X2", "bankName": "Bank A"})
    assert put.status_code == 200 and put.json()["clearingNumber"] == "01"
    assert world.http.put(f"{world.c}/clearing/bank-mapping/NOPE-{bankgood}",
                          json={"clearingNumber": "01"}).status_code == 404
    assert world.http.delete(f"{world.c}/clearing/bank-mapping/{bankgood}").status_code == 204
    assert world.http.delete(f"{world.c}/clearing/bank-mapping/{bankgood}").status_code == 404


def test_malformed_requests_are_4xx_and_never_break_the_server(world: World) -> None:
    too_big = '{"transactionId": "%s", "accountNumber": "X", "fromAccountNumber": "X", ' \
        '"amount": 1e999999, "balance": 1e30}' % uuid.uuid4()
    for path in ("/bank/account", "/bank/transaction/outgoing", "/bank/transaction/incoming"):
        for payload in ("{not json", "[1, 2]", "", "\"text\"", too_big, "{\"a\": NaN}"):
            answer = world.http.post(f"{world.a}{path}", data=payload,
                                     headers={"Content-Type": "application/json"})
            assert answer.status_code == 400, (path, payload, answer.text)
            assert set(answer.json()) == SPRING_KEYS
    wrong_types = world.http.post(f"{world.a}/bank/transaction/outgoing", json={
        "fromAccountNumber": {"x": 1}, "toBankgoodNumber": "BG", "amount": 1})
    assert wrong_types.status_code == 400
    bad_amount = world.http.post(f"{world.a}/bank/transaction/outgoing", json={
        "fromAccountNumber": "A", "toBankgoodNumber": "BG", "amount": "lots"})
    assert bad_amount.status_code == 400
    bad_id = world.http.post(f"{world.a}/bank/transaction/outgoing", json={
        "transactionId": "not-a-uuid", "fromAccountNumber": "A", "amount": 1})
    assert bad_id.status_code == 400
    assert world.http.get(f"{world.a}/bank/transaction/outgoing/not-a-uuid").status_code == 400
    assert world.http.get(f"{world.c}/clearing/transaction/123").status_code == 400
    unknown = world.http.get(f"{world.a}/no/such/path")
    assert unknown.status_code == 404 and unknown.json()["path"] == "/no/such/path"
    assert world.http.patch(f"{world.a}/bank/account").status_code == 405
    assert world.http.delete(f"{world.c}/clearing/health").status_code == 405
    # Not even HTTP: the connection is answered or closed, the server survives.
    port = int(world.a.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
        raw.sendall(b"\x16\x03\x01garbage that is not http\r\n\r\n")
        raw.recv(1024)
    assert world.http.get(f"{world.a}/bank/health").text == "OK"


# --- payments ----------------------------------------------------------------------------------
def _check_payment_events(world: World, tx: str, source: str, dest: str, payer: str,
                          bankgood: str, payee: str, amount: str) -> None:
    initiated = world.spy.wait(tx, TOPIC_INITIATED)
    forwarded = world.spy.wait(tx, TOPIC_FORWARDED)
    processed = world.spy.wait(tx, TOPIC_PROCESSED)
    completed = world.spy.wait(tx, TOPIC_COMPLETED)
    # Each service writes its own classes' names; consumers ignore them.
    for records, key, type_id in ((initiated, source, TYPE_OUTGOING),
                                  (forwarded, dest, CLEARING_INCOMING),
                                  (processed, dest, TYPE_RESPONSE),
                                  (completed, source, CLEARING_RESPONSE)):
        assert len(records) == 1
        record = records[0]
        assert record.key == key.encode()
        assert record.partition == partition_for_key(key.encode(), 3)
        assert record.header(TYPE_ID_HEADER) == type_id.encode()
    raw_initiated = (initiated[0].value or b"").decode()
    assert f'"amount":{amount}' in raw_initiated  # a JSON number with 2 decimals
    assert body_of(initiated[0]) == {
        "transactionId": tx, "fromClearingNumber": source, "fromAccountNumber": payer,
        "toBankgoodNumber": bankgood, "amount": Decimal(amount), "status": "PENDING",
        "createdAt": None, "updatedAt": None,
    }
    fwd = body_of(forwarded[0])
    assert set(fwd) == {"transactionId", "toClearingNumber", "toAccountNumber", "amount",
                        "status", "createdAt", "updatedAt"}
    assert (fwd["toClearingNumber"], fwd["toAccountNumber"], fwd["amount"], fwd["status"]) == \
        (dest, payee, Decimal(amount), "PENDING")
    # The forwarded dates copy the initiated event's (null) createdAt; no updatedAt.
    assert fwd["createdAt"] is None and fwd["updatedAt"] is None
    assert f'"amount":{amount}' in (forwarded[0].value or b"").decode()  # scale kept
    assert body_of(processed[0]) == {"transactionId": tx, "status": "SUCCESS",
                                     "message": "Transaction processed"}
    assert body_of(completed[0]) == {"transactionId": tx, "status": "SUCCESS",
                                     "message": "Transaction processed"}


@pytest.mark.parametrize(("source", "dest"), [("01", "02"), ("02", "01")])
def test_payment_between_banks_follows_every_step(world: World, source: str, dest: str) -> None:
    payer = world.account(source, "500.00")
    payee = world.account(dest, "10.00")
    bankgood = world.mapping(dest, payee)
    tx = world.pay(source, payer, bankgood, Decimal("125.50"))
    outgoing = world.final(source, tx)
    assert outgoing["status"] == "SUCCESS"
    assert set(outgoing) == {"transactionId", "fromClearingNumber", "fromAccountNumber",
                             "toBankgoodNumber", "amount", "status", "createdAt", "updatedAt"}
    assert outgoing["fromClearingNumber"] == source and outgoing["amount"] == Decimal("125.50")
    assert world.balances(source, payer) == (Decimal("374.50"), Decimal("0.00"))
    assert world.balances(dest, payee) == (Decimal("135.50"), Decimal("0.00"))
    assert world.clearing_status(tx) == "SUCCESS"
    incoming = world.incoming(dest, tx)
    assert incoming is not None and incoming["status"] == "SUCCESS"
    assert set(incoming) == {"transactionId", "toClearingNumber", "toAccountNumber", "amount",
                             "status", "createdAt", "updatedAt"}
    _check_payment_events(world, tx, source, dest, payer, bankgood, payee, "125.50")


def test_payment_to_the_same_bank_works(world: World) -> None:
    payer = world.account("01", "100.00")
    payee = world.account("01", "0.00")
    tx = world.pay("01", payer, world.mapping("01", payee), "30")
    assert world.final("01", tx)["status"] == "SUCCESS"
    assert world.balances("01", payer) == (Decimal("70.00"), Decimal("0.00"))
    assert world.balances("01", payee) == (Decimal("30.00"), Decimal("0.00"))


@pytest.mark.parametrize("case", ["zero", "negative", "unknown_account", "insufficient",
                                  "reserved_counts"])
def test_rejected_payment_is_202_stored_failed_without_event(world: World, case: str) -> None:
    payer = world.account("01", "100.00")
    bankgood = world.mapping("02", world.account("02"))
    amount: Any = "50"
    account: str = payer
    if case == "zero":
        amount = 0
    elif case == "negative":
        amount = "-5"
    elif case == "unknown_account":
        account = f"NOPE-{uuid.uuid4().hex[:6]}"
    elif case == "insufficient":
        amount = "100.01"
    else:  # 80 of 100 reserved: only 20 available
        assert world.http.post(f"{world.a}/bank/account/{payer}/reserve",
                               params={"amount": "80"}).status_code == 200
        amount = "30"
    answer = world.http.post(f"{world.a}/bank/transaction/outgoing", json={
        "fromAccountNumber": account, "toBankgoodNumber": bankgood, "amount": amount})
    assert answer.status_code == 202
    tx = answer.json()["transactionId"]
    # The answer does not tell a rejection apart; only the stored status does.
    assert answer.json()["message"] == "Transaction received"
    stored = world.outgoing("01", tx)
    assert stored is not None and stored["status"] == "FAILED"
    # Bank A's outbox publishes in order: once a later payment's event is out, any
    # event of the rejected one would have been published before it.
    later = world.pay("01", world.account("01"), bankgood, "1")
    world.spy.wait(later, TOPIC_INITIATED)
    assert world.spy.of(tx) == []
    reserved = Decimal("80.00") if case == "reserved_counts" else Decimal("0.00")
    assert world.balances("01", payer) == (Decimal("100.00"), reserved)


@pytest.mark.parametrize("missing", ["amount", "fromAccountNumber"])
def test_null_amount_or_payer_is_500_with_nothing_stored(world: World, missing: str) -> None:
    payer = world.account("01")
    body: dict[str, Any] = {"fromAccountNumber": payer, "toBankgoodNumber": "BG-X", "amount": 5}
    body[missing] = None
    with world.emulator.engines["bank_a"].connect() as conn:
        before = conn.execute(sa.select(sa.func.count()).select_from(
            bank_outgoing_transactions)).scalar_one()
    answer = world.http.post(f"{world.a}/bank/transaction/outgoing", json=body)
    assert answer.status_code == 500 and set(answer.json()) == SPRING_KEYS
    with world.emulator.engines["bank_a"].connect() as conn:
        after = conn.execute(sa.select(sa.func.count()).select_from(
            bank_outgoing_transactions)).scalar_one()
    assert after == before
    assert world.balances("01", payer) == (Decimal("1000.00"), Decimal("0.00"))


def test_client_transaction_id_only_skips_duplicates(world: World) -> None:
    payer = world.account("01", "100.00")
    bankgood = world.mapping("02", world.account("02"))
    own_id = str(uuid.uuid4())
    answer = world.http.post(f"{world.a}/bank/transaction/outgoing", json={
        "transactionId": own_id, "fromAccountNumber": payer, "toBankgoodNumber": bankgood,
        "amount": 10})
    assert answer.status_code == 202
    tx = answer.json()["transactionId"]
    assert tx != own_id  # the bank generates the id
    again = world.http.post(f"{world.a}/bank/transaction/outgoing", json={
        "transactionId": tx, "fromAccountNumber": payer, "toBankgoodNumber": bankgood,
        "amount": 10})
    assert again.status_code == 202 and again.json()["transactionId"] == tx
    assert world.final("01", tx)["status"] == "SUCCESS"
    assert world.balances("01", payer) == (Decimal("90.00"), Decimal("0.00"))
    assert len(world.spy.of(tx, TOPIC_INITIATED)) == 1


def test_unknown_bankgood_fails_at_the_clearing(world: World) -> None:
    payer = world.account("01", "100.00")
    bankgood = f"BG-UNKNOWN-{uuid.uuid4().hex[:6]}"
    tx = world.pay("01", payer, bankgood, "40")
    assert world.final("01", tx)["status"] == "FAILED"
    assert world.clearing_status(tx) == "FAILED"
    completed = world.spy.wait(tx, TOPIC_COMPLETED)
    assert completed[0].key == b"01"
    assert body_of(completed[0]) == {"transactionId": tx, "status": "FAILED",
                                     "message": f"No bank-mapping found for {bankgood}"}
    assert completed[0].header(TYPE_ID_HEADER) == \
        b"com.clearingservice.event.TransactionResponseEvent"
    assert world.spy.of(tx, TOPIC_FORWARDED) == []
    assert world.balances("01", payer) == (Decimal("100.00"), Decimal("0.00"))


def test_unknown_payee_account_fails_at_the_destination(world: World) -> None:
    payer = world.account("02", "100.00")
    bankgood = world.mapping("01", f"NOPE-{uuid.uuid4().hex[:6]}")
    tx = world.pay("02", payer, bankgood, "40")
    assert world.final("02", tx)["status"] == "FAILED"
    processed = world.spy.wait(tx, TOPIC_PROCESSED)
    assert processed[0].key == b"01"
    assert body_of(processed[0])["status"] == "FAILED"
    assert body_of(processed[0])["message"] == \
        'Transaction failed: 404 NOT_FOUND "Account not found"'
    # the clearing relays the message as it came
    completed = world.spy.wait(tx, TOPIC_COMPLETED)
    assert body_of(completed[0])["message"] == body_of(processed[0])["message"]
    incoming = world.incoming("01", tx)
    assert incoming is not None and incoming["status"] == "FAILED"
    assert world.clearing_status(tx) == "FAILED"
    assert world.balances("02", payer) == (Decimal("100.00"), Decimal("0.00"))


def test_mapping_to_a_clearing_number_nobody_serves_stays_pending(world: World) -> None:
    payer = world.account("01", "100.00")
    bankgood = world.mapping("99", "ACC-NOWHERE")
    tx = world.pay("01", payer, bankgood, "25")
    forwarded = world.spy.wait(tx, TOPIC_FORWARDED)
    assert forwarded[0].key == b"99"
    time.sleep(10 * FAST_OUTBOX)  # ten more outbox cycles: nothing may happen
    assert world.outgoing("01", tx)["status"] == "PENDING"  # type: ignore[index]
    assert world.clearing_status(tx) == "PENDING"
    assert world.incoming("01", tx) is None and world.incoming("02", tx) is None
    assert world.balances("01", payer) == (Decimal("100.00"), Decimal("25.00"))


def test_kafka_injected_payment_credits_destination_and_is_ignored_at_source(
    world: World,
) -> None:
    payer = world.account("01", "100.00")
    payee = world.account("02", "0.00")
    bankgood = world.mapping("02", payee)
    tx = uuid.uuid4()
    ignored_before = events_count("bank_a", TOPIC_COMPLETED, "unknown_transaction")
    value, headers = encode_event(OutgoingTransactionEvent(
        transaction_id=tx, from_clearing_number="01", from_account_number=payer,
        to_bankgood_number=bankgood, amount=Decimal("60.00"), status=Status.PENDING))
    producer = world.bus.producer()
    producer.produce(TOPIC_INITIATED, "01", value, headers)
    producer.flush(5)
    completed = world.spy.wait(str(tx), TOPIC_COMPLETED)
    assert completed[0].key == b"01" and body_of(completed[0])["status"] == "SUCCESS"
    wait_for(lambda: events_count("bank_a", TOPIC_COMPLETED, "unknown_transaction")
             > ignored_before, timeout=5, message="bank A ignored the completion")
    assert world.balances("02", payee) == (Decimal("60.00"), Decimal("0.00"))
    assert world.balances("01", payer) == (Decimal("100.00"), Decimal("0.00"))
    assert world.outgoing("01", str(tx)) is None
    assert world.clearing_status(str(tx)) == "SUCCESS"


def test_null_and_foreign_keys_are_dropped_by_banks(world: World) -> None:
    payee = world.account("02", "0.00")
    producer = world.bus.producer()
    ids = [uuid.uuid4() for _ in range(3)]
    for key, tx in zip((None, "03", "01"), ids, strict=True):
        body = json.dumps({"transactionId": str(tx), "toClearingNumber": "02",
                           "toAccountNumber": payee, "amount": 5, "status": "PENDING"})
        producer.produce(TOPIC_FORWARDED, key, body.encode())
    marker = uuid.uuid4()  # Bank B's own key: processed after the three above
    producer.produce(TOPIC_FORWARDED, "02", json.dumps({
        "transactionId": str(marker), "toClearingNumber": "02", "toAccountNumber": payee,
        "amount": 1}).encode())
    producer.flush(5)
    wait_for(lambda: world.incoming("02", str(marker)), timeout=5, message="marker handled")
    wait_for(lambda: world.incoming("01", str(ids[2])), timeout=5, message="key 01 at bank A")
    for tx in ids:
        assert world.incoming("02", str(tx)) is None
    assert world.incoming("01", str(ids[0])) is None and world.incoming("01", str(ids[1])) is None
    # The key decides, not the body: Bank A took key 01 and has no such account.
    assert world.incoming("01", str(ids[2]))["status"] == "FAILED"  # type: ignore[index]
    assert world.balances("02", payee) == (Decimal("1.00"), Decimal("0.00"))


def test_redelivery_is_skipped_except_by_the_processed_handler(world: World) -> None:
    payer = world.account("01", "100.00")
    payee = world.account("02", "0.00")
    tx = world.pay("01", payer, world.mapping("02", payee), "10")
    assert world.final("01", tx)["status"] == "SUCCESS"
    producer = world.bus.producer()
    for topic in (TOPIC_INITIATED, TOPIC_FORWARDED, TOPIC_PROCESSED):
        original = world.spy.of(tx, topic)[0]
        producer.produce(topic, (original.key or b"").decode(), original.value or b"",
                         dict(original.headers))
    producer.flush(5)
    # The clearing relays the repeated processed event: a second completed record.
    completed = world.spy.wait(tx, TOPIC_COMPLETED, count=2)
    assert len(completed) == 2
    marker = world.pay("01", payer, world.mapping("02", payee), "1")
    world.final("01", marker)
    assert len(world.spy.of(tx, TOPIC_FORWARDED)) == 2  # only the re-produced one
    assert len(world.spy.of(tx, TOPIC_PROCESSED)) == 2  # Bank B did not answer again
    assert world.balances("02", payee) == (Decimal("11.00"), Decimal("0.00"))
    assert world.balances("01", payer) == (Decimal("89.00"), Decimal("0.00"))
    with world.emulator.engines["clearing"].connect() as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(clearing_outbox_events)
                            .where(clearing_outbox_events.c.transaction_id == uuid.UUID(tx))
                            ).scalar_one()
    assert rows == 3  # forwarded + two completed


def test_invalid_records_are_counted_and_skipped(world: World) -> None:
    before = events_count("bank_b", TOPIC_FORWARDED, "invalid")
    producer = world.bus.producer()
    producer.produce(TOPIC_FORWARDED, "02", b"{this is not json")
    producer.produce(TOPIC_FORWARDED, "02", b'{"transactionId": "x", "amount": 1}')
    payee = world.account("02", "0.00")
    marker = uuid.uuid4()
    producer.produce(TOPIC_FORWARDED, "02", json.dumps({
        "transactionId": str(marker), "toAccountNumber": payee, "amount": 2}).encode())
    producer.flush(5)
    wait_for(lambda: world.incoming("02", str(marker)), timeout=5, message="marker handled")
    assert events_count("bank_b", TOPIC_FORWARDED, "invalid") == before + 2
    assert world.balances("02", payee)[0] == Decimal("2.00")


# --- REST doors ----------------------------------------------------------------------------
def test_rest_doors_enter_the_same_handlers(world: World) -> None:
    payee = world.account("02", "0.00")
    bankgood = world.mapping("02", payee)
    tx = str(uuid.uuid4())
    door = world.http.post(f"{world.c}/clearing/transaction/outgoing", json={
        "transactionId": tx, "fromClearingNumber": "01", "fromAccountNumber": "EXT",
        "toBankgoodNumber": bankgood, "amount": 7, "status": "PENDING"})
    assert door.status_code == 202 and door.json()["transactionId"] == tx
    world.spy.wait(tx, TOPIC_COMPLETED)
    assert world.balances("02", payee)[0] == Decimal("7.00")

    # A processed event for a transaction the clearing never saw: silently ignored.
    never_seen = str(uuid.uuid4())
    unknown = world.http.post(f"{world.c}/clearing/transaction/processed", json={
        "transactionId": never_seen, "status": "SUCCESS", "message": "x"})
    assert unknown.status_code == 202
    assert world.clearing_status(never_seen) is None
    again = world.http.post(f"{world.c}/clearing/transaction/processed", json={
        "transactionId": tx, "status": "SUCCESS", "message": "again"})
    assert again.status_code == 202
    assert len(world.spy.wait(tx, TOPIC_COMPLETED, count=2)) == 2

    incoming_id = str(uuid.uuid4())
    bank_door = world.http.post(f"{world.b}/bank/transaction/incoming", json={
        "transactionId": incoming_id, "toClearingNumber": "02", "toAccountNumber": payee,
        "amount": 3, "status": "PENDING"})
    # The bank's doors answer 200 with an empty body.
    assert bank_door.status_code == 200 and bank_door.content == b""
    assert world.incoming("02", incoming_id)["status"] == "SUCCESS"  # type: ignore[index]
    assert world.balances("02", payee)[0] == Decimal("10.00")
    processed = world.spy.wait(incoming_id, TOPIC_PROCESSED)
    assert processed[0].key == b"02"

    payer = world.account("01", "50.00")
    world.emulator.faults.pause_consumers("bank_a")
    try:
        pending = world.pay("01", payer, f"BG-NONE-{uuid.uuid4().hex[:4]}", "20")
        world.spy.wait(pending, TOPIC_COMPLETED)
        assert world.outgoing("01", pending)["status"] == "PENDING"  # type: ignore[index]
        completed_door = world.http.post(f"{world.a}/bank/transaction/outgoing/completed", json={
            "transactionId": pending, "status": "FAILED", "message": "via REST"})
        assert completed_door.status_code == 200 and completed_door.content == b""
        assert world.outgoing("01", pending)["status"] == "FAILED"  # type: ignore[index]
        assert world.balances("01", payer) == (Decimal("50.00"), Decimal("0.00"))
    finally:
        world.emulator.faults.resume_consumers("bank_a")

    for url, body in ((f"{world.c}/clearing/transaction/outgoing", {"amount": 1}),
                      (f"{world.c}/clearing/transaction/processed", {"transactionId": tx}),
                      (f"{world.b}/bank/transaction/incoming", {"transactionId": tx}),
                      (f"{world.a}/bank/transaction/outgoing/completed",
                       {"transactionId": tx, "status": "DONE"})):
        assert world.http.post(url, json=body).status_code == 400, url


def test_incoming_get_and_delete(world: World) -> None:
    payee = world.account("01", "0.00")
    tx = str(uuid.uuid4())
    world.http.post(f"{world.a}/bank/transaction/incoming", json={
        "transactionId": tx, "toClearingNumber": "01", "toAccountNumber": payee, "amount": 1})
    assert world.http.get(f"{world.a}/bank/transaction/incoming/{tx}").status_code == 200
    deleted = world.http.delete(f"{world.a}/bank/transaction/incoming/{tx}")
    assert deleted.status_code == 200 and deleted.headers["Content-Type"].startswith("text/plain")
    assert deleted.text  # a plain-text sentence, not JSON
    # An unknown transaction: 404 with an empty body.
    missing = world.http.get(f"{world.a}/bank/transaction/incoming/{tx}")
    assert missing.status_code == 404 and missing.content == b""
    again = world.http.delete(f"{world.a}/bank/transaction/incoming/{tx}")
    assert again.status_code == 404 and again.headers["Content-Type"].startswith("text/plain")
    unknown_out = world.http.get(f"{world.a}/bank/transaction/outgoing/{uuid.uuid4()}")
    assert unknown_out.status_code == 404 and unknown_out.content == b""
    gone_out = world.http.delete(f"{world.a}/bank/transaction/outgoing/{uuid.uuid4()}")
    assert gone_out.status_code == 404 and gone_out.headers["Content-Type"].startswith(
        "text/plain")
    gone = world.http.get(f"{world.c}/clearing/transaction/{uuid.uuid4()}")
    assert gone.status_code == 404 and "error" in gone.json()


def test_concurrent_payments_never_overdraw(world: World) -> None:
    payer = world.account("01", "100.00")
    bankgood = world.mapping("02", world.account("02", "0.00"))
    ids: list[str] = []
    lost_races: list[str] = []
    lock = threading.Lock()

    def pay() -> None:
        with requests.Session() as session:
            answer = session.post(f"{world.a}/bank/transaction/outgoing", json={
                "fromAccountNumber": payer, "toBankgoodNumber": bankgood, "amount": "15"})
            with lock:
                if answer.status_code == 500:  # lost the race on the payer's version
                    lost_races.append(answer.text)
                else:
                    assert answer.status_code == 202, answer.text
                    ids.append(answer.json()["transactionId"])

    threads = [threading.Thread(target=pay) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) + len(lost_races) == 12
    statuses = [world.final("01", tx)["status"] for tx in ids]
    successes = statuses.count("SUCCESS")
    assert successes <= 6 and successes + statuses.count("FAILED") == len(ids)
    if not lost_races:
        assert successes == 6
    assert world.balances("01", payer) == (Decimal("100.00") - 15 * successes, Decimal("0.00"))
    with world.emulator.engines["bank_a"].connect() as conn:
        stored = conn.execute(sa.select(sa.func.count()).select_from(bank_outgoing_transactions)
                              .where(bank_outgoing_transactions.c.from_account_number == payer)
                              ).scalar_one()
    assert stored == len(ids)  # a 500 stored nothing


def test_keep_alive_serves_many_requests_on_one_connection(world: World) -> None:
    host, port = world.a.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        for i in range(5):
            conn.request("POST", "/bank/account", body=json.dumps({
                "accountNumber": f"KA-{uuid.uuid4().hex[:8]}", "balance": i}),
                headers={"Content-Type": "application/json"})
            answer = conn.getresponse()
            assert answer.status == 201
            assert answer.getheader("Connection") is None  # HTTP/1.1: stays open
            answer.read()
        conn.request("GET", "/bank/health")
        assert conn.getresponse().read() == b"OK"
    finally:
        conn.close()


# --- optimistic locking (@Version) -----------------------------------------------------------
def test_payment_whose_payer_is_credited_meanwhile_is_500_with_nothing_stored(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the in-memory SQLite books: the payment reads the payer, a forwarded credit
    to the same account (the real listener handler) commits before the payment
    writes, and the payment's versioned write fails: 500, nothing stored."""
    from bgmock_twin.contract import IncomingTransactionEvent

    payer = world.account("01", "100.00")
    bankgood = world.mapping("02", world.account("02", "0.00"))
    bank = world.emulator.bank_a
    original = bank.accounts.read
    credit = uuid.uuid4()

    def read_then_credited(number: str | None) -> Any:
        row = original(number)
        if number == payer:
            monkeypatch.setattr(bank.accounts, "read", original)
            assert bank.handle_forwarded(IncomingTransactionEvent(
                transaction_id=credit, to_clearing_number="01", to_account_number=payer,
                amount=Decimal("5.00"), status=Status.PENDING)) == "handled"
        return row

    monkeypatch.setattr(bank.accounts, "read", read_then_credited)
    before = lock_failures("bank_a", "rest")
    answer = world.http.post(f"{world.a}/bank/transaction/outgoing", json={
        "fromAccountNumber": payer, "toBankgoodNumber": bankgood, "amount": "30"})
    assert answer.status_code == 500 and set(answer.json()) == SPRING_KEYS
    assert lock_failures("bank_a", "rest") == before + 1
    assert world.balances("01", payer) == (Decimal("105.00"), Decimal("0.00"))
    with world.emulator.engines["bank_a"].connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(bank_outgoing_transactions)
                            .where(bank_outgoing_transactions.c.from_account_number == payer)
                            ).scalar_one() == 0
    # the next attempt reads the new version and goes through
    tx = world.pay("01", payer, bankgood, "30")
    assert world.final("01", tx)["status"] == "SUCCESS"
    assert world.balances("01", payer) == (Decimal("75.00"), Decimal("0.00"))


def test_deposit_losing_the_race_is_500(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    number = world.account("02", "10.00")
    bank = world.emulator.bank_b
    original = bank.accounts.read

    def read_then_deposited(account: str | None) -> Any:
        row = original(account)
        monkeypatch.setattr(bank.accounts, "read", original)
        assert world.http.post(f"{world.b}/bank/account/{number}/deposit",
                               params={"amount": "1"}).status_code == 200
        return row

    monkeypatch.setattr(bank.accounts, "read", read_then_deposited)
    answer = world.http.post(f"{world.b}/bank/account/{number}/deposit", params={"amount": "7"})
    assert answer.status_code == 500
    assert world.balances("02", number) == (Decimal("11.00"), Decimal("0.00"))


def test_consumers_ignore_type_headers_and_amounts_keep_their_scale(world: World) -> None:
    payer = world.account("01", "100.00")
    payee = world.account("02", "0.00")
    tx = world.pay("01", payer, world.mapping("02", payee), "20.1")
    assert world.final("01", tx)["status"] == "SUCCESS"
    # the scale of numeric(…, 2) on the wire: 20.10, never 20.1
    for topic in (TOPIC_INITIATED, TOPIC_FORWARDED):
        assert '"amount":20.10' in (world.spy.wait(tx, topic)[0].value or b"").decode()
    assert '"amount":20.10' in world.http.get(
        f"{world.a}/bank/transaction/outgoing/{tx}").text
    # a record with a foreign or missing type header is handled all the same
    producer = world.bus.producer()
    credits = [uuid.uuid4(), uuid.uuid4()]
    for credit, headers in zip(credits, ({TYPE_ID_HEADER: b"com.example.Nonsense"}, None),
                               strict=True):
        producer.produce(TOPIC_FORWARDED, "02", json.dumps({
            "transactionId": str(credit), "toClearingNumber": "02", "toAccountNumber": payee,
            "amount": 1.5, "status": "PENDING"}).encode(), headers)
    producer.flush(5)
    for credit in credits:
        wait_for(lambda c=credit: world.incoming("02", str(c)), timeout=10,  # type: ignore[misc]
                 message="credit with an odd type header handled")
    assert world.balances("02", payee) == (Decimal("23.10"), Decimal("0.00"))
