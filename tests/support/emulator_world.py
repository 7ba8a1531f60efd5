"""The embedded emulator as the emulator tests drive it: raw HTTP to its real ports
(``World``) and a "spy" consumer reading back every event it publishes (``Spy``).

``emulator_world`` starts an emulator on a given bus, yields its ``World`` and
stops it all afterwards (also when the test fails).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import requests

from bgmock_twin.bus.base import EventBus, EventConsumer, Record
from bgmock_twin.contract import TOPICS, dumps_json, loads_json
from bgmock_twin.emulator import EmbeddedBGMock, EmulatorConfig
from tests.support.ports import wait_for

FAST_OUTBOX = 0.05


class Spy:
    """Reads every record of the four topics (manual assignment, from the beginning)."""

    def __init__(self, bus: EventBus) -> None:
        self.consumer: EventConsumer = bus.consumer(
            f"spy-{uuid.uuid4().hex[:8]}", list(TOPICS), manual_assign=True)
        self.records: list[Record] = []
        self._lock = threading.Lock()

    def _drain(self) -> None:
        with self._lock:
            self.records.extend(self.consumer.poll(0.05))

    def of(self, transaction_id: str, topic: str | None = None) -> list[Record]:
        self._drain()
        found = []
        for record in self.records:
            if topic is not None and record.topic != topic:
                continue
            try:
                body = loads_json(record.value or b"")
            except ValueError:
                continue
            if isinstance(body, dict) and body.get("transactionId") == transaction_id:
                found.append(record)
        return found

    def wait(self, transaction_id: str, topic: str, count: int = 1,
             timeout: float = 15) -> list[Record]:
        return wait_for(lambda: (lambda r: r if len(r) >= count else None)(
            self.of(transaction_id, topic)), timeout=timeout,
            message=f"{count} {topic} record(s) of {transaction_id}")

    def close(self) -> None:
        self.consumer.close()


@dataclass
class World:
    emulator: EmbeddedBGMock
    bus: EventBus
    spy: Spy
    http: requests.Session = field(default_factory=requests.Session)

    @property
    def a(self) -> str:
        return self.emulator.urls["bank_a"]

    @property
    def b(self) -> str:
        return self.emulator.urls["bank_b"]

    @property
    def c(self) -> str:
        return self.emulator.urls["clearing"]

    def bank_url(self, clearing: str) -> str:
        return self.a if clearing == "01" else self.b

    def account(self, clearing: str, balance: str = "1000.00") -> str:
        number = f"ACC-{uuid.uuid4().hex[:10]}"
        answer = self.http.post(f"{self.bank_url(clearing)}/bank/account", json={
            "accountNumber": number, "accountHolder": "Test Holder", "balance": balance})
        assert answer.status_code == 201, answer.text
        return number

    def mapping(self, clearing: str, account: str) -> str:
        bankgood = f"BG-{uuid.uuid4().hex[:10]}"
        answer = self.http.post(f"{self.c}/clearing/bank-mapping", json={
            "bankgoodNumber": bankgood, "clearingNumber": clearing, "accountNumber": account,
            "bankName": f"Bank {clearing}"})
        assert answer.status_code == 201, answer.text
        return bankgood

    def get_account(self, clearing: str, number: str) -> dict[str, Any]:
        answer = self.http.get(f"{self.bank_url(clearing)}/bank/account/{number}")
        assert answer.status_code == 200, answer.text
        return loads_json(answer.content)  # type: ignore[no-any-return]

    def balances(self, clearing: str, number: str) -> tuple[Decimal, Decimal]:
        body = self.get_account(clearing, number)
        return body["balance"], body["reservedBalance"]

    def pay(self, clearing: str, from_account: str | None, bankgood: str | None,
            amount: Any) -> str:
        answer = self.http.post(
            f"{self.bank_url(clearing)}/bank/transaction/outgoing",
            data=dumps_json({"fromAccountNumber": from_account, "toBankgoodNumber": bankgood,
                             "amount": amount}),
            headers={"Content-Type": "application/json"})
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert set(body) == {"message", "transactionId"}
        return str(body["transactionId"])

    def outgoing(self, clearing: str, transaction_id: str) -> dict[str, Any] | None:
        answer = self.http.get(
            f"{self.bank_url(clearing)}/bank/transaction/outgoing/{transaction_id}")
        if answer.status_code == 404:
            return None
        assert answer.status_code == 200, answer.text
        return loads_json(answer.content)  # type: ignore[no-any-return]

    def final(self, clearing: str, transaction_id: str, timeout: float = 15) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            tx = self.outgoing(clearing, transaction_id)
            return tx if tx is not None and tx["status"] != "PENDING" else None

        return wait_for(done, timeout=timeout, message=f"payment {transaction_id} final")

    def clearing_status(self, transaction_id: str) -> str | None:
        answer = self.http.get(f"{self.c}/clearing/transaction/{transaction_id}")
        return None if answer.status_code == 404 else answer.json()["status"]

    def incoming(self, clearing: str, transaction_id: str) -> dict[str, Any] | None:
        answer = self.http.get(
            f"{self.bank_url(clearing)}/bank/transaction/incoming/{transaction_id}")
        return None if answer.status_code == 404 else loads_json(answer.content)

    def close(self) -> None:
        self.http.close()
        self.spy.close()


@contextmanager
def emulator_world(config: EmulatorConfig) -> Iterator[World]:
    """An emulator started with ``config`` (on ``config.bus``); the bus is closed after."""
    emulator = EmbeddedBGMock(config)
    emulator.start()
    world = World(emulator, config.bus, Spy(config.bus))
    try:
        yield world
    finally:
        world.close()
        emulator.stop()
        config.bus.close()
