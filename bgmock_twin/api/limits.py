"""Request limits of the control API, applied after authentication and before any route.

Why here and in this order:

- The token is checked first, so that each request is charged to the right budget:
  behind an ingress every client has the same address, and a flood of requests
  without the token must never spend the operator's budget (issue 15, point 4).
  Budgets are token buckets keyed by (authenticated or anonymous, address).
- Mutations and reads have separate buckets; reads get a more generous one, so a
  reader flood is slowed per client without starving the load, and a mutation
  flood does not block the operator's reads. ``/healthz``, ``/readyz`` and
  ``/metrics`` are never limited: a kubelet or Prometheus must always get through.
- Requests in flight are bounded (``503`` beyond), probes and metrics again exempt;
  idle connections do not count here (``api/listener.py`` bounds those).
- Bodies are read here, bounded by ``max_bytes`` whether or not a length is given; a
  client that goes away mid-upload is normal network life and logged at debug.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from bgmock_twin import metrics
from bgmock_twin.api.auth import is_authenticated
from bgmock_twin.api.errors import error_body
from bgmock_twin.logs import get_logger

log = get_logger(__name__)

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
WITH_BODY = frozenset({"POST", "PUT", "PATCH"})

Middleware = Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]


class RateLimiter:
    """Token buckets per client key (bounded memory: the oldest client is forgotten)."""

    def __init__(self, rate: float, burst: float, max_clients: int = 1024) -> None:
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, client: str) -> bool:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            allowed = tokens >= 1
            self._buckets[client] = (tokens - 1 if allowed else tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return allowed


@dataclass(frozen=True)
class LimitSettings:
    """What the limits need (from ``ApiSettings``)."""

    max_request_bytes: int
    mutate_rate: float
    read_rate: float
    max_in_flight: int = 256


class RequestLimits:
    """The budgets of one API; ``charge`` says which one a request exceeded, if any."""

    def __init__(self, settings: LimitSettings) -> None:
        self.settings = settings
        self.mutations = RateLimiter(settings.mutate_rate,
                                     burst=max(5.0, settings.mutate_rate * 5))
        self.reads = RateLimiter(settings.read_rate, burst=max(10.0, settings.read_rate * 2))
        self.in_flight = 0  # only touched on the event loop

    def charge(self, method: str, path: str, client: str, authenticated: bool) -> str | None:
        """The kind of budget (``mutate``/``read``) the request exceeded, or None."""
        if path in EXEMPT_PATHS:
            return None
        kind = "mutate" if method in MUTATING else "read"
        who = "authenticated" if authenticated else "anonymous"
        limiter = self.mutations if kind == "mutate" else self.reads
        if limiter.allow(f"{who}:{client}"):
            return None
        metrics.API_RATE_LIMITED.labels(kind=kind, client=who).inc()
        return kind


def _too_large(max_bytes: int) -> Response:
    return JSONResponse(status_code=413, content=error_body(f"request body over {max_bytes} bytes"))


async def _bounded_body(request: Request, max_bytes: int) -> bytes | None:
    """The body, or None when it is over ``max_bytes`` (read no further than that)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            return None
    return bytes(body)


def limits_middleware(limits: RequestLimits) -> Middleware:
    max_bytes = limits.settings.max_request_bytes

    async def admit(request: Request, call_next: Callable[[Request], Awaitable[Response]]
                    ) -> Response:
        path = request.url.path
        client = request.client.host if request.client else "unknown"
        length = request.headers.get("content-length")
        exceeded = limits.charge(request.method, path, client, is_authenticated(request))
        if exceeded is not None:
            return JSONResponse(
                status_code=429, headers={"Retry-After": "1"},
                content=error_body(f"too many {'requests' if exceeded == 'mutate' else 'reads'}"
                                   " from this client; slow down"),
            )
        if length is not None and (not length.isascii() or not length.isdigit()
                                   or int(length) > max_bytes):
            return _too_large(max_bytes)
        exempt = path in EXEMPT_PATHS
        if not exempt and limits.in_flight >= limits.settings.max_in_flight:
            metrics.API_RATE_LIMITED.labels(kind="in_flight", client="any").inc()
            return JSONResponse(status_code=503, headers={"Retry-After": "1"},
                                content=error_body("the twin is busy; retry shortly"))
        limits.in_flight += 0 if exempt else 1
        try:
            if request.method in WITH_BODY:
                body = await _bounded_body(request, max_bytes)
                if body is None:
                    return _too_large(max_bytes)
                request._body = body  # starlette hands the cached body downstream
            return await call_next(request)
        except ClientDisconnect:
            log.debug("api_client_disconnected", path=path, method=request.method)
            return JSONResponse(status_code=400, content=error_body("client disconnected"))
        finally:
            limits.in_flight -= 0 if exempt else 1

    async def admit_and_count(request: Request,
                              call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await admit(request, call_next)
        template = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.API_REQUESTS.labels(request.method, template, str(response.status_code)).inc()
        return response

    return admit_and_count
