"""How fast one provider may be sent to: a token bucket whose rate adapts.

The configured `rate_per_second` is the ceiling. When the provider answers "slow down"
(HTTP 429, SES `Throttling`), the rate is halved and sending pauses for the provider's
Retry-After; every second without a complaint the rate creeps back up by a tenth of the
ceiling (or by one message per second without a ceiling). This is AIMD, the rule TCP uses:
it finds the provider's real limit, stays just under it, and loses nothing, because a
message that may not go now waits in the outbox for its slot.

Time comes from the clock's monotonic reading, so a simulated clock drives it in tests.
"""

from __future__ import annotations

import math

# Without a configured ceiling, the rate after the first complaint starts from what was
# being sent then; this is the floor, so a flood of 429s never stops sending altogether.
MIN_RATE = 0.5


class Throttle:
    """One provider's sending rate. Not thread-safe: one dispatcher round uses it at a time."""

    def __init__(self, rate_per_second: float | None = None) -> None:
        self.ceiling = rate_per_second
        self.rate: float = rate_per_second or math.inf
        self._tokens = 1.0 if rate_per_second else math.inf
        self._at: float | None = None  # monotonic time of the last refill
        self._paused_until = -math.inf
        self._calm_since: float | None = None
        self._window: list[float] = []  # send times in the last second, to measure the rate

    def _refill(self, now: float) -> None:
        if self._at is None:
            self._at = now
        if math.isinf(self.rate):
            self._tokens = math.inf
        else:
            burst = max(1.0, self.rate)  # at most one second's worth at once
            self._tokens = min(burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        # Additive increase: a calm second earns back a step of rate.
        if self._calm_since is not None and now - self._calm_since >= 1.0 and self._throttled:
            seconds = math.floor(now - self._calm_since)
            step = (self.ceiling / 10) if self.ceiling else 1.0
            self.rate = min(self.ceiling or math.inf, self.rate + seconds * step)
            self._calm_since += seconds
            if self.ceiling is not None and self.rate >= self.ceiling:
                self._calm_since = None

    @property
    def _throttled(self) -> bool:
        return self.rate < (self.ceiling or math.inf)

    def take(self, wanted: int, now: float) -> int:
        """How many of `wanted` messages may be sent at monotonic time `now`."""
        if now < self._paused_until:
            return 0
        self._refill(now)
        granted = wanted if math.isinf(self._tokens) else min(wanted, int(self._tokens))
        if not math.isinf(self._tokens):
            self._tokens -= granted
        self._window = [t for t in self._window if now - t < 1.0] + [now] * min(granted, 1000)
        return granted

    def available(self, now: float) -> float:
        """How many messages may go at monotonic time `now` (infinite without a limit)."""
        if now < self._paused_until:
            return 0.0
        self._refill(now)
        return self._tokens

    def wait(self, now: float) -> float:
        """Seconds from `now` until the next message may go."""
        if now < self._paused_until:
            return self._paused_until - now
        self._refill(now)
        if math.isinf(self._tokens) or self._tokens >= 1:
            return 0.0
        return (1 - self._tokens) / self.rate

    def throttled(self, now: float, after: float | None = None) -> None:
        """The provider said slow down: halve the rate, pause for `after` seconds if given."""
        self._refill(now)
        recent = len([t for t in self._window if now - t < 1.0])
        current = self.rate if not math.isinf(self.rate) else max(float(recent), 1.0)
        self.rate = max(MIN_RATE, current / 2)
        self._tokens = min(self._tokens, 0.0)
        self._calm_since = now
        if after:
            self._paused_until = max(self._paused_until, now + after)

    def sent(self, now: float) -> None:
        """Messages went through: the calm period counts from the first one after a pause."""
        if self._throttled and self._calm_since is None:
            self._calm_since = now
