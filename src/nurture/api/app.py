"""The FastAPI application: ingest, admin API, OpenAPI at /openapi.json, docs at /docs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from nurture import __version__
from nurture.api import (
    admin,
    consents,
    contacts,
    errors,
    feedback,
    ingest,
    journeys,
    lifecycle,
    messages,
    push,
    reports,
    segments,
    templates,
    tracking,
)
from nurture.core import Nurture


def create_app(nurture: Nurture, *, manage_lifecycle: bool = True) -> FastAPI:
    """Build the app around a Nurture. With `manage_lifecycle`, the app starts and
    stops it (migrations and the ingest writer) with the server."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            nurture.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                nurture.stop()

    app = FastAPI(
        title="Nurture",
        version=__version__,
        description="Segment-compatible event ingest and the Nurture admin API.",
        lifespan=lifespan,
    )
    app.state.nurture = nurture
    # Browser SDKs (analytics.js) post from the customer's own site. Keys travel in
    # headers, never cookies, so allowing every origin grants nothing by itself.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["GET", "POST", "PUT", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "Content-Encoding"],
        max_age=86400,
    )
    errors.install(app)
    app.include_router(ingest.router)
    app.include_router(contacts.router)
    app.include_router(consents.router)
    app.include_router(segments.router)
    app.include_router(lifecycle.router)
    app.include_router(journeys.router)
    app.include_router(templates.router)
    app.include_router(messages.router)
    app.include_router(reports.router)
    app.include_router(push.router)
    app.include_router(admin.router)
    app.include_router(tracking.router)
    app.include_router(feedback.router)
    return app
