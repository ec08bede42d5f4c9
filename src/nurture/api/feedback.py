"""Provider webhooks: delivery, bounce, complaint, open, click and reply events.

Configure these URLs at the provider (docs/tracking.md): /hooks/ses (an SNS HTTPS
subscription), /hooks/sendgrid, /hooks/postmark, /hooks/twilio/status and
/hooks/twilio/inbound. A request that is not provably the provider's gets 401 and
changes nothing; a verified body of the wrong shape gets 400 naming the field, and is kept
in the rejected-events table for inspection.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from nurture.api.body import read_body
from nurture.api.errors import error_body
from nurture.api.responses import JSONResponse
from nurture.core import Nurture
from nurture.ingest.service import Rejection, store_rejections
from nurture.messages.feedback_hooks import UnverifiedPayload
from nurture.messages.providers import BadPayload, FeedbackItem

router = APIRouter(tags=["feedback"], include_in_schema=False)
_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def _nurture(request: Request) -> Nurture:
    return request.app.state.nurture  # type: ignore[no-any-return]


def _receive(
    nurture: Nurture,
    provider: str,
    source: str,
    body: bytes,
    read: Callable[[], list[FeedbackItem]],
) -> Response:
    """Verify and parse (`read`), then record. BadSignature propagates: a 401."""
    try:
        items = read()
    except UnverifiedPayload as e:
        return JSONResponse(error_body(e.code, e.message, e.path), 400)
    except BadPayload as e:
        rejection = Rejection(
            None,
            None,
            e.code,
            e.path,
            e.message,
            body.decode("utf-8", "replace"),
            len(body),
            source,
        )
        with nurture.db.write() as conn:
            store_rejections(conn, [rejection], nurture.clock.now())
        return JSONResponse(error_body(e.code, e.message, e.path), 400)
    except httpx.HTTPError as e:  # the SNS subscription could not be confirmed
        return JSONResponse(error_body("provider_unreachable", f"could not reach SNS: {e}"), 502)
    done = nurture.feedback.record(provider, items)
    return JSONResponse(
        {
            "received": len(items),
            "stored": done.stored,
            "duplicates": done.duplicates,
            "applied": done.applied,
            "pending": done.pending,
        }
    )


async def _body(request: Request) -> bytes:
    s = _nurture(request).settings
    return await read_body(request, limit=s.max_request_bytes, keep=0)


@router.post("/hooks/ses")
async def ses(request: Request) -> Response:
    """Amazon SES notifications through an SNS HTTPS subscription."""
    nurture, body = _nurture(request), await _body(request)
    hooks = nurture.provider_hooks
    return await run_in_threadpool(
        _receive, nurture, "ses", "hook:/hooks/ses", body, lambda: hooks.ses(body)
    )


@router.post("/hooks/sendgrid")
async def sendgrid(request: Request) -> Response:
    """SendGrid's signed Event Webhook."""
    nurture, body = _nurture(request), await _body(request)
    signature = request.headers.get("x-twilio-email-event-webhook-signature")
    timestamp = request.headers.get("x-twilio-email-event-webhook-timestamp")
    hooks = nurture.provider_hooks
    return await run_in_threadpool(
        _receive,
        nurture,
        "sendgrid",
        "hook:/hooks/sendgrid",
        body,
        lambda: hooks.sendgrid(body, signature, timestamp),
    )


@router.post("/hooks/postmark")
async def postmark(request: Request) -> Response:
    """Postmark webhooks, behind HTTP basic auth (Postmark signs nothing)."""
    nurture, body = _nurture(request), await _body(request)
    authorization = request.headers.get("authorization")
    hooks = nurture.provider_hooks
    return await run_in_threadpool(
        _receive,
        nurture,
        "postmark",
        "hook:/hooks/postmark",
        body,
        lambda: hooks.postmark(body, authorization),
    )


async def _twilio(request: Request, kind: str) -> Response:
    nurture, body = _nurture(request), await _body(request)
    signature = request.headers.get("x-twilio-signature")
    path, query = request.url.path, request.url.query
    hooks = nurture.provider_hooks
    response = await run_in_threadpool(
        _receive,
        nurture,
        "twilio",
        f"hook:{path}",
        body,
        lambda: hooks.twilio(kind, path, query, body, signature),
    )
    if kind == "inbound" and response.status_code == 200:
        # An empty TwiML answer: no automatic reply from us (Twilio's own STOP handling
        # answers carriers' keywords).
        return Response(_TWIML, media_type="text/xml")
    return response


@router.post("/hooks/twilio/status")
async def twilio_status(request: Request) -> Response:
    """Twilio message status callbacks (delivered, undelivered, failed)."""
    return await _twilio(request, "status")


@router.post("/hooks/twilio/inbound")
async def twilio_inbound(request: Request) -> Response:
    """Incoming SMS: replies; STOP suppresses the number, START lifts it."""
    return await _twilio(request, "inbound")
