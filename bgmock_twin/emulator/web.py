"""A small HTTP/1.1 server with Spring-like answers, and the hooks for HTTP faults.

Why the standard library: the emulator needs a real socket it can close and
rebind on the same port (a "down" service refuses connections), requests that
can be held open forever (a "hung" service), keep-alive for throughput and no
extra dependency. ``ThreadingHTTPServer`` gives a thread per connection; the
router below is a list of regular expressions.

Errors look like Spring Boot's: ``{"timestamp", "status", "error", "path"}``, or
``{"error": "..."}`` where the real service returns its own body. A malformed
request is a 4xx, never a crash.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from bgmock_twin.contract import dumps_json, loads_json
from bgmock_twin.logs import get_logger

log = get_logger(__name__)

MAX_BODY_BYTES = 1_048_576
IDLE_KEEPALIVE_SECONDS = 30.0
GARBAGE_BODY = b"\x00\xffgarbage<html><body>502 Bad Gateway?}{"


class ApiError(Exception):
    """An error answer. ``spring`` picks Spring's default body over ``{"error": ...}``."""

    def __init__(self, status: int, message: str = "", spring: bool = True) -> None:
        super().__init__(message or HTTPStatus(status).phrase)
        self.status = status
        self.message = message
        self.spring = spring


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The body as JSON (numbers as Decimal); 400 if it is not JSON."""
        if not self.body.strip():
            raise ApiError(400, "Required request body is missing")
        try:
            return loads_json(self.body)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ApiError(400, "JSON parse error") from None

    def json_object(self) -> dict[str, Any]:
        body = self.json()
        if not isinstance(body, dict):
            raise ApiError(400, "JSON parse error: expected an object")
        return body

    def query_value(self, name: str) -> str:
        values = self.query.get(name)
        if not values:
            raise ApiError(400, f"Required request parameter '{name}' is not present")
        return values[0]


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = "application/json"

    @classmethod
    def json(cls, status: int, payload: Any) -> Response:
        return cls(status, dumps_json(payload))

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        return cls(status, text.encode(), "text/plain;charset=UTF-8")

    @classmethod
    def empty(cls, status: int) -> Response:
        return cls(status, b"", None)


def spring_error(status: int, path: str) -> Response:
    return Response.json(status, {
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "status": status,
        "error": HTTPStatus(status).phrase,
        "path": path,
    })


def error_response(error: ApiError, path: str) -> Response:
    if error.spring:
        return spring_error(error.status, path)
    return Response.json(error.status, {"error": error.message or HTTPStatus(error.status).phrase})


Handler = Callable[[Request], Response]


class Router:
    """Method + path pattern → handler; ``{name}`` captures one path segment."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        # Spring Boot 3 no longer matches a trailing slash: neither do we.
        regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$"
        self._routes.append((method, re.compile(regex), handler))

    def dispatch(self, request: Request) -> Response:
        path_matched = False
        for method, regex, handler in self._routes:
            match = regex.match(request.path)
            if match is None:
                continue
            path_matched = True
            if method != request.method:
                continue
            request.params = {k: unquote(v) for k, v in match.groupdict().items()}
            try:
                return handler(request)
            except ApiError as exc:
                return error_response(exc, request.path)
        return spring_error(405 if path_matched else 404, request.path)


@dataclass(frozen=True)
class HttpFaults:
    """What a service's HTTP layer should do wrong right now."""

    down: bool = False
    hang: bool = False
    latency_seconds: float = 0.0
    error_rate: float = 0.0
    garbage: bool = False


class FaultSource:
    """What the server asks before each request (implemented by FaultController)."""

    def http_faults(self, service: str) -> HttpFaults:
        return HttpFaults()

    def wait_while_hung(self, service: str, stop: threading.Event) -> None:
        return None


# How long the accept loop sleeps in ``select`` between looks at a stop request: an
# idle server wakes this seldom, and ``_Server.shutdown`` wakes it at once.
ACCEPT_POLL_SECONDS = 0.5


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], owner: HttpService) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with contextlib.suppress(OSError):
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("emulator_http_connection_error", service=self.owner.name)

    def shutdown(self) -> None:
        """socketserver's shutdown without waiting out ``ACCEPT_POLL_SECONDS``: a
        connection wakes the accept loop until it has seen the request (one that came
        first is served as an empty request: closed)."""
        host, port = str(self.server_address[0]), int(self.server_address[1])
        stopper = threading.Thread(target=super().shutdown, name="emulator-http-shutdown")
        stopper.start()
        while stopper.is_alive():
            with contextlib.suppress(OSError):
                socket.create_connection((host, port), timeout=0.2).close()
            stopper.join(0.01)

    def drop_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = IDLE_KEEPALIVE_SECONDS
    server_version = "bgmock-emulator"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def _handle(self, method: str) -> None:
        owner = self.server.owner
        faults = owner.faults.http_faults(owner.name)
        if faults.down or owner.stopping.is_set():
            self.close_connection = True
            return
        if faults.hang:
            owner.faults.wait_while_hung(owner.name, owner.stopping)
            if owner.stopping.is_set():
                self.close_connection = True
                return
        if faults.latency_seconds > 0 and owner.stopping.wait(faults.latency_seconds):
            self.close_connection = True
            return
        path = urlsplit(self.path)
        try:
            body = self._read_body()
        except ApiError as exc:
            self._send(error_response(exc, path.path))
            self.close_connection = True
            return
        if faults.error_rate > 0 and random.random() < faults.error_rate:
            response = spring_error(500, path.path)
        elif faults.garbage:
            response = Response(200, GARBAGE_BODY, "application/json")
        else:
            request = Request(
                method="GET" if method == "HEAD" else method, path=path.path,
                query=parse_qs(path.query, keep_blank_values=True),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
            try:
                response = owner.router.dispatch(request)
            except Exception:
                log.exception("emulator_handler_failed", service=owner.name, method=method)
                response = spring_error(500, path.path)
        self._send(response, head_only=method == "HEAD")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw_length = self.headers.get("Content-Length")
        if not raw_length:
            return b""
        try:
            length = int(raw_length)
        except ValueError:
            raise ApiError(400, "bad Content-Length") from None
        if length < 0:
            raise ApiError(400, "bad Content-Length")
        if length > MAX_BODY_BYTES:
            raise ApiError(413)
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ApiError(400, "bad chunk") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                raise ApiError(413)
            parts.append(self.rfile.read(size))
            self.rfile.readline(16)

    def _send(self, response: Response, head_only: bool = False) -> None:
        status = HTTPStatus(response.status)
        head = [f"HTTP/1.1 {status.value} {status.phrase}",
                f"Date: {formatdate(usegmt=True)}",
                f"Content-Length: {len(response.body)}"]
        if response.content_type:
            head.append(f"Content-Type: {response.content_type}")
        if self.close_connection:
            head.append("Connection: close")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if not head_only:
            data += response.body
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True


class HttpService:
    """One emulated service's HTTP endpoint, which faults can take down and bring up."""

    def __init__(self, name: str, host: str, port: int, router: Router,
                 faults: FaultSource) -> None:
        self.name = name
        self.host = host
        self.router = router
        self.faults = faults
        self.stopping = threading.Event()
        self._requested_port = port
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def listening(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        with self._lock:
            if self._server is not None:
                return
            server = _Server((self.host, self.port), self)
            self.port = int(server.server_address[1])
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": ACCEPT_POLL_SECONDS},
                name=f"emulator-http-{self.name}", daemon=True,
            )
            self._thread.start()

    def go_down(self) -> None:
        """Stop listening and cut open connections: new connections are refused."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if thread is not None:
            thread.join(timeout=2)

    def go_up(self) -> None:
        """Listen again on the same port."""
        if not self.stopping.is_set():
            self.start()

    def stop(self) -> None:
        self.stopping.set()
        self.go_down()

