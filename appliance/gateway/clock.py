"""The gateway's two clocks, injectable so tests can move time instead of sleeping.

Wall time judges tokens (exp, nbf, iat are wall-clock seconds); monotonic time
measures intervals (rate limits, JWKS refresh throttling, latency), which must
not jump when the wall clock is set.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()
