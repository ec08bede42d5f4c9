"""Every error the HTTP API returns is JSON: {"error": {"code", "message", "path"}}."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from nurture.api.responses import JSONResponse
from nurture.errors import NurtureError, ValidationError

log = logging.getLogger(__name__)


def aware(name: str, value: datetime | None) -> datetime | None:
    """A time query parameter, refused (naming it) when it has no time zone."""
    if value is not None and value.tzinfo is None:
        raise ValidationError("give a time zone, e.g. 2026-05-01T00:00:00Z", path=name)
    return value


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_body(code: str, message: str, path: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "path": path, **extra}}


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into a JSON error."""

    @app.exception_handler(NurtureError)
    async def _nurture(_: Request, exc: NurtureError) -> JSONResponse:
        headers = {"WWW-Authenticate": 'Basic realm="nurture"'} if exc.http_status == 401 else None
        return JSONResponse(
            error_body(exc.code, exc.message, exc.path), exc.http_status, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        return JSONResponse(
            error_body("invalid", str(first.get("msg")), ".".join(loc) or None), 422
        )

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(
            error_body("internal_error", "an unexpected error occurred; it has been logged"), 500
        )
