"""Rate limiting middleware: a token bucket per machine token and per client IP.

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
- The stream API and the relay, served ahead of Quart, pass the same limiter
  through :class:`RateLimitGate`.

Anonymous requests outside ``/api/``, ``/auth/`` and ``/ui/`` (the legacy
public routes) are left to that namespace's own limiter.
Rates come from ``rate_limit_per_second`` / ``rate_limit_burst`` (a rate of 0
turns the limiter off). Probes and
scrapers (``/healthz``, ``/readyz``, ``/metrics``) are exempt. Refusals are
429 problem+json with ``Retry-After`` and counted in
``skald_rate_limited_total{scope}``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from prometheus_client import Counter
from quart import Response, request
from quart_trio import QuartTrio

from skald.auth.guard import TokenCache, bearer_secret, secret_from
from skald.auth.scopes import GLOBAL
from skald.auth.tokens import hash_token
from skald.errors import PROBLEM_CONTENT_TYPE, RateLimited
from skald.http.client_ip import client_ip
from skald.http.ratelimit import Clock, RateLimiter
from skald.http.state import AppState, get_state
from skald.relay.io import Message, Receive, Send, text_response, whole_response

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


def request_ip() -> str:
    """The client IP of the current request, trusted-proxy aware."""
    settings = get_state().settings
    return client_ip(
        request.remote_addr,
        request.headers.get("X-Forwarded-For"),
        request.headers.get("X-Real-IP"),
        settings.trusted_proxies,
    )


def install(app: QuartTrio, state: AppState) -> None:
    """Install the limiter; ``rate_limit_per_second <= 0`` turns it off (e.g. for load benchmarks)."""
    if state.settings.rate_limit_per_second <= 0:
        return
    throttle = Throttle(state)
    state.throttle = throttle

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
    async def settle(response: Response) -> Response:
        throttle.settle(bearer_secret(allow_query_token=True), request_ip(), response.status_code)
        return response


Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RateLimitGate:
    """ASGI middleware: the limiter of :func:`install` for routes served ahead of Quart.

    The document stream API and the legacy relay (:mod:`skald.relay.legacy`) never reach Quart's
    ``before_request``; this puts them under the same :class:`Throttle` by the same rules: the token's
    bucket, the IP's, the IP's budget for failed tokens (a 401 answer spends it). ``serves(path)`` picks
    the paths it guards; all others pass through untouched (Quart's hooks guard them). Refusals are 429
    problem+json on ``/api/`` paths and a short text elsewhere, as the relay answers its errors.
    """

    def __init__(self, app: ASGIApp, throttle: Throttle, serves: Callable[[str], bool]) -> None:
        self.app = app
        self.throttle = throttle
        self.serves = serves

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not self.serves(path) or path in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        # The relay also takes a bare ``Authorization: <token>``: any credential presented is an attempt.
        secret = (secret_from(headers.get("authorization", ""), query.get("token"), allow_query_token=True)
                  or headers.get("authorization", "").strip() or None)
        if secret is None and not path.startswith(ANONYMOUS_LIMITED_PREFIXES):
            await self.app(scope, receive, send)  # public relay namespaces have their own limiter
            return
        peer = scope.get("client")
        ip = client_ip(peer[0] if peer else None, headers.get("x-forwarded-for"), headers.get("x-real-ip"),
                       self.throttle.settings.trusted_proxies)
        try:
            self.throttle.check(secret, ip)
        except RateLimited as refused:
            await _refuse(send, path, refused)
            return
        if secret is None:
            await self.app(scope, receive, send)
            return

        async def settling_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.throttle.settle(secret, ip, int(message["status"]))
            await send(message)

        await self.app(scope, receive, settling_send)


async def _refuse(send: Send, path: str, refused: RateLimited) -> None:
    headers = [(k.lower().encode(), v.encode()) for k, v in refused.headers.items()]
    if path.startswith("/api/"):
        body = json.dumps(refused.problem(instance=path)).encode()
        await whole_response(send, refused.status, PROBLEM_CONTENT_TYPE.encode(), body, headers)
    else:
        await text_response(send, refused.status, "too many requests", headers)


def gate(app: ASGIApp, state: AppState, serves: Callable[[str], bool]) -> ASGIApp:
    """``app`` behind a :class:`RateLimitGate` for ``serves`` paths; ``app`` itself when the limiter is off."""
    throttle: Throttle | None = state.throttle
    return app if throttle is None else RateLimitGate(app, throttle, serves)
