"""Segment-spec ingest: /v1/identify, track, page, screen, group, alias and batch.

Success is always 200 with a JSON body (some SDKs resend on 204). A single-message
endpoint answers 400 when its message is invalid (413 when it is over the size
limit); a batch answers 200 and lists the invalid messages. Either way the invalid
input is kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import APIRouter, Request
from sqlalchemy.exc import SQLAlchemyError

from nurture import memory
from nurture.api.auth import require_key
from nurture.api.body import BodyTooLarge, read_body
from nurture.api.errors import error_body
from nurture.api.responses import JSONResponse
from nurture.core import Nurture
from nurture.errors import StorageUnavailable, Unauthorized
from nurture.ingest.messages import MessageError, parse_time
from nurture.ingest.service import BatchResult, ParsedBatch, Rejection

router = APIRouter(tags=["ingest"])
log = logging.getLogger(__name__)
_NO_KEY = "send your write key as HTTP Basic user name, as Bearer token, or as writeKey"

_MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "messageId": {"type": "string"},
        "userId": {"type": ["string", "null"]},
        "anonymousId": {"type": ["string", "null"]},
        "timestamp": {"type": "string", "format": "date-time"},
        "originalTimestamp": {"type": "string", "format": "date-time"},
        "sentAt": {"type": "string", "format": "date-time"},
        "context": {"type": "object"},
        "integrations": {"type": "object"},
        "traits": {"type": "object"},
        "properties": {"type": "object"},
        "event": {"type": "string"},
        "name": {"type": "string"},
        "groupId": {"type": "string"},
        "previousId": {"type": "string"},
    },
}
_RESULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "success": {"type": "boolean"},
        "accepted": {"type": "integer"},
        "duplicates": {"type": "integer"},
        "rejected": {"type": "array", "items": {"type": "object"}},
    },
}


def _openapi(body_schema: dict[str, Any], summary: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": body_schema}},
        },
        "responses": {
            "200": {
                "description": "Stored (or recognised as duplicates); rejected ones listed",
                "content": {"application/json": {"schema": _RESULT_SCHEMA}},
            },
            "400": {"description": "The body or the message is invalid; it was kept"},
            "401": {"description": "No key or an unknown key"},
            "413": {"description": "Over 32 KB per message or 500 KB per request"},
            "503": {
                "description": "Nothing was stored (the database is unavailable, or the "
                "server out of memory); send again after `Retry-After` seconds"
            },
        },
    }


def _nurture(request: Request) -> Nurture:
    return request.app.state.nurture  # type: ignore[no-any-return]


class IngestGate:
    """Admission control: at most `slots` ingest requests are read, parsed and stored at
    once in this process (setting `ingest_concurrency`); a request that finds none free
    within `wait` seconds gets 503 with Retry-After before its body is read. Without it, a
    burst of large batches holds every body and its parsed form at once, and a server short
    of memory fails them all, retry after retry, instead of finishing a few at a time.

    Every ingest route runs on the event loop's thread, so a counter is enough; waiting
    polls it (no asyncio primitive, which would bind to one event loop).
    """

    POLL = 0.005

    def __init__(self, slots: int, wait: float = 5.0) -> None:
        self.slots = slots
        self.wait = wait
        self.busy = 0

    @asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        if self.busy >= self.slots:
            deadline = time.monotonic() + self.wait
            while self.busy >= self.slots:
                if time.monotonic() >= deadline:
                    raise StorageUnavailable(
                        f"the server is busy with {self.busy} other ingest requests and stored"
                        " nothing; send again"
                    )
                await asyncio.sleep(self.POLL)
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1


def _gate(request: Request) -> IngestGate:
    state = request.app.state
    gate: IngestGate | None = getattr(state, "ingest_gate", None)
    if gate is None:
        gate = state.ingest_gate = IngestGate(_nurture(request).settings.ingest_concurrency)
    return gate


async def _submit(nurture: Nurture, batch: ParsedBatch) -> BatchResult:
    try:
        return await asyncio.wrap_future(nurture.writer.submit(batch))
    except SQLAlchemyError as exc:
        # Not acknowledged: the client keeps the messages and retries.
        raise StorageUnavailable(f"the event store refused the write: {exc}") from exc
    except MemoryError as exc:
        raise StorageUnavailable("the server ran out of memory and stored nothing") from exc


def _reject_request(
    source: str, code: str, message: str, raw: bytes | None, path: str | None = None
) -> Rejection:
    text = raw.decode("utf-8", errors="replace") if raw is not None else None
    return Rejection(None, None, code, path, message, text, len(raw or b""), source)


class _BadJSON(Exception):
    def __init__(self, raw: bytes, message: str) -> None:
        super().__init__(message)
        self.raw, self.message = raw, message


def _body_key_is_valid(nurture: Nurture, body: Any) -> bool:
    """Segment's API also takes the write key as `writeKey` in the body."""
    secret = body.get("writeKey") if isinstance(body, dict) else None
    return isinstance(secret, str) and nurture.keys.kind_of(secret) in ("write", "admin")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(raw: bytes) -> Any:
    """JSON from bytes. orjson needs one buffer of about nine times the body; when memory
    is short it says so with a decode error, and the standard library's parser, which
    allocates object by object into whatever memory is free, reads the body instead.
    Only when that fails too is the answer a MemoryError (503: send again), never a 400
    that an SDK would drop for good."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if not str(exc).startswith("Not enough memory"):
            raise
        log.warning("orjson is short of memory for a %d-byte body; parsing it slowly", len(raw))
        memory.release()
        try:
            # orjson's rules: no NaN or Infinity, UTF-8 only.
            return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        except (ValueError, RecursionError) as bad:  # UnicodeDecodeError is a ValueError
            raise orjson.JSONDecodeError(f"{bad}", "", 0) from None
        except MemoryError as short:
            raise MemoryError(str(exc)) from short


async def _read_json(request: Request) -> Any:
    """The decoded JSON body.

    With an Authorization header the key is checked before the body is read. Without
    one, the body must carry a valid `writeKey`; an unauthenticated body is never kept.
    """
    nurture = _nurture(request)
    s = nurture.settings
    header_auth = "authorization" in request.headers
    if header_auth:
        require_key(request, "write")
    try:
        raw = await read_body(request, limit=s.max_request_bytes, keep=s.rejected_keep_bytes)
    except (BodyTooLarge, ValueError):
        if not header_auth:
            raise Unauthorized(_NO_KEY) from None
        raise
    try:
        body = _loads(raw)
    except orjson.JSONDecodeError as exc:
        if not header_auth:
            raise Unauthorized(_NO_KEY) from None
        raise _BadJSON(raw, f"the body is not valid JSON: {exc}") from None
    if not header_auth and not _body_key_is_valid(nurture, body):
        raise Unauthorized(_NO_KEY)
    return body


async def _read_checked(request: Request, source: str) -> tuple[Any, JSONResponse | None]:
    """The decoded JSON body, or an error response (the bad body already kept)."""
    nurture = _nurture(request)
    try:
        return await _read_json(request), None
    except BodyTooLarge as exc:
        await _submit(
            nurture,
            ParsedBatch(rejections=[_reject_request(source, exc.code, exc.message, exc.kept)]),
        )
        return None, JSONResponse(error_body(exc.code, exc.message), 413)
    except ValueError as exc:
        await _submit(
            nurture,
            ParsedBatch(rejections=[_reject_request(source, "invalid_gzip", str(exc), None)]),
        )
        return None, JSONResponse(error_body("invalid_gzip", str(exc)), 400)
    except _BadJSON as exc:
        await _submit(
            nurture,
            ParsedBatch(rejections=[_reject_request(source, "invalid_json", exc.message, exc.raw)]),
        )
        return None, JSONResponse(error_body("invalid_json", exc.message), 400)


def _single(kind: str) -> Any:
    source = f"http /v1/{kind}"

    async def endpoint(request: Request) -> JSONResponse:
        async with _gate(request).admitted():
            return await _ingest_one(request)

    async def _ingest_one(request: Request) -> JSONResponse:
        body, failure = await _read_checked(request, source)
        if failure is not None:
            return failure
        nurture = _nurture(request)
        parsed = nurture.parse([body], source=source, default_type=kind, path_prefix="")
        result = await _submit(nurture, parsed)
        if result.rejected:
            first = result.rejected[0]
            status = 413 if first.code == "message_too_large" else 400
            return JSONResponse(error_body(first.code, first.message, first.path), status)
        return JSONResponse(result.to_dict())

    endpoint.__name__ = f"ingest_{kind}"
    endpoint.__doc__ = f"Ingest one Segment `{kind}` message."
    return endpoint


for _kind in ("identify", "track", "page", "screen", "group", "alias"):
    router.add_api_route(
        f"/v1/{_kind}",
        _single(_kind),
        methods=["POST"],
        response_class=JSONResponse,
        openapi_extra=_openapi(_MESSAGE_SCHEMA, f"Ingest a {_kind} message"),
    )


@router.post(
    "/v1/import",
    response_class=JSONResponse,
    include_in_schema=False,
)
@router.post(
    "/v1/batch",
    response_class=JSONResponse,
    openapi_extra=_openapi(
        {
            "type": "object",
            "required": ["batch"],
            "properties": {
                "batch": {"type": "array", "items": _MESSAGE_SCHEMA},
                "sentAt": {"type": "string", "format": "date-time"},
                "context": {"type": "object"},
            },
        },
        "Ingest many messages of any type",
    ),
)
async def ingest_batch(request: Request) -> JSONResponse:
    """Ingest a batch; each message is validated on its own."""
    async with _gate(request).admitted():
        return await _ingest_batch(request)


async def _ingest_batch(request: Request) -> JSONResponse:
    source = "http /v1/batch"
    body, failure = await _read_checked(request, source)
    if failure is not None:
        return failure
    nurture = _nurture(request)
    problem: tuple[str, str, str] | None = None
    sent_at = None
    context = None
    if not isinstance(body, dict):
        problem = ("invalid_type", "", "the body must be an object with a `batch` array")
    elif not isinstance(body.get("batch"), list):
        problem = ("missing_field", "batch", "expected an array of messages")
    else:
        try:
            sent_at = parse_time(body.get("sentAt"), "sentAt")
        except MessageError as exc:
            problem = (exc.code, "sentAt", exc.message)
        context = body.get("context")
        if context is not None and not isinstance(context, dict):
            problem = ("invalid_type", "context", "expected an object")
    if problem is not None:
        code, path, message = problem
        await _submit(
            nurture,
            ParsedBatch(
                rejections=[
                    _reject_request(source, code, message, orjson.dumps(body), path or None)
                ]
            ),
        )
        return JSONResponse(error_body(code, message, path or None), 400)
    parsed = nurture.parse(
        body["batch"], source=source, batch_sent_at=sent_at, batch_context=context
    )
    result = await _submit(nurture, parsed)
    return JSONResponse(result.to_dict())
