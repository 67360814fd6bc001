"""Rate limiting middleware: a token bucket per machine token and per client IP.

- A request carrying ``Authorization: Bearer`` spends from its token's bucket
  (keyed by the token's SHA-256, which names a token as uniquely as its id and
  costs no database lookup on the hot path).
- A request without a token spends from its client IP's bucket (the IP comes
  from :func:`skald.client_ip.client_ip`, believing ``X-Forwarded-For`` only
  from ``settings.trusted_proxies``).
- Tokens that hold ``admin.token`` (globally) are not limited once known to
  the token cache: they could mint themselves any number of buckets anyway.
- A 401 answer also spends from the IP's bucket, and a token-bearing request
  from an IP whose bucket is empty is refused: guessing random tokens cannot
  sidestep the per-IP limit.

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
from quart import Quart, Response, request

from skald.auth.guard import TokenCache, bearer_secret
from skald.auth.scopes import GLOBAL
from skald.auth.tokens import hash_token
from skald.client_ip import client_ip
from skald.errors import RateLimited
from skald.ratelimit import Clock, RateLimiter
from skald.state import AppState, get_state

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
ANONYMOUS_LIMITED_PREFIXES = ("/api/", "/auth/", "/ui/", "/openapi.json")


class Bucket(RateLimiter):
    def wait_time(self, key: str) -> float:
        """Seconds until ``key`` could spend a token (0 = now), without spending one."""
        entry = self._buckets.get(key)
        if entry is None:
            return 0.0
        tokens = min(self.burst, entry[0] + (self._clock() - entry[1]) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate


class Throttle:
    """The per-token and per-IP buckets of one app (in memory, per process)."""

    def __init__(self, state: AppState, clock: Clock | None = None) -> None:
        settings = state.settings
        self._state = state
        kwargs = {"clock": clock} if clock is not None else {}
        self.tokens = Bucket(settings.rate_limit_per_second, settings.rate_limit_burst, **kwargs)
        self.ips = Bucket(settings.rate_limit_per_second, settings.rate_limit_burst, **kwargs)
        self.rejected = Counter(
            "skald_rate_limited_total", "Requests refused by the rate limiter, by bucket scope", ["scope"],
            registry=state.metrics.registry,
        )

    def check(self, secret: str | None, ip: str) -> None:
        """Spend one token from the caller's bucket or raise :class:`RateLimited`."""
        if secret is None:
            self._spend(self.ips, "ip:" + ip, "ip")
            return
        # An IP that exhausted its bucket with failed authentications may not try more tokens.
        wait = self.ips.wait_time("ip:" + ip)
        if wait > 0:
            self.rejected.labels("ip").inc()
            raise RateLimited(wait, f"too many requests from {ip}; retry in {wait:.2f}s")
        if self._is_token_admin(secret):
            return
        self._spend(self.tokens, "token:" + hash_token(secret), "token")

    def _is_token_admin(self, secret: str) -> bool:
        # A holder of admin.token can mint itself any number of buckets: limiting it protects nothing.
        # Known only once the guard has cached the token (its first request is charged like any other).
        cache: TokenCache | None = self._state.services.get("token_cache")
        if cache is None:
            return False
        hit, record = cache.get(secret)
        return (
            hit
            and record is not None
            and any(scope.grants(GLOBAL, "admin.token") for scope in record.scopes)
            and record.state() == "active"
        )

    def charge_failure(self, ip: str) -> None:
        self.ips.try_acquire("ip:" + ip)

    def _spend(self, limiter: Bucket, key: str, scope: str) -> None:
        wait = limiter.try_acquire(key)
        if wait > 0:
            self.rejected.labels(scope).inc()
            detail = f"rate limit exceeded for this {scope}; retry in {wait:.2f}s"
            raise RateLimited(wait, detail, scope=scope)


def request_ip() -> str:
    """The client IP of the current request, trusted-proxy aware."""
    settings = get_state().settings
    return client_ip(
        request.remote_addr,
        request.headers.get("X-Forwarded-For"),
        request.headers.get("X-Real-IP"),
        settings.trusted_proxies,
    )


def install(app: Quart, state: AppState) -> None:
    """Install the limiter; ``rate_limit_per_second <= 0`` turns it off (e.g. for load benchmarks)."""
    if state.settings.rate_limit_per_second <= 0:
        return
    throttle = Throttle(state)
    state.services["throttle"] = throttle

    @app.before_request
    async def limit_rate() -> None:
        path = request.path
        if path in EXEMPT_PATHS:
            return
        secret = bearer_secret(allow_query_token=True)
        if secret is None and not path.startswith(ANONYMOUS_LIMITED_PREFIXES):
            return  # anonymous legacy routes (/p, /public, /h, /r, ...) have the public limiter
        throttle.check(secret, request_ip())

    @app.after_request
    async def charge_failed_auth(response: Response) -> Response:
        # Anonymous requests already spent from the IP bucket; a rejected token costs its IP too.
        if response.status_code == 401 and bearer_secret(allow_query_token=True) is not None:
            throttle.charge_failure(request_ip())
        return response
