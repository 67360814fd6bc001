"""OIDC login for people and the token page.

``GET /auth/login?next=`` starts an authorization code flow with PKCE, ``state``
and ``nonce``; ``GET /auth/callback`` consumes the flow (once), verifies the ID
token and opens a server-side session (cookie ``skald_session``: HttpOnly,
Secure unless ``cookie_secure`` is off, SameSite=Lax); ``POST /auth/logout``
ends it (and, for an OIDC session whose provider advertises
``end_session_endpoint``, the provider's session too: RP-initiated logout).
Sessions opened by pasting a token (``/ui/login``, :mod:`skald.web.routes`) use
the same table, cookie and CSRF token. ``/ui/tokens`` lists, mints and revokes
tokens: the signed-in person's own, or every token for an administrator (forms
carry the session's CSRF token). The session also authenticates API calls
through ``state.session_resolver`` (writes need the ``X-CSRF-Token`` header).
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import urlencode

from quart import Response, request
from quart_trio import QuartTrio

from skald.auth.mint_policy import personal_namespace, personal_scopes, refusal
from skald.auth.oidc import LoginFailed, OidcClient, OidcNotConfigured, configured
from skald.auth.scopes import GLOBAL, Principal, Scope, ScopeError, decide
from skald.auth.sessions import (
    SESSION_LIFETIME,
    Session,
    consume_login,
    create_session,
    end_session,
    find_session,
    flow_of,
    start_login,
    stored_key,
    upsert_user,
)
from skald.auth.token_admin import MintRequest, fetch_tokens, mint_token, record_event, revoke
from skald.auth.tokens import get_token, parse_duration
from skald.db.connection import DocConnection
from skald.errors import Forbidden, SkaldError
from skald.http.context import request_ip
from skald.http.state import AppState, get_state
from skald.web.render import Viewer, render_page

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
    return "/ui"


def safe_next(value: str | None) -> str:
    """``value`` if it is a local path, else ``/ui`` (what sign-in returns to)."""
    return _safe_next(value)


def set_session_cookie(response: Response, session_id: str) -> None:
    """The session cookie: HttpOnly, SameSite=Lax, Secure unless ``cookie_secure`` is off."""
    response.set_cookie(
        COOKIE, session_id, max_age=int(SESSION_LIFETIME.total_seconds()), path="/",
        httponly=True, secure=get_state().settings.cookie_secure, samesite="Lax",
    )


async def current_session() -> Session | None:
    session_id = request.cookies.get(COOKIE)
    if not session_id:
        return None
    session: Session | None = await get_state().supervisor.service.read(lambda c: find_session(c, session_id))
    return session


def session_principal(session: Session) -> Principal:
    """The principal of an OIDC session (a token session's is its token's: :func:`principal_of`)."""
    scopes = () if session.is_admin else personal_scopes(session.owner)
    return Principal("user", "user:" + session.owner, session.owner, scopes, session.owner, session.is_admin)


async def principal_of(session: Session) -> Principal | None:
    """Who the session acts as: an OIDC person, or the token it was opened with.

    A token session lives only as long as its token: once the token is revoked or expired the
    session signs nobody in (None), so a revocation ends browser access at once.
    """
    if session.token_id is None:
        return session_principal(session)
    token_id = session.token_id
    record = await get_state().supervisor.service.read(lambda c: get_token(c, token_id))
    if record is None or record.state() != "active":
        return None
    return record.principal()


def is_token_admin(principal: Principal) -> bool:
    """May ``principal`` administer every token (an admin person, or a token with ``admin.token``)?"""
    return decide(principal, GLOBAL, "admin.token").allowed


async def resolve_session() -> Principal | None:
    """API authentication by web session; state-changing methods must echo ``X-CSRF-Token``."""
    session = await current_session()
    if session is None:
        return None
    if request.method not in SAFE_METHODS and request.headers.get("X-CSRF-Token") != session.csrf:
        return None
    return await principal_of(session)


# ---- login / callback / logout ------------------------------------------------------------------


async def login() -> Response:
    client = _oidc()
    return_to = _safe_next(request.args.get("next"))
    state = get_state()
    state_value, flow = await state.supervisor.service.write(lambda c: start_login(c, return_to))
    if state.cluster is not None:  # the provider's callback may reach any node
        await state.cluster.share_row("login_flows", stored_key(state_value))
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
    if state.cluster is not None:  # once cluster-wide: whoever takes the etcd copy consumes it
        taken = await state.cluster.take_row("login_flows", stored_key(state_value))
        flow = flow_of(taken) if taken is not None else None
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
    if state.cluster is not None:
        await state.cluster.share_row("users", who.owner)
        await state.cluster.share_row("sessions", stored_key(session_id))
    await record_event(state, "login", actor="user:" + who.owner, subject=who.subject,
                       detail={"admin": who.is_admin}, ip=request_ip())
    response = _redirect(flow.return_to)
    set_session_cookie(response, session_id)
    return response


async def _require_csrf(session: Session) -> dict[str, str]:
    form = await request.form
    if form.get("csrf") != session.csrf:
        raise CsrfFailed("the form's CSRF token does not match your session; reload the page")
    return dict(form)


SIGNED_OUT_PATH = "/ui/signed-out"


async def _provider_logout_url(session: Session) -> str | None:
    """Where the provider ends its own session (RP-initiated logout), if it says so in discovery.

    Without this the provider's session outlives ours and "sign in" signs the person straight
    back in. Token sessions have no provider session. A provider that cannot be reached is not
    a reason to keep the person signed in here: skald's session is ended either way.
    """
    state = get_state()
    if session.token_id is not None or not configured(state.settings):
        return None
    try:
        meta = await _oidc().metadata()
    except SkaldError:
        return None
    if not meta.end_session_endpoint:
        return None
    signed_out = request.host_url.rstrip("/") + SIGNED_OUT_PATH
    params = {"client_id": str(state.settings.oidc_client_id), "post_logout_redirect_uri": signed_out}
    separator = "&" if "?" in meta.end_session_endpoint else "?"
    return meta.end_session_endpoint + separator + urlencode(params)


async def logout() -> Response:
    state = get_state()
    session = await current_session()
    location = SIGNED_OUT_PATH
    if session is not None:
        await _require_csrf(session)
        session_id = request.cookies[COOKIE]
        if state.cluster is not None:
            # Every node's copy first: with etcd away this fails (503) and changes nothing, so the
            # retry still finds the session; deleting here first would leave it alive elsewhere.
            await state.cluster.unshare_row("sessions", stored_key(session_id))
        await state.supervisor.service.write(lambda c: end_session(c, session_id))
        actor = "user:" + session.owner if session.token_id is None else session.token_id
        await record_event(state, "logout", actor=actor, ip=request_ip())
        location = await _provider_logout_url(session) or SIGNED_OUT_PATH
    response = _redirect(location)
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
    signed: SignedIn,
    *,
    status: int = 200,
    error: str = "",
    new_token: dict[str, str] | None = None,
    form: _Form | None = None,
) -> Response:
    session, principal = signed.session, signed.principal
    admin = is_token_admin(principal)
    # An administrator sees and may revoke every token (CLI-, API- and web-minted alike).
    records = await fetch_tokens(get_state(), owner=None if admin else session.owner)
    tokens = [{**r.to_public(), "scopes": [str(s) for s in r.scopes]} for r in reversed(records)]
    return await render_page(
        "web/tokens.html", signed.viewer, status=status, title="Tokens",
        owner=session.owner, is_admin=admin, tokens=tokens, may_mint=_mint_refusal(signed, ()) is None,
        error=error, new_token=new_token, form=form or _Form(), expiry_choices=EXPIRY_CHOICES,
        namespace=personal_namespace(session.owner),
    )


@dataclasses.dataclass(frozen=True)
class SignedIn:
    """A live web session and who it acts as."""

    session: Session
    principal: Principal

    @property
    def viewer(self) -> Viewer:
        return Viewer(
            name=self.session.owner or self.principal.label or self.principal.id,
            csrf=self.session.csrf,
            is_admin=is_token_admin(self.principal),
            via_token=self.session.token_id is not None,
        )


async def signed_in() -> SignedIn | None:
    """The request's live session and its principal (None: nobody, or the session's token is gone)."""
    session = await current_session()
    if session is None:
        return None
    principal = await principal_of(session)
    return None if principal is None else SignedIn(session, principal)


def login_redirect(path: str) -> Response:
    """To the sign-in page, coming back to ``path`` afterwards."""
    return _redirect("/ui/login?" + urlencode({"next": path}))


async def _signed_in() -> SignedIn | Response:
    # Works with or without OIDC: /ui/login always offers signing in with a token.
    signed = await signed_in()
    return login_redirect("/ui/tokens") if signed is None else signed


def _mint_refusal(signed: SignedIn, scopes: tuple[Scope, ...]) -> str | None:
    """Why this session may not mint ``scopes`` (None = allowed).

    A token session mints only with ``admin.token`` (as the admin API demands): otherwise pasting a
    narrow token would let it mint itself wider ones on its owner's personal namespace.
    """
    if is_token_admin(signed.principal):
        return None
    if signed.session.token_id is not None:
        return "minting tokens needs a session signed in with a token that has admin.token"
    return refusal(signed.session.owner, False, scopes) if scopes else None


async def tokens_page() -> Response:
    signed = await _signed_in()
    return signed if isinstance(signed, Response) else await _page(signed)


async def tokens_create() -> Response:
    signed = await _signed_in()
    if isinstance(signed, Response):
        return signed
    session = signed.session
    fields = await _require_csrf(session)
    form = _Form(fields.get("label", "")[:200], fields.get("scopes", ""), fields.get("expires", ""))
    try:
        scopes = tuple(Scope.parse(line.strip()) for line in form.scopes.splitlines() if line.strip())
        expires_in = parse_duration(form.expires) if form.expires else None
    except (ScopeError, ValueError) as exc:
        return await _page(signed, status=400, error=str(exc), form=form)
    reason = "enter at least one scope" if not scopes else _mint_refusal(signed, scopes)
    if reason:
        return await _page(signed, status=400 if not scopes else 403, error=reason, form=form)
    mint = MintRequest(scopes=scopes, label=form.label, owner=session.owner, expires_in=expires_in)
    secret, record = await mint_token(get_state(), signed.principal, mint, ip=request_ip(), via="web")
    return await _page(signed, new_token={"id": record.id, "label": record.label, "secret": secret})


async def tokens_revoke(token_id: str) -> Response:
    signed = await _signed_in()
    if isinstance(signed, Response):
        return signed
    await _require_csrf(signed.session)
    owner = None if is_token_admin(signed.principal) else signed.session.owner
    await revoke(get_state(), signed.principal, token_id, owner=owner, ip=request_ip(), via="web")
    return _redirect("/ui/tokens")
