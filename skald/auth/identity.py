"""OIDC login for people and the token page.

``GET /auth/login?next=`` starts an authorization code flow with PKCE, ``state``
and ``nonce``; ``GET /auth/callback`` consumes the flow (once), verifies the ID
token and opens a server-side session (cookie ``skald_session``: HttpOnly,
Secure unless ``cookie_secure`` is off, SameSite=Lax); ``POST /auth/logout``
ends it. ``/ui/tokens`` lists, mints and revokes the signed-in person's tokens
(forms carry the session's CSRF token). The session also authenticates API
calls through ``state.session_resolver`` (writes need the
``X-CSRF-Token`` header).
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

from quart import Response, render_template, request
from quart_trio import QuartTrio

from skald.auth.mint_policy import personal_namespace, personal_scopes, refusal
from skald.auth.oidc import LoginFailed, OidcClient, OidcNotConfigured, configured
from skald.auth.scopes import Principal, Scope, ScopeError
from skald.auth.sessions import (
    SESSION_LIFETIME,
    Session,
    consume_login,
    create_session,
    end_session,
    find_session,
    start_login,
    upsert_user,
)
from skald.auth.token_admin import MintRequest, fetch_tokens, mint_token, record_event, revoke
from skald.auth.tokens import parse_duration
from skald.db.connection import DocConnection
from skald.errors import Forbidden
from skald.http.context import request_ip
from skald.http.state import AppState, get_state

COOKIE = "skald_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
EXPIRY_CHOICES = [("1d", "1 day"), ("7d", "7 days"), ("30d", "30 days"), ("90d", "90 days"), ("", "never")]


class CsrfFailed(Forbidden):
    code = "csrf_failed"
    title = "Missing or wrong CSRF token"


def install(app: QuartTrio, state: AppState) -> None:
    rules: list[tuple[str, Any, list[str]]] = [
        ("/auth/login", login, ["GET"]),
        ("/auth/callback", callback, ["GET"]),
        ("/auth/logout", logout, ["POST"]),
        ("/ui/tokens", tokens_page, ["GET"]),
        ("/ui/tokens", tokens_create, ["POST"]),
        ("/ui/tokens/<token_id>/revoke", tokens_revoke, ["POST"]),
    ]
    for rule, view, methods in rules:
        app.add_url_rule(rule, endpoint=f"identity.{view.__name__}", view_func=view, methods=methods)
    state.session_resolver = resolve_session


def _oidc() -> OidcClient:
    """The relying party for the current settings (rebuilt if the settings object changed)."""
    state = get_state()
    if not configured(state.settings):
        raise OidcNotConfigured("set SKALD_OIDC_ISSUER and SKALD_OIDC_CLIENT_ID to enable login")
    client: OidcClient | None = state.oidc_client
    if client is None or client.settings is not state.settings:
        client = OidcClient(state.settings)
        state.oidc_client = client
    return client


def _redirect(location: str) -> Response:
    return Response("", status=303, headers={"Location": location, "Cache-Control": "no-store"})


def _redirect_uri() -> str:
    configured_url = get_state().settings.oidc_redirect_url
    return configured_url or request.host_url.rstrip("/") + "/auth/callback"


def _safe_next(value: str | None) -> str:
    # Only local paths: an open redirect after login would hand the session's trust to anyone.
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui/tokens"


async def current_session() -> Session | None:
    session_id = request.cookies.get(COOKIE)
    if not session_id:
        return None
    session: Session | None = await get_state().supervisor.service.read(lambda c: find_session(c, session_id))
    return session


def session_principal(session: Session) -> Principal:
    scopes = () if session.is_admin else personal_scopes(session.owner)
    return Principal("user", "user:" + session.owner, session.owner, scopes, session.owner, session.is_admin)


async def resolve_session() -> Principal | None:
    """API authentication by web session; state-changing methods must echo ``X-CSRF-Token``."""
    session = await current_session()
    if session is None:
        return None
    if request.method not in SAFE_METHODS and request.headers.get("X-CSRF-Token") != session.csrf:
        return None
    return session_principal(session)


# ---- login / callback / logout ------------------------------------------------------------------


async def login() -> Response:
    client = _oidc()
    return_to = _safe_next(request.args.get("next"))
    state_value, flow = await get_state().supervisor.service.write(lambda c: start_login(c, return_to))
    url = await client.authorization_url(
        _redirect_uri(), state=state_value, nonce=flow.nonce, code_verifier=flow.code_verifier
    )
    return _redirect(url)


async def _login_failed(reason: str) -> LoginFailed:
    await record_event(get_state(), "login.failed", detail={"reason": reason}, ip=request_ip())
    return LoginFailed(reason)


async def callback() -> Response:
    client = _oidc()
    state = get_state()
    args = request.args
    if args.get("error"):
        description = args.get("error_description", "")
        raise await _login_failed(f"provider error: {args.get('error')} {description}")
    state_value, code = args.get("state"), args.get("code")
    if not state_value or not code:
        raise await _login_failed("callback without code and state")
    flow = await state.supervisor.service.write(lambda c: consume_login(c, state_value))
    if flow is None:
        raise await _login_failed("unknown, used or expired state")
    returned_issuer = args.get("iss")  # RFC 9207: a mix-up attack shows up as a foreign issuer here
    if returned_issuer is not None and returned_issuer != (await client.metadata()).issuer:
        raise await _login_failed("the authorization response names another issuer")
    try:
        who = await client.complete(
            _redirect_uri(), code=code, code_verifier=flow.code_verifier, nonce=flow.nonce
        )
    except LoginFailed as exc:
        raise await _login_failed(exc.detail) from None

    def open_session(conn: DocConnection) -> str:
        upsert_user(conn, owner=who.owner, issuer=client.issuer, subject=who.subject, name=who.name,
                    is_admin=who.is_admin)
        session_id, _ = create_session(conn, who.owner, who.is_admin)
        return session_id

    session_id = await state.supervisor.service.write(open_session)
    await record_event(state, "login", actor="user:" + who.owner, subject=who.subject,
                       detail={"admin": who.is_admin}, ip=request_ip())
    response = _redirect(flow.return_to)
    response.set_cookie(
        COOKIE, session_id, max_age=int(SESSION_LIFETIME.total_seconds()), path="/",
        httponly=True, secure=state.settings.cookie_secure, samesite="Lax",
    )
    return response


async def _require_csrf(session: Session) -> dict[str, str]:
    form = await request.form
    if form.get("csrf") != session.csrf:
        raise CsrfFailed("the form's CSRF token does not match your session; reload the page")
    return dict(form)


async def logout() -> Response:
    state = get_state()
    session = await current_session()
    if session is not None:
        await _require_csrf(session)
        session_id = request.cookies[COOKIE]
        await state.supervisor.service.write(lambda c: end_session(c, session_id))
        await record_event(state, "logout", actor="user:" + session.owner, ip=request_ip())
    response = _redirect("/ui/tokens")
    response.delete_cookie(
        COOKIE, path="/", httponly=True, secure=state.settings.cookie_secure, samesite="Lax"
    )
    return response


# ---- the token page -----------------------------------------------------------------------------


@dataclasses.dataclass
class _Form:
    label: str = ""
    scopes: str = ""
    expires: str = "30d"


async def _page(
    session: Session,
    *,
    status: int = 200,
    error: str = "",
    new_token: dict[str, str] | None = None,
    form: _Form | None = None,
) -> Response:
    records = await fetch_tokens(get_state(), owner=session.owner)
    script_nonce = secrets.token_urlsafe(16)
    tokens = [{**r.to_public(), "scopes": [str(s) for s in r.scopes]} for r in reversed(records)]
    html = await render_template(
        "tokens.html", owner=session.owner, is_admin=session.is_admin, csrf=session.csrf, tokens=tokens,
        error=error, new_token=new_token, form=form or _Form(), expiry_choices=EXPIRY_CHOICES,
        namespace=personal_namespace(session.owner), script_nonce=script_nonce,
    )
    response = Response(html, status=status, content_type="text/html; charset=utf-8")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{script_nonce}'; "
        "base-uri 'none'; frame-ancestors 'none'"
    )
    return response


async def _signed_in() -> Session | Response:
    _oidc()  # 404 oidc_not_configured when login is off
    session = await current_session()
    if session is None:
        return _redirect("/auth/login?next=/ui/tokens")
    return session


async def tokens_page() -> Response:
    session = await _signed_in()
    return session if isinstance(session, Response) else await _page(session)


async def tokens_create() -> Response:
    session = await _signed_in()
    if isinstance(session, Response):
        return session
    fields = await _require_csrf(session)
    form = _Form(fields.get("label", "")[:200], fields.get("scopes", ""), fields.get("expires", ""))
    try:
        scopes = tuple(Scope.parse(line.strip()) for line in form.scopes.splitlines() if line.strip())
        expires_in = parse_duration(form.expires) if form.expires else None
    except (ScopeError, ValueError) as exc:
        return await _page(session, status=400, error=str(exc), form=form)
    reason = "enter at least one scope" if not scopes else refusal(session.owner, session.is_admin, scopes)
    if reason:
        return await _page(session, status=400 if not scopes else 403, error=reason, form=form)
    mint = MintRequest(scopes=scopes, label=form.label, owner=session.owner, expires_in=expires_in)
    principal = session_principal(session)
    secret, record = await mint_token(get_state(), principal, mint, ip=request_ip(), via="web")
    return await _page(session, new_token={"id": record.id, "label": record.label, "secret": secret})


async def tokens_revoke(token_id: str) -> Response:
    session = await _signed_in()
    if isinstance(session, Response):
        return session
    await _require_csrf(session)
    await revoke(get_state(), session_principal(session), token_id, owner=session.owner, ip=request_ip(),
                 via="web")
    return _redirect("/ui/tokens")
