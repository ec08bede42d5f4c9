"""The in-memory channel: production code for development and tests, like a real provider
that keeps what it accepted in a list. It can be scripted to answer Retry or Failed, and
given a per-second acceptance limit above which it answers Retry(throttled), so the
dispatcher's handling of a slow or failing provider can be exercised without a network.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import assert_never

from nurture.channels.base import (
    Content,
    Email,
    Failed,
    Hook,
    Outgoing,
    Push,
    Result,
    Retry,
    Sent,
    Sms,
    Voice,
)

ALL_CHANNELS = frozenset({"email", "sms", "voice", "push", "webhook"})


def address_of(content: Content) -> str:
    """Where a message goes: the email address, phone number, push endpoint or URL."""
    match content:
        case Email():
            return content.to
        case Sms() | Voice():
            return content.to
        case Push():
            return content.subscription.endpoint
        case Hook():
            return content.url
        case _:
            assert_never(content)


def channel_of(content: Content) -> str:
    """The channel name a message belongs to."""
    match content:
        case Email():
            return "email"
        case Sms():
            return "sms"
        case Voice():
            return "voice"
        case Push():
            return "push"
        case Hook():
            return "webhook"
        case _:
            assert_never(content)


class MemoryChannel:
    """Accepts messages into `sent`; answers as scripted. Safe to share between threads."""

    def __init__(
        self,
        channels: frozenset[str] = ALL_CHANNELS,
        *,
        provider: str = "memory",
        rate_per_second: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,  # the one default; inject in tests
    ) -> None:
        self.provider = provider
        self.channels = frozenset(channels)
        self.rate_per_second = rate_per_second
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._sent: list[Outgoing] = []
        self._script: deque[Retry | Failed] = deque()
        self._by_address: dict[str, Retry | Failed] = {}
        self._accepted_at: deque[float] = deque()
        self.closed = False

    # -- scripting ---------------------------------------------------------------------
    def fail_next(self, n: int, result: Retry | Failed) -> None:
        """Answer the next `n` messages with `result` (after any already scripted)."""
        with self._lock:
            self._script.extend([result] * n)

    def fail_address(self, address: str, result: Retry | Failed | None) -> None:
        """Answer every message to `address` with `result` (None: accept them again)."""
        with self._lock:
            if result is None:
                self._by_address.pop(address, None)
            else:
                self._by_address[address] = result

    def clear(self) -> None:
        """Forget what was sent and every scripted answer."""
        with self._lock:
            self._sent.clear()
            self._script.clear()
            self._by_address.clear()
            self._accepted_at.clear()

    # -- what happened -----------------------------------------------------------------
    @property
    def sent(self) -> list[Outgoing]:
        """A copy of every message accepted so far, oldest first (a resend appears twice)."""
        with self._lock:
            return list(self._sent)

    def sent_to(self, address: str) -> list[Outgoing]:
        """The accepted messages to `address`."""
        return [o for o in self.sent if address_of(o.content) == address]

    # -- the protocol ------------------------------------------------------------------
    def send(self, batch: Sequence[Outgoing]) -> list[Result]:
        """Accept each message unless scripted otherwise or over the rate."""
        with self._lock:
            return [self._one(item) for item in batch]

    def _one(self, item: Outgoing) -> Result:
        name = channel_of(item.content)
        if name not in self.channels:
            return Failed(f"the {self.provider} channel does not send {name}", "wrong_channel")
        scripted = self._by_address.get(address_of(item.content))
        if scripted is None and self._script:
            scripted = self._script.popleft()
        if scripted is not None:
            return scripted
        if self.rate_per_second is not None:
            now = self._monotonic()
            while self._accepted_at and self._accepted_at[0] <= now - 1.0:
                self._accepted_at.popleft()
            if len(self._accepted_at) >= self.rate_per_second:
                after = max(0.0, self._accepted_at[0] + 1.0 - now)
                return Retry(
                    f"over {self.rate_per_second:g} messages a second", after, throttled=True
                )
            self._accepted_at.append(now)
        self._sent.append(item)
        return Sent(f"{self.provider}-{hashlib.sha256(item.key.encode()).hexdigest()[:20]}")

    def close(self) -> None:
        """Nothing to release; marks the channel closed for tests that check it."""
        self.closed = True
