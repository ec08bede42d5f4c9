"""Admin API: experiments reports (see nurture.api.reports)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from nurture.api.auth import admin_key

router = APIRouter(prefix="/api/reports", tags=["reports"], dependencies=[Depends(admin_key)])
