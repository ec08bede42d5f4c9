"""Contacts: search, profiles, timelines, and personal-data export and erasure."""

from __future__ import annotations

from nurture.clock import Clock
from nurture.store import Database


class ContactService:
    """Reads contacts and carries out GDPR/CCPA requests."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
