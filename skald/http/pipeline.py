"""The one request pipeline: every HTTP request passes here first, Quart's routes and the relay alike.

The relay and the document stream API answer at the ASGI layer, ahead of Quart (:mod:`skald.relay.legacy`
says why), so the steps every request shares live at that layer too, in one place:

1. a request id (the client's ``X-Request-Id``, cut to 128 characters, or a new one), bound into the log
   context and echoed on the response;
2. shutdown refusal: once the server is stopping, new requests get 503 ``shutting_down`` and
   ``Connection: close``;
3. rate limiting (:class:`skald.http.throttle.Throttle`): the token's bucket, the IP's, and the IP's budget for
   failed tokens, settled by the answer's status;
4. request metrics (``skald_http_requests_total``, ``skald_http_request_duration_seconds``) and one access log
   line per request (method, route template, status, duration, db_id; ``info``; JSON in json mode).

Whoever answers names the route: Quart's ``before_request`` writes its rule into :class:`RequestInfo`, the relay
its own template. Authentication, authorization and the audit of denials are the guard's
(:mod:`skald.auth.guard`), which the relay calls too; errors are rendered by :mod:`skald.http.problem` for both.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import structlog

from skald.auth.guard import secret_from
from skald.errors import RateLimited, SkaldError
from skald.http.client_ip import client_ip
from skald.http.context import SCOPE_KEY, RequestInfo
from skald.http.problem import send_error
from skald.http.state import AppState
from skald.http.throttle import ANONYMOUS_LIMITED_PREFIXES, EXEMPT_PATHS
from skald.relay.io import Message, Receive, Send
from skald.server.shutdown import refusal

access_log = structlog.get_logger("skald.access")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

class RequestPipeline:
    """ASGI middleware around the whole app (``app.asgi_app``). ``legacy(path)``: errors are short text there."""

    def __init__(self, app: ASGIApp, state: AppState, legacy: Callable[[str], bool]) -> None:
        self.app = app
        self.state = state
        self.legacy = legacy
        # prometheus-client's labels() takes a lock and builds its key on every call: the children
        # are kept here by (route, method, status), a bounded set (route templates, not paths)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan; websockets keep Quart's own handling
            return
        headers = _wanted_headers(scope["headers"])
        peer = scope.get("client")
        ip = client_ip(peer[0] if peer else None, headers.get("x-forwarded-for"), headers.get("x-real-ip"),
                       self.state.settings.trusted_proxies)
        info = RequestInfo(headers.get("x-request-id", "")[:128] or uuid.uuid4().hex, time.perf_counter(), ip)
        scope[SCOPE_KEY] = info
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=info.request_id)
        path: str = scope.get("path", "")
        stopping = self.state.shutdown
        throttle = self.state.throttle
        credential = _credential(headers, scope)
        limited = throttle is not None and path not in EXEMPT_PATHS and (
            credential is not None or path.startswith(ANONYMOUS_LIMITED_PREFIXES)
        )  # anonymous legacy routes (/p, /public, /h, /r, ...) have the relay's own public limiter

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                info.status = int(message["status"])
                headers = [*message.get("headers", []), (b"x-request-id", info.request_id.encode("latin-1", "replace"))]
                if stopping.stopping and not any(name.lower() == b"connection" for name, _ in headers):
                    headers.append((b"connection", b"close"))  # do not invite another request on this connection
                message = {**message, "headers": headers}
                if limited and throttle is not None:
                    throttle.settle(credential, ip, info.status)
            await send(message)

        async def refuse(error: SkaldError) -> None:
            await send_error(send_with_headers, error, path, legacy=self.legacy(path), metrics=self.state.metrics)

        try:
            if stopping.stopping:
                # hypercorn keeps serving open keep-alive connections during its grace period; new work is
                # refused so shutdown is prompt and clients retry elsewhere.
                await refuse(refusal())
                return
            if limited and throttle is not None:
                try:
                    throttle.check(credential, ip)
                except RateLimited as refused:
                    await refuse(refused)
                    return
            await self.app(scope, receive, send_with_headers)
        finally:
            self._record(scope, info)

    def _record(self, scope: Scope, info: RequestInfo) -> None:
        method: str = scope.get("method", "")
        duration = time.perf_counter() - info.started
        status = info.status if info.status is not None else 499  # the client left before an answer started
        key = (info.route, method, status)
        children = self._children.get(key)
        if children is None:
            metrics = self.state.metrics
            children = (metrics.requests.labels(info.route, method, str(status)),
                        metrics.request_duration.labels(info.route, method))
            if len(self._children) < 10_000:  # a bound even if a client invents methods
                self._children[key] = children
        children[0].inc()
        children[1].observe(duration)
        access_log.info(
            "request", method=method, route=info.route, status=status, duration_ms=round(duration * 1000, 3),
            db_id=info.db_id, request_id=info.request_id,
        )


_WANTED = frozenset({b"x-request-id", b"authorization", b"x-forwarded-for", b"x-real-ip"})


def _wanted_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The request headers the pipeline reads, decoded (a repeated one: its last value)."""
    found: dict[str, str] = {}
    for name, value in raw:
        lowered = name.lower()
        if lowered in _WANTED:
            found[lowered.decode("latin-1")] = value.decode("latin-1")
    return found


def _credential(headers: dict[str, str], scope: Scope) -> str | None:
    """The token a request presents, from the places the guard reads it (the relay also takes a bare header).

    Any credential presented is an attempt: the throttle charges a 401 to the IP's budget for failed tokens.
    """
    authorization = headers.get("authorization", "")
    token = None
    if b"token=" in scope.get("query_string", b""):
        token = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)).get("token")
    return secret_from(authorization, token, allow_query_token=True) or authorization.strip() or None


__all__ = ["RequestPipeline"]
