"""Admin API for contacts (filled in with the contact service)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api", tags=["contacts"])
