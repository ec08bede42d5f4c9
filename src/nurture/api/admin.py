"""Admin API: health, rejected input (inspect and replay)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from nurture.api.auth import admin_key
from nurture.core import Nurture

router = APIRouter(prefix="/api", tags=["admin"])
MAX_ID = 2**63 - 1


def _nurture(request: Request) -> Nurture:
    return request.app.state.nurture  # type: ignore[no-any-return]


@router.get("/health")
def health(request: Request) -> dict[str, Any]:
    """Liveness and the database backend (no key needed)."""
    nurture = _nurture(request)
    nurture.db.ping()
    return {"status": "ok", "database": nurture.db.backend}


@router.get("/rejected", dependencies=[Depends(admin_key)])
def list_rejected(
    request: Request,
    pending: bool = Query(True, description="Only input not yet replayed successfully"),
    code: str | None = Query(None, max_length=64),
    after_id: int = Query(0, ge=0, le=MAX_ID),
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    """Rejected input, oldest first, with the error and the raw input."""
    rows = _nurture(request).rejected.page(
        pending_only=pending, code=code, limit=limit, after_id=after_id
    )
    return {"items": [r.to_dict() for r in rows]}


@router.get("/rejected/{rejected_id}", dependencies=[Depends(admin_key)])
def get_rejected(request: Request, rejected_id: int = Path(..., ge=1, le=MAX_ID)) -> dict[str, Any]:
    """One rejected input."""
    return _nurture(request).rejected.get(rejected_id).to_dict()


class ReplayRequest(BaseModel):
    ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] | None = Field(
        None, max_length=10_000, description="Replay these; all pending when absent"
    )
    code: str | None = Field(
        None, max_length=64, description="Only pending input rejected with this code"
    )


@router.post("/rejected/replay", dependencies=[Depends(admin_key)])
def replay_rejected(request: Request, body: ReplayRequest) -> dict[str, Any]:
    """Re-ingest rejected input after a fix (of the sender, or of Nurture)."""
    return _nurture(request).rejected.replay(body.ids, code=body.code).to_dict()
