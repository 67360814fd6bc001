"""Rate limiting: a token bucket per machine token and per client IP.

- A request carrying ``Authorization: Bearer`` spends from its token's bucket
  (keyed by the token's SHA-256, which names a token as uniquely as its id and
  costs no database lookup on the hot path).
- A request without a token spends from its client IP's bucket (the IP comes
  from :func:`skald.http.client_ip.client_ip`, believing ``X-Forwarded-For`` only
  from ``settings.trusted_proxies``).
- Tokens that hold ``admin.token`` (globally) are not limited once known to
  the token cache: they could mint themselves any number of buckets anyway.
- A 401 answer to a token spends from the IP's budget for failed tokens (a
  bucket apart from the anonymous one), and while that is empty the IP may not
  try tokens not yet seen authenticating: guessing random tokens has a per-IP
  limit. A token seen authenticating spends only its own bucket, whatever
  anonymous callers or guessers at its address do (see :class:`Throttle`).
- Every request passes it in the one request pipeline (:mod:`skald.http.pipeline`), the stream API and
  the relay (served ahead of Quart) included.

Anonymous requests outside ``/api/``, ``/auth/`` and ``/ui/`` (the legacy
public routes) are left to that namespace's own limiter.
Rates come from ``rate_limit_per_second`` / ``rate_limit_burst`` (a rate of 0
turns the limiter off). Probes and
scrapers (``/healthz``, ``/readyz``, ``/metrics``) are exempt. Refusals are
429 problem+json with ``Retry-After`` and counted in
``skald_rate_limited_total{scope}``.
"""

from __future__ import annotations

from prometheus_client import Counter
from quart_trio import QuartTrio

from skald.auth.guard import TokenCache
from skald.auth.scopes import GLOBAL
from skald.auth.tokens import hash_token
from skald.errors import RateLimited
from skald.http.ratelimit import Clock, RateLimiter
from skald.http.state import AppState

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
ANONYMOUS_LIMITED_PREFIXES = ("/api/", "/auth/", "/ui/", "/openapi.json")
_MAX_KNOWN = 100_000


class Bucket(RateLimiter):
    def wait_time(self, key: str) -> float:
        """Seconds until ``key`` could spend a token (0 = now), without spending one."""
        entry = self._buckets.get(key)
        if entry is None:
            return 0.0
        tokens = min(self.burst, entry[0] + (self._clock() - entry[1]) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate


class Throttle:
    """The per-token and per-IP buckets of one app (in memory, per process), free of any request context.

    Three budgets, so that no caller spends another's:

    - ``tokens``: one bucket per token, spent by each of its requests;
    - ``ips``: one bucket per client IP, spent by anonymous requests;
    - ``failures``: one bucket per client IP, spent by each rejected token (401). While it is empty, the IP
      may not try tokens this server has not seen authenticate, so guessing has a budget of its own.

    A token that authenticated is remembered (``_known``): neither an anonymous flood nor failed guesses
    from its address refuse it; it spends only its own bucket.
    """

    def __init__(self, state: AppState, clock: Clock | None = None) -> None:
        settings = state.settings
        self._state = state
        self.settings = settings
        kwargs = {"clock": clock} if clock is not None else {}
        self.tokens = Bucket(settings.rate_limit_per_second, settings.rate_limit_burst, **kwargs)
        self.ips = Bucket(settings.rate_limit_per_second, settings.rate_limit_burst, **kwargs)
        self.failures = Bucket(settings.rate_limit_per_second, settings.rate_limit_burst, **kwargs)
        self._known: dict[str, None] = {}  # hashes of tokens seen authenticating, oldest first
        self.rejected = Counter(
            "skald_rate_limited_total", "Requests refused by the rate limiter, by bucket scope", ["scope"],
            registry=state.metrics.registry,
        )

    def check(self, secret: str | None, ip: str) -> None:
        """Spend one token from the caller's bucket or raise :class:`RateLimited`."""
        if secret is None:
            self._spend(self.ips, "ip:" + ip, "ip")
            return
        key = hash_token(secret)
        if key not in self._known:
            # An IP that exhausted its budget of failed authentications may not try more tokens.
            wait = self.failures.wait_time("ip:" + ip)
            if wait > 0:
                self.rejected.labels("ip").inc()
                raise RateLimited(wait, f"too many requests from {ip}; retry in {wait:.2f}s", scope="ip")
        if self._is_token_admin(secret):
            return
        self._spend(self.tokens, "token:" + key, "token")

    def settle(self, secret: str | None, ip: str, status: int) -> None:
        """Account for the answer to a request :meth:`check` let through (``status``: its HTTP status)."""
        if secret is None:
            return  # anonymous requests paid up front
        key = hash_token(secret)
        if status == 401:
            self._known.pop(key, None)
            self.failures.try_acquire("ip:" + ip)
        elif key not in self._known and self._authenticated(secret):
            if len(self._known) >= _MAX_KNOWN:
                del self._known[next(iter(self._known))]
            self._known[key] = None

    def _authenticated(self, secret: str) -> bool:
        # The guard cached what it found while answering: no lookup of our own. A request answered before
        # its token was looked up (an unknown route, say) leaves it unknown.
        cache: TokenCache | None = self._state.token_cache
        if cache is None:
            return False
        hit, record = cache.get(secret)
        return hit and record is not None and record.state() == "active"

    def _is_token_admin(self, secret: str) -> bool:
        # A holder of admin.token can mint itself any number of buckets: limiting it protects nothing.
        # Known only once the guard has cached the token (its first request is charged like any other).
        cache: TokenCache | None = self._state.token_cache
        if cache is None:
            return False
        hit, record = cache.get(secret)
        return (
            hit
            and record is not None
            and any(scope.grants(GLOBAL, "admin.token") for scope in record.scopes)
            and record.state() == "active"
        )

    def _spend(self, limiter: Bucket, key: str, scope: str) -> None:
        wait = limiter.try_acquire(key)
        if wait > 0:
            self.rejected.labels(scope).inc()
            detail = f"rate limit exceeded for this {scope}; retry in {wait:.2f}s"
            raise RateLimited(wait, detail, scope=scope)


def install(app: QuartTrio, state: AppState) -> None:
    """Create the limiter the request pipeline spends from; ``rate_limit_per_second <= 0`` turns it off."""
    if state.settings.rate_limit_per_second <= 0:
        return
    state.throttle = Throttle(state)
