"""Authentication of HTTP requests and the ``requires`` route decorator.

Every route that touches a document or the admin API declares its action
with ``@requires("query.read")``; the decorator authenticates the caller,
asks :func:`skald.auth.scopes.decide` and stores the principal in
``g.principal``. The action is kept on the view (``view.skald_action``) so
the authorization matrix test discovers every route from the route table.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from quart import g, request

from skald.auth.scopes import GLOBAL, Principal, decide
from skald.auth.tokens import TOKEN_PREFIX, TokenRecord, audit, find_by_secret
from skald.db.connection import DocConnection
from skald.errors import ScopeDenied, TokenInvalid, Unauthenticated
from skald.http.context import request_ip
from skald.http.state import AppState, get_state

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_CACHE_SECONDS = 5.0
ResourceFn = Callable[[dict[str, Any]], str | None]
SessionResolver = Callable[[], Awaitable[Principal | None]]


class TokenCache:
    """Short-lived cache of token lookups; revocations through this server clear it at once."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, TokenRecord | None]] = {}

    def get(self, secret: str) -> tuple[bool, TokenRecord | None]:
        entry = self._entries.get(secret)
        if entry is None or entry[0] < time.monotonic():
            return False, None
        return True, entry[1]

    def put(self, secret: str, record: TokenRecord | None) -> None:
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[secret] = (time.monotonic() + _CACHE_SECONDS, record)

    def clear(self) -> None:
        self._entries.clear()


def token_cache(state: AppState) -> TokenCache:
    """The app's token cache, created on first lookup (the rate limiter reads it only if it exists)."""
    if state.token_cache is None:
        state.token_cache = TokenCache()
    return state.token_cache


def bearer_secret(allow_query_token: bool = False) -> str | None:
    """The token a request carries: ``Authorization: Bearer <t>`` (or ``?token=`` where allowed)."""
    query_token = request.args.get("token") if allow_query_token else None
    return secret_from(request.headers.get("Authorization", ""), query_token, allow_query_token=allow_query_token)


def secret_from(authorization: str, query_token: str | None, *, allow_query_token: bool = False) -> str | None:
    """:func:`bearer_secret` from the raw header and ``?token=`` value (for callers without a Quart request)."""
    header = authorization.strip()
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() in {"bearer", "token"} and value.strip():
            return value.strip()
        if allow_query_token and header.startswith(TOKEN_PREFIX):
            return header
    if allow_query_token and query_token:
        return query_token
    return None


async def authenticate(*, allow_query_token: bool = False, required: bool = True) -> Principal | None:
    """Return the caller's principal; raise 401 for a missing, unknown, expired or revoked token."""
    state = get_state()
    secret = bearer_secret(allow_query_token)
    if secret is None:
        resolver: SessionResolver | None = state.session_resolver
        if resolver is not None:
            principal = await resolver()
            if principal is not None:
                return principal
        if not required:
            return None
        raise Unauthenticated("send Authorization: Bearer <token>")
    return await check_token(state, secret, path=request.path, ip=request_ip())


async def check_token(state: AppState, secret: str, *, path: str, ip: str) -> Principal:
    """The principal of a bearer ``secret``; :class:`TokenInvalid` (401) if it is unknown, expired or revoked.

    Use of an expired or revoked token is audited as ``access.denied`` (an unknown one is not: the rate
    limiter charges guesses instead, and an audit row per guess would let guessing fill the log).
    Needs no request context: the relay served ahead of Quart calls it too.
    """
    record = await token_record(state, secret)
    if record is None:
        raise TokenInvalid("unknown token")
    token_state = record.state()
    if token_state != "active":
        await audit_denied(state, record.id, f"token {token_state}", path=path, ip=ip)
        raise TokenInvalid(f"token is {token_state}")
    return record.principal()


async def token_record(state: AppState, secret: str) -> TokenRecord | None:
    """Look a token up by its secret (cached briefly); ``None`` if unknown. Needs no request context.

    A use of an active token is noted in memory (:class:`skald.auth.usage.TokenUsage`); its
    ``last_used_at`` is written later, in a batch, never on the request path.
    """
    cache = token_cache(state)
    hit, record = cache.get(secret)
    if not hit:
        record = await state.supervisor.service.read(lambda conn: find_by_secret(conn, secret))
        cache.put(secret, record)
    if record is not None and record.state() == "active":
        state.token_usage.note(record.id)
    return record


async def audit_denied(state: AppState, subject: str, reason: str, *, path: str, ip: str) -> None:
    """Append ``access.denied`` for ``subject`` (a token or user id) to the audit log."""

    def write(conn: DocConnection) -> None:
        audit(conn, "access.denied", subject=subject, detail={"reason": reason, "path": path}, ip=ip)

    await state.supervisor.service.write(write)


async def authorize(principal: Principal, db_id: str, action: str, resource: str | None = None) -> None:
    """Raise :class:`ScopeDenied` (403) unless ``principal`` may do ``action``; audit denials."""
    state = get_state()
    await check_scope(state, principal, db_id, action, resource, path=request.path, ip=request_ip())


async def check_scope(
    state: AppState, principal: Principal, db_id: str, action: str, resource: str | None, *, path: str, ip: str
) -> None:
    """:func:`authorize` without a request context: raise :class:`ScopeDenied` (audited) unless allowed."""
    decision = decide(principal, db_id, action, resource)
    if not decision.allowed:
        await audit_denied(state, principal.id, decision.reason, path=path, ip=ip)
        raise ScopeDenied(decision.reason, action=action)


def requires(
    action: str,
    *,
    resource: ResourceFn | None = None,
    db_param: str = "db_id",
    allow_query_token: bool = False,
) -> Callable[[F], F]:
    """Declare the action a route needs; authenticate and authorize before the view runs.

    ``resource(view_kwargs)`` names the resource (topic, path, endpoint) when
    the route has one. Routes without a ``db_param`` are global (``*``).
    """

    def decorate(view: F) -> F:
        @functools.wraps(view)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            principal = await authenticate(allow_query_token=allow_query_token)
            assert principal is not None
            db_id = kwargs.get(db_param, GLOBAL)
            await authorize(principal, db_id, action, resource(kwargs) if resource else None)
            g.principal = principal
            return await view(*args, **kwargs)

        wrapper.skald_action = action  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def current_principal() -> Principal:
    principal: Principal = g.principal
    return principal
