"""Every error the HTTP API returns is JSON: {"error": {"code", "message", "path"}}.

A 503 (the database unavailable, the process out of memory) carries `Retry-After`, so
that clients come back rather than give up or hammer."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from nurture import memory
from nurture.api.responses import JSONResponse
from nurture.errors import NurtureError, StorageUnavailable, ValidationError

log = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = 2  # a database locked or restarting is usually back within seconds


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
        headers: dict[str, str] = {}
        if exc.http_status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="nurture"'
        if exc.http_status == 503:
            headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return JSONResponse(
            error_body(exc.code, exc.message, exc.path), exc.http_status, headers=headers
        )

    # Any read or write that meets an unavailable database (an API key looked up while
    # PostgreSQL restarts, say), or a process out of memory: 503, never a bare 500.
    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeout)
    async def _database(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return await _nurture(request, StorageUnavailable(f"the database is unavailable: {exc}"))

    @app.exception_handler(MemoryError)
    async def _memory(request: Request, exc: MemoryError) -> JSONResponse:
        log.error("out of memory while answering %s", request.url.path, exc_info=exc)
        memory.release()
        return await _nurture(request, StorageUnavailable("the server ran out of memory"))

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
