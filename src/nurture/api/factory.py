"""The app factory uvicorn imports in each server process (`nurture serve`)."""

from __future__ import annotations

from fastapi import FastAPI

from nurture.api.app import create_app
from nurture.core import Nurture


def build() -> FastAPI:
    """A fresh Nurture from the settings, owned by this server process."""
    return create_app(Nurture(background=True))
