"""The app factory uvicorn imports in each server process (`nurture serve`)."""

from __future__ import annotations

from fastapi import FastAPI

from nurture.api.app import create_app
from nurture.core import Nurture
from nurture.memory import tune_malloc


def build() -> FastAPI:
    """A fresh Nurture from the settings, owned by this server process."""
    tune_malloc()
    return create_app(Nurture(background=True))
