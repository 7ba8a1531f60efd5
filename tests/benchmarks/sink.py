"""A minimal fast BGMock for sending benchmarks: ``python -m tests.benchmarks.sink``.

Three HTTP/1.1 keep-alive listeners in one process (Bank A, Bank B, the clearing) on
a raw asyncio protocol (uvloop when importable), answering what the twin asks of
BGMock with what ``shared/bgmock-contract.md`` says, and nothing slow behind it:

- ``GET /bank/health``, ``GET /clearing/health``: 200 ``OK``;
- accounts (``GET|POST /bank/account[/{n}]``, ``POST .../deposit?amount=X``) and bank
  mappings (``GET|POST /clearing/bank-mapping[/{bg}]``) kept in memory, 404 when
  unknown, so the twin provisions as against the real services;
- ``POST /bank/transaction/outgoing``: **202** ``{"message", "transactionId"}`` with a
  fresh UUID; the arrival time (``time.monotonic``, the same clock in every process
  of the machine) is recorded;
- ``GET /bank/transaction/outgoing|incoming/{id}``, ``GET /clearing/transaction/{id}``:
  ``SUCCESS`` (or ``PENDING`` with ``--status PENDING``) for an id it handed out, 404
  otherwise.

``GET /_sink/stats`` (on any listener) answers the count and arrival times of the
POSTs since the last ``POST /_sink/reset``. The ports are printed as one JSON line
on stdout once all three listen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

HEAD_END = b"\r\n\r\n"
BIG_BALANCE = "100000000.00"


@dataclass
class Service:
    """One listener's state; ``posts`` is shared by all three."""

    name: str
    posts: list[float]
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    mappings: dict[str, dict[str, Any]] = field(default_factory=dict)
    transactions: dict[str, str] = field(default_factory=dict)  # id -> amount
    status: str = "SUCCESS"  # what a GET of a transaction answers


def response(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    reason = {200: b"OK", 201: b"Created", 202: b"Accepted", 404: b"Not Found",
              400: b"Bad Request"}.get(status, b"Status")
    return (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
            % (status, reason, content_type, len(body)) + body)


def as_json(status: int, value: Any) -> bytes:
    return response(status, json.dumps(value).encode())


NOT_FOUND = response(404, b"")


def account(number: str, holder: str | None, balance: str) -> dict[str, Any]:
    return {"accountId": str(uuid.uuid4()), "accountNumber": number, "accountHolder": holder,
            "balance": balance, "reservedBalance": "0.00", "createdAt": None, "updatedAt": None}


def answer(service: Service, method: bytes, target: str, body: bytes) -> bytes:
    """The reply to one request (pure but for the service's in-memory state)."""
    if method == b"POST" and target == "/bank/transaction/outgoing":
        service.posts.append(time.monotonic())
        tx = str(uuid.uuid4())
        service.transactions[tx] = str(json.loads(body).get("amount"))
        return response(202, b'{"message":"Transaction initiated","transactionId":"'
                        + tx.encode() + b'"}')
    parts = urlsplit(target)
    path = parts.path.rstrip("/")
    segments = path.split("/")[1:]
    if method == b"GET":
        if path in ("/bank/health", "/clearing/health"):
            return response(200, b"OK", b"text/plain")
        if path == "/_sink/stats":
            return as_json(200, {"count": len(service.posts), "times": service.posts})
        if segments[:2] == ["bank", "account"]:
            if len(segments) == 2:
                return as_json(200, list(service.accounts.values()))
            found = service.accounts.get(segments[2])
            return as_json(200, found) if found else NOT_FOUND
        if (segments[:2] == ["bank", "transaction"] and len(segments) == 4) or \
                (segments[:2] == ["clearing", "transaction"] and len(segments) == 3):
            tx = segments[-1]
            if tx not in service.transactions:
                return NOT_FOUND
            return as_json(200, {"transactionId": tx, "status": service.status,
                                 "amount": service.transactions[tx]})
        if segments[:2] == ["clearing", "bank-mapping"] and len(segments) == 3:
            mapping = service.mappings.get(segments[2])
            return as_json(200, mapping) if mapping else NOT_FOUND
        return NOT_FOUND
    if method == b"POST":
        if path == "/_sink/reset":
            service.posts.clear()
            return response(200, b"")
        if path == "/bank/account":
            sent = json.loads(body or b"{}")
            number = str(sent.get("accountNumber"))
            created = account(number, sent.get("accountHolder"), str(sent.get("balance") or 0))
            created["balance"] = BIG_BALANCE
            service.accounts[number] = created
            return as_json(201, created)
        if segments[:2] == ["bank", "account"] and len(segments) == 4:
            found = service.accounts.get(segments[2])
            if not found:
                return NOT_FOUND
            amount = parse_qs(parts.query).get("amount", ["0"])[0]
            if segments[3] == "deposit" and float(amount) <= 0:
                return response(400, b"")
            return as_json(200, found)
        if path == "/clearing/bank-mapping":
            sent = json.loads(body or b"{}")
            sent["id"] = str(uuid.uuid4())
            service.mappings[str(sent.get("bankgoodNumber"))] = sent
            return as_json(201, sent)
        if path in ("/bank/transaction/incoming", "/bank/transaction/outgoing/completed"):
            return response(200, b"")
        if path in ("/clearing/transaction/outgoing", "/clearing/transaction/processed"):
            return response(202, b"")
    return NOT_FOUND


class HttpProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and pipelining; bodies by Content-Length only."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out = []
        while True:
            end = self.buffer.find(HEAD_END)
            if end < 0:
                break
            head = self.buffer[:end]
            length = 0
            lines = head.split(b"\r\n")
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if len(self.buffer) < end + 4 + length:
                break
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            method, target, _version = lines[0].split(b" ", 2)
            out.append(answer(self.service, method, target.decode(), body))
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def serve(ports: dict[str, int], status: str) -> None:
    loop = asyncio.get_running_loop()
    posts: list[float] = []
    servers = []
    bound = {}
    for name, port in ports.items():
        service = Service(name, posts, status=status)
        server = await loop.create_server(lambda s=service: HttpProtocol(s),  # type: ignore[misc]
                                          "127.0.0.1", port, backlog=1024)
        servers.append(server)
        bound[name] = server.sockets[0].getsockname()[1]
    print(json.dumps(bound), flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("bank-a", "bank-b", "clearing"):
        parser.add_argument(f"--{name}-port", type=int, default=0)
    parser.add_argument("--status", choices=("SUCCESS", "PENDING"), default="SUCCESS",
                        help="the status a GET of a transaction answers (PENDING: the "
                             "twin's payments stay in flight)")
    args = parser.parse_args()
    ports = {"bank_a": args.bank_a_port, "bank_b": args.bank_b_port,
             "clearing": args.clearing_port}
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(ports, args.status))


if __name__ == "__main__":
    main()
