"""The control API application: liveness, readiness, metrics, the daemon's own routes
(``twin_routes``) and the routers of the other components, behind one error shape
and request limits (``api/limits.py``); ``api/listener.py`` serves it.

Kept thin: every route reads from or delegates to a component of the running
daemon (``bgmock_twin.app.Twin``, seen as a ``TwinView``).

The API is created and started before the daemon's slow parts (the emulator, the
Kafka consumer groups), so ``/healthz`` answers from the first second and
``/readyz`` says what is still starting; the components' routers are added with
``add_routers`` once they exist, and until then the control routes answer 503.
``/healthz`` and ``/readyz`` run on the event loop and ``/metrics`` on its own
thread, so none of them waits for a thread the other routes hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.routing import Match

from bgmock_twin import __version__
from bgmock_twin.api.docs import make_app
from bgmock_twin.api.errors import error_body, install_error_handlers
from bgmock_twin.api.limits import (
    EXEMPT_PATHS,
    LimitSettings,
    RateLimiter,
    RequestLimits,
    limits_middleware,
)
from bgmock_twin.api.listener import ApiServer, ConnectionLimits
from bgmock_twin.api.twin import TwinView
from bgmock_twin.api.twin_routes import build_twin_router
from bgmock_twin.logs import get_logger

__all__ = ["ApiServer", "ConnectionLimits", "LimitSettings", "RateLimiter", "add_routers",
           "create_api"]

log = get_logger(__name__)

DOCUMENT_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
_metrics_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics")

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error", "type": "object", "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "what went wrong, in one sentence"},
        "detail": {"type": "array", "items": {
            "type": "object", "required": ["field", "message", "type"],
            "properties": {"field": {"type": "string"}, "message": {"type": "string"},
                           "type": {"type": "string"}}}},
    },
}


def create_api(
    twin: TwinView,
    control_token: str | None,
    limits: LimitSettings,
    routers: list[APIRouter] | None = None,
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
    app.state.serving = False
    install_error_handlers(app)
    app.middleware("http")(limits_middleware(RequestLimits(limits)))
    app.middleware("http")(_options_and_start_gate(app, twin))

    @app.get("/healthz", summary="Liveness: the process answers", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", summary="Readiness: started, scheduler running, settings valid",
             tags=["health"], responses={503: {"description": "not ready, with the reasons"}})
    async def readyz() -> JSONResponse:
        ready, reasons = twin.is_ready()
        if ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse(status_code=503, content={"status": "not ready", "reasons": reasons})

    @app.get("/metrics", summary="Prometheus metrics", tags=["health"],
             response_class=Response)
    async def prometheus_metrics() -> Response:
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(_metrics_thread, generate_latest, REGISTRY)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    app.include_router(build_twin_router(twin))
    if routers is not None:  # else the daemon adds them once its parts have started
        add_routers(app, routers)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def add_routers(app: FastAPI, routers: list[APIRouter]) -> None:
    """Mount the components' routers and open the control routes."""
    for router in routers:
        app.include_router(router)
    app.openapi_schema = None
    app.state.serving = True


def _options_and_start_gate(
    app: FastAPI, twin: TwinView
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    async def gate(request: Request, call_next: Callable[[Request], Awaitable[Response]]
                   ) -> Response:
        path = request.url.path
        if request.method == "OPTIONS":
            return _options(app, request)
        if path in EXEMPT_PATHS or path in DOCUMENT_PATHS:
            return await call_next(request)
        if not app.state.serving:
            _, reasons = twin.is_ready()
            return JSONResponse(status_code=503, headers={"Retry-After": "2"}, content=error_body(
                "the twin is starting: " + ("; ".join(reasons) or "almost there")))
        return await call_next(request)

    return gate


HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _options(app: FastAPI, request: Request) -> Response:
    """``OPTIONS``: the methods the path answers to, in ``Allow`` (404 if none).

    Asked of the router method by method: included routers are matched as a whole."""
    methods = {method for method in HTTP_METHODS if any(
        route.matches({**request.scope, "method": method})[0] is Match.FULL
        for route in app.router.routes)}
    if not methods:
        return JSONResponse(status_code=404, content=error_body("Not Found"))
    if "GET" in methods:
        methods.add("HEAD")
    allow = ", ".join(sorted(methods | {"OPTIONS"}))
    return Response(status_code=204, headers={"Allow": allow})


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with the error bodies the API really sends: every error is
    ``Error`` (422 included), and 400 (a body that is not JSON, or incomplete) and 429
    (a client over its budget) are documented."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description,
                         routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    components["Error"] = ERROR_SCHEMA
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in schema.get("paths", {}).items():
        if path in EXEMPT_PATHS:
            continue  # their bodies are their own (``/readyz`` says why not ready)
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if "requestBody" in operation:
                responses.setdefault("400", {"description": "the body is not JSON or was cut"})
            responses.setdefault("429", {"description": "over this client's budget"})
            for code, response in responses.items():
                if code[0] in "45":
                    response["content"] = error
    app.openapi_schema = schema
    return schema
