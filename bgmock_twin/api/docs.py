"""The pages that show the control API's OpenAPI document, served offline.

The Swagger UI and ReDoc pages load their scripts and styles from the twin
(``fastapi-offline`` ships them in its wheel), never from a CDN: the twin often runs
where there is no internet, and a page that pulls code from a third party is one
more thing to trust. ``TWIN_API_DOCS=false`` turns the pages off; ``/openapi.json``
stays. (The bearer scheme in the document comes from ``auth.require_token``.)
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

STATIC_URL = "/static-offline-docs"


def make_app(docs: bool, **kwargs: Any) -> FastAPI:
    """The FastAPI application, with the offline docs pages when ``docs``."""
    if docs:
        return FastAPIOffline(static_url=STATIC_URL, **kwargs)
    return FastAPI(docs_url=None, redoc_url=None, **kwargs)
