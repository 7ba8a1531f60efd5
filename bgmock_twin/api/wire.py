"""The control API's wire conventions, shared by every router.

Field names are camelCase like BGMock's own JSON; requests also accept snake_case
(``WireRequest``). Request models bound every value, so bad input is a 422 naming
the field, never a 500. Money is a decimal *string* in every response.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Annotated, Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel

from bgmock_twin.settings.fields import numeric_kind, plain_number

MAX_AMOUNT = Decimal("1000000000")
Amount = Annotated[Decimal, Field(gt=0, le=MAX_AMOUNT, max_digits=12, decimal_places=2)]
AccountNumber = Annotated[str, Field(min_length=1, max_length=64,
                                     pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
MIN_RATE = 0.01  # one payment every 100 s; below, a simulation never ends in practice
MAX_RATE = 10_000.0  # payments/s: above issue 12's 2,000/s of one twin (it holds ~1,000/s today)
Rate = Annotated[float, Field(ge=MIN_RATE, le=MAX_RATE)]
Seconds = Annotated[float, Field(gt=0, le=86_400)]


class WireRequest(BaseModel):
    """A request body: camelCase or snake_case names, no unknown field, finite numbers
    written plainly (``true``, ``"1_000"`` and ``"\uff15"`` are not numbers)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel,
                              allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _plain_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        kind = numeric_kind(field.annotation) if field is not None else None
        return plain_number(value, kind) if kind is not None else value


class WireResponse(BaseModel):
    """A response body: camelCase names."""

    model_config = ConfigDict(populate_by_name=True, alias_generator=to_camel)


class JsonBodyRoute(APIRoute):
    """Reads a request body as JSON whatever content type it came with.

    ``curl -d '{"count": 500, "rate": 50}'`` sends its JSON as
    ``application/x-www-form-urlencoded``; FastAPI would then see a string where a
    JSON object is expected. The body is still validated against the model.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            kind = request.headers.get("content-type", "")
            if request.method in ("POST", "PUT", "PATCH") and "json" not in kind and \
                    (kind == "" or kind.startswith(("application/x-www-form-urlencoded",
                                                    "text/plain"))):
                headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
                request.scope["headers"] = [*headers, (b"content-type", b"application/json")]
                request.__dict__.pop("_headers", None)  # starlette caches the parsed headers
            return await handler(request)

        return route
