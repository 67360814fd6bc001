"""Token buckets keyed by client (token id or IP), on an injectable clock.

``RateLimiter.check(key)`` spends one token or raises :class:`RateLimited`
(429 with ``Retry-After``). Buckets that refilled completely are forgotten,
so memory is bounded by the number of recently active clients (and capped).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from skald.errors import RateLimited

Clock = Callable[[], float]
_MAX_KEYS = 100_000


class RateLimiter:
    def __init__(self, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)

    def try_acquire(self, key: str) -> float:
        """Spend one token for ``key``; return 0 on success or the seconds until one is available."""
        now = self._clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._store(key, tokens - 1.0, now)
            return 0.0
        self._store(key, tokens, now)
        return (1.0 - tokens) / self.rate

    def check(self, key: str) -> None:
        """Spend one token or raise :class:`RateLimited`."""
        wait = self.try_acquire(key)
        if wait > 0:
            raise RateLimited(wait, f"rate limit exceeded; retry in {wait:.2f}s")

    def _store(self, key: str, tokens: float, now: float) -> None:
        if len(self._buckets) >= _MAX_KEYS and key not in self._buckets:
            self._forget_full(now)
        self._buckets[key] = (tokens, now)

    def _forget_full(self, now: float) -> None:
        full = [k for k, (t, last) in self._buckets.items() if t + (now - last) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= _MAX_KEYS:
            self._buckets.clear()
