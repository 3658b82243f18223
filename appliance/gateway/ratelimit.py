"""Per-client rate limits: one token bucket per client id, on the monotonic clock.

Buckets exist only for client ids of validated tokens (the realm's clients), so
their number is bounded by the realm, not by what strangers send.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from appliance.gateway.clock import Clock
from appliance.gateway.config import RateLimits


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, limits: RateLimits, clock: Clock) -> None:
        self.limits = limits
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, client_id: str) -> float | None:
        """Spend one request; ``None`` if allowed, else the seconds until one is available."""
        limit = self.limits.for_client(client_id)
        now = self.clock.monotonic()
        bucket = self._buckets.get(client_id)
        if bucket is None:
            bucket = self._buckets[client_id] = _Bucket(float(limit.burst), now)
        bucket.tokens = min(
            float(limit.burst), bucket.tokens + (now - bucket.updated) * limit.requests_per_s
        )
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return None
        return (1 - bucket.tokens) / limit.requests_per_s


def retry_after(seconds: float) -> str:
    """The ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
