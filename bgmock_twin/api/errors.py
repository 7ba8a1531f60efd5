"""One JSON error shape for every failure: ``{"error": ..., "detail": [...]}``, and
the one place where the domain's refusals (``bgmock_twin.errors``) become status codes.

Validation errors name the field (``body.amount``) and never echo the input;
unexpected exceptions are logged with a reference and answered without internals.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bgmock_twin.clients.rest import ServiceError
from bgmock_twin.errors import Conflict, InvalidRequest, NotFound, RequestRefused, Unavailable
from bgmock_twin.logs import get_logger
from bgmock_twin.tracking.ledger import LedgerUnavailable

log = get_logger(__name__)


def error_body(message: str, detail: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message}
    if detail:
        body["detail"] = detail
    return body


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = [
        {"field": _field(err.get("loc", ())), "message": str(err.get("msg", "invalid")),
         "type": str(err.get("type", "value_error"))}
        for err in exc.errors()
    ]
    fields = ", ".join(d["field"] for d in detail) or "request"
    return JSONResponse(status_code=422, content=error_body(f"invalid request: {fields}", detail))


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    return JSONResponse(
        status_code=exc.status_code, content=error_body(message), headers=exc.headers
    )


async def _service(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse(
        status_code=502,
        content=error_body(f"BGMock service unavailable: {exc.service} ({exc.reason})"),
    )


# The most specific class of a refusal decides; a plain ``RequestRefused`` is a 400.
REFUSAL_STATUS: dict[type[RequestRefused], int] = {
    RequestRefused: 400,
    NotFound: 404,
    Conflict: 409,  # NotInThisMode, TooManySimulations
    InvalidRequest: 422,  # InvalidPayment, InvalidSimulation, invalid faults
    Unavailable: 503,  # FixturesUnavailable, SenderBusy, LedgerUnavailable
}
# What the caller is told, where the domain's message alone would not say it.
REFUSAL_PREFIX: dict[type[RequestRefused], str] = {LedgerUnavailable: "ledger unavailable: "}


def refusal(exc: RequestRefused) -> tuple[int, str]:
    """The status code and message of a refusal."""
    kinds = type(exc).__mro__
    status = next(REFUSAL_STATUS[k] for k in kinds if k in REFUSAL_STATUS)
    prefix = next((REFUSAL_PREFIX[k] for k in kinds if k in REFUSAL_PREFIX), "")
    return status, f"{prefix}{exc}"


async def _refused(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestRefused)
    status, message = refusal(exc)
    return JSONResponse(status_code=status, content=error_body(message))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    reference = uuid.uuid4().hex[:12]
    log.error("api_unexpected_error", path=request.url.path, reference=reference,
              error=repr(exc), exc_info=exc)
    return JSONResponse(
        status_code=500, content=error_body(f"internal error (reference {reference})")
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(ServiceError, _service)
    app.add_exception_handler(RequestRefused, _refused)
    app.add_exception_handler(Exception, _unexpected)
