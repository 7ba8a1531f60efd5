"""Both HTTP clients (``requests`` for probes and look-ups, aiohttp for the sender)
classify every way a call can end by one rule: against a real local server, each
case gives the same answer or the same ``ServiceError`` (reason and whether the
service may have acted on the request)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bgmock_twin.clients.rest import Response, RestClient, ServiceError
from bgmock_twin.clients.rest_async import AsyncRestClient
from bgmock_twin.tracking.loop_thread import new_event_loop
from tests.support.ports import free_port

TIMEOUT = 0.5


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as BGMock's services
    connections = 0

    def setup(self) -> None:
        type(self).connections += 1
        super().setup()

    def log_message(self, format: str, *args: object) -> None:
        return None

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"null")
        if self.path == "/slow":
            time.sleep(TIMEOUT * 3)
        if self.path == "/drop":  # the request arrived; the answer never leaves
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        status = 500 if self.path == "/fail" else 202
        answer = json.dumps({"echo": body, "amount": 12.50}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def both(base_url: str, route: str) -> list[Response | tuple[str, bool]]:
    """What each client makes of one POST: the response, or (reason, maybe_processed)."""
    outcomes: list[Response | tuple[str, bool]] = []
    sync = RestClient("bank_a", base_url, TIMEOUT)
    try:
        outcomes.append(sync.request("POST", route, json_body={"n": 1}))
    except ServiceError as exc:
        outcomes.append((exc.reason, exc.maybe_processed))
    finally:
        sync.close()

    async def call() -> Response | tuple[str, bool]:
        client = AsyncRestClient("bank_a", base_url, TIMEOUT, pool_size=4)
        try:
            return await client.request("POST", route, json_body={"n": 1})
        except ServiceError as exc:
            return exc.reason, exc.maybe_processed
        finally:
            await client.close()

    loop = new_event_loop()
    try:
        outcomes.append(loop.run_until_complete(call()))
    finally:
        loop.close()
    return outcomes


@pytest.mark.parametrize(("route", "status"), [("/ok", 202), ("/fail", 500)])
def test_an_http_answer_is_returned_decoded_by_both(server: str, route: str,
                                                    status: int) -> None:
    for response in both(server, route):
        assert isinstance(response, Response)
        assert response.status == status
        assert response.body["echo"] == {"n": 1}
        assert str(response.body["amount"]) == "12.5"  # Decimal, never float


def test_a_read_timeout_may_have_been_processed_by_both(server: str) -> None:
    assert both(server, "/slow") == [("timeout", True)] * 2


def test_a_connection_lost_mid_request_may_have_been_processed_by_both(server: str) -> None:
    assert both(server, "/drop") == [("connection", True)] * 2


def test_a_refused_connection_surely_never_arrived_for_both() -> None:
    assert both(f"http://127.0.0.1:{free_port()}", "/ok") == [("connection", False)] * 2


def test_the_async_client_keeps_its_connection_alive(server: str) -> None:
    async def calls() -> None:
        client = AsyncRestClient("bank_a", server, TIMEOUT, pool_size=4)
        try:
            for _ in range(5):
                assert (await client.request("POST", "/ok", json_body={})).status == 202
        finally:
            await client.close()

    before = Handler.connections
    loop = new_event_loop()
    try:
        loop.run_until_complete(calls())
    finally:
        loop.close()
    assert Handler.connections - before == 1  # five POSTs on one pooled connection
