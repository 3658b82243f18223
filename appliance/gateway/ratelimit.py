"""Rate limits on the monotonic clock: per client id, and per address for refused requests.

``RateLimiter``: one token bucket per client id. Buckets exist only for client
ids of validated tokens (the realm's clients), so their number is bounded by
the realm, not by what strangers send.

``RefusalLimiter``: one bucket per peer address, spent only by requests whose
token was refused (401). An address that has spent it is answered 429 before
its next token is even parsed, so a stranger cannot make the gateway verify
signatures (or refresh keys) as fast as it can send. At most
``MAX_ADDRESSES`` buckets are kept; the least recently refused goes first.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from appliance.gateway.clock import Clock
from appliance.gateway.config import RateLimit, RateLimits

MAX_ADDRESSES = 4096


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


class RefusalLimiter:
    def __init__(self, limit: RateLimit, clock: Clock) -> None:
        self.limit = limit
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _refill(self, address: str) -> _Bucket | None:
        bucket = self._buckets.get(address)
        if bucket is not None:
            now = self.clock.monotonic()
            bucket.tokens = min(
                float(self.limit.burst),
                bucket.tokens + (now - bucket.updated) * self.limit.requests_per_s,
            )
            bucket.updated = now
        return bucket

    def wait(self, address: str) -> float | None:
        """``None`` if ``address`` may be heard, else the seconds until it may (nothing spent)."""
        bucket = self._refill(address)
        if bucket is None or bucket.tokens >= 1:
            return None
        return (1 - bucket.tokens) / self.limit.requests_per_s

    def refused(self, address: str) -> None:
        """Spend one of ``address``'s refusals."""
        bucket = self._refill(address)
        if bucket is None:
            if len(self._buckets) >= MAX_ADDRESSES:
                self._buckets.popitem(last=False)
            bucket = self._buckets[address] = _Bucket(
                float(self.limit.burst), self.clock.monotonic()
            )
        self._buckets.move_to_end(address)
        bucket.tokens = max(0.0, bucket.tokens - 1)

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after(seconds: float) -> str:
    """The ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
