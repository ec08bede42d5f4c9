"""Helpers for contact tests: messages in, through the real ingest path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from nurture.core import Nurture

Send = Callable[..., None]


@pytest.fixture
def send(nurture: Nurture) -> Send:
    """Ingest messages (dicts) and assert none was rejected unless `rejected` says so."""

    def _send(*messages: dict[str, Any], rejected: int = 0) -> None:
        result = nurture.ingest(list(messages))
        assert len(result.rejected) == rejected, [r.to_dict() for r in result.rejected]

    return _send
