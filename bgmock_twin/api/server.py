"""The control API application: liveness, readiness, metrics, the daemon's own routes
(``twin_routes``) and the routers of the other components, behind one error shape
and request limits.

Kept thin: every route reads from or delegates to a component of the running
daemon (``bgmock_twin.app.Twin``, seen as a ``TwinView``).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import uvicorn
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from bgmock_twin import __version__, metrics
from bgmock_twin.api.docs import make_app
from bgmock_twin.api.errors import error_body, install_error_handlers
from bgmock_twin.api.twin import TwinView
from bgmock_twin.api.twin_routes import build_twin_router
from bgmock_twin.logs import get_logger

log = get_logger(__name__)


class RateLimiter:
    """Token buckets per client address for mutating requests (bounded memory)."""

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


def create_api(
    twin: TwinView,
    control_token: str | None,
    max_request_bytes: int,
    routers: list[APIRouter] | None = None,
    rate_limit_per_second: float = 20.0,
    docs: bool = True,
) -> FastAPI:
    app = make_app(
        docs,
        title="bgmock-twin control API",
        version=__version__,
        description="Health, synthetic payments, simulations and reconciliation of the "
        "BGMock digital twin. Mutating endpoints need `Authorization: Bearer <token>` "
        "when TWIN_CONTROL_TOKEN is set.",
    )
    app.state.control_token = control_token
    install_error_handlers(app)
    limiter = RateLimiter(rate_limit_per_second, burst=max(5.0, rate_limit_per_second * 5))
    app.middleware("http")(_limit_and_count(max_request_bytes, limiter))

    @app.get("/healthz", summary="Liveness: the process answers", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", summary="Readiness: scheduler running and settings valid",
             tags=["health"], responses={503: {"description": "not ready"}})
    def readyz() -> JSONResponse:
        ready, reasons = twin.is_ready()
        if ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse(status_code=503, content={"status": "not ready", "reasons": reasons})

    @app.get("/metrics", summary="Prometheus metrics", tags=["health"],
             response_class=Response)
    def prometheus_metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app.include_router(build_twin_router(twin))
    for router in routers or []:
        app.include_router(router)
    return app


def _limit_and_count(
    max_bytes: int, limiter: RateLimiter
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    async def middleware(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        length = request.headers.get("content-length")
        client = request.client.host if request.client else "unknown"
        if request.method in {"POST", "PUT", "PATCH", "DELETE"} and not limiter.allow(client):
            response: Response = JSONResponse(
                status_code=429, content=error_body("too many requests; slow down"),
                headers={"Retry-After": "1"},
            )
        elif length is not None and (not length.isdigit() or int(length) > max_bytes):
            response = JSONResponse(
                status_code=413, content=error_body(f"request body over {max_bytes} bytes")
            )
        elif length is None and request.method in {"POST", "PUT", "PATCH"} and \
                request.headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_bytes:
                    break
            if len(body) > max_bytes:
                response = JSONResponse(
                    status_code=413, content=error_body(f"request body over {max_bytes} bytes")
                )
            else:
                request._body = body  # starlette reads the cached body downstream
                response = await call_next(request)
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", "unmatched")
        metrics.API_REQUESTS.labels(request.method, template, str(response.status_code)).inc()
        return response

    return middleware


class ApiServer:
    """Uvicorn on a background thread; ``stop()`` lets in-flight requests finish."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=False,
            lifespan="off", timeout_graceful_shutdown=3, limit_concurrency=256,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="api", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = threading.Event()
        for _ in range(int(timeout / 0.02)):
            if self._server.started:
                return
            if not self._thread.is_alive():
                break
            deadline.wait(0.02)
        raise RuntimeError("control API did not start (is the port in use?)")

    @property
    def port(self) -> int:
        servers = getattr(self._server, "servers", [])
        for server in servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return int(self._server.config.port)

    def stop(self, timeout: float = 5.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
