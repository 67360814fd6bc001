"""The web face's routes: ``/``, ``/docs``, sign-in by token, static assets, and the browser pages.

``install(app, state)`` registers every page and builds ``state.web`` (the
:class:`~skald.web.service.DocumentBrowser`). Pages are server-rendered; the only scripts are
skald's own small files under ``/ui/static/`` (the live query and topic tail speak to the existing
SSE APIs with the session cookie) and the vendored Swagger UI for ``/docs``.

Sign-in by token (``/ui/login``) opens the same server-side session as OIDC (cookie, CSRF token,
lifetime: :mod:`skald.auth.sessions`), bound to the token: it acts with the token's scopes and ends when
the token is revoked. The login form itself carries a CSRF token (a double-submit cookie), so a
third-party page cannot sign a browser in as someone else.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from quart import Response, request, send_from_directory
from quart_trio import QuartTrio

from skald.auth.guard import check_token
from skald.auth.identity import (
    COOKIE,
    login_redirect,
    safe_next,
    set_session_cookie,
    signed_in,
)
from skald.auth.oidc import configured
from skald.auth.scopes import GLOBAL, decide
from skald.auth.sessions import create_session, stored_key
from skald.auth.token_admin import record_event
from skald.db.connection import DocConnection
from skald.errors import SkaldError, TokenInvalid
from skald.http.context import request_ip
from skald.http.state import AppState, get_state
from skald.web import jobs, pages
from skald.web.render import render_page
from skald.web.service import DocumentBrowser

STATIC = Path(__file__).resolve().parent / "static"
LOGIN_CSRF_COOKIE = "skald_login_csrf"


def install(app: QuartTrio, state: AppState) -> None:
    state.web = DocumentBrowser(state)
    rules: list[tuple[str, Any, list[str]]] = [
        ("/", home, ["GET"]),
        ("/docs", api_docs, ["GET"]),
        ("/favicon.ico", favicon, ["GET"]),
        ("/ui/static/<path:filename>", static_file, ["GET"]),
        ("/ui/login", login_page, ["GET"]),
        ("/ui/login", login_submit, ["POST"]),
        ("/ui/signed-out", signed_out, ["GET"]),
        *pages.RULES,
        *jobs.RULES,
    ]
    for rule, view, methods in rules:
        app.add_url_rule(rule, endpoint=f"web.{view.__name__}.{methods[0]}", view_func=view, methods=methods)


def _redirect(location: str) -> Response:
    return Response("", status=303, headers={"Location": location, "Cache-Control": "no-store"})


async def home() -> Response:
    """What this server is, where to go next; once signed in, the documents the viewer can see."""
    signed = await signed_in()
    documents = await pages.visible_documents(signed.principal) if signed else []
    return await render_page(
        "web/home.html", signed.viewer if signed else None, title="Home", documents=documents,
        oidc=configured(get_state().settings),
        operator=bool(signed and decide(signed.principal, GLOBAL, "admin.token").allowed),
    )


async def api_docs() -> Response:
    return await render_page("web/docs.html", None, title="API docs")


async def favicon() -> Response:
    response = await send_from_directory(STATIC, "favicon.svg", mimetype="image/svg+xml")
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response


async def static_file(filename: str) -> Response:
    """A file of skald's own assets (werkzeug's ``safe_join`` refuses paths leaving the folder: 404)."""
    response = await send_from_directory(STATIC, filename)
    response.headers["Cache-Control"] = "public, max-age=3600"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


async def _login_form(*, status: int = 200, error: str = "") -> Response:
    csrf = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
    response = await render_page(
        "web/login.html", None, status=status, title="Sign in", error=error, csrf=csrf,
        next=safe_next(request.args.get("next")), oidc=configured(get_state().settings),
    )
    response.set_cookie(LOGIN_CSRF_COOKIE, csrf, max_age=3600, path="/ui/login", httponly=True,
                        secure=get_state().settings.cookie_secure, samesite="Lax")
    return response


async def login_page() -> Response:
    """The sign-in page: OIDC when configured, and always a form to paste a token."""
    return await _login_form()


async def login_submit() -> Response:
    """Open a session for the pasted token (401 with the form again if it is unknown, expired or revoked)."""
    state = get_state()
    form = await request.form
    expected = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not expected or form.get("csrf") != expected:
        return await _login_form(status=403, error="The form expired; please try again.")
    secret = form.get("token", "").strip()
    if not secret:
        return await _login_form(status=400, error="Paste a token to sign in.")
    try:
        principal = await check_token(state, secret, path=request.path, ip=request_ip())
    except TokenInvalid as exc:
        await record_event(state, "login.failed", detail={"reason": exc.detail, "via": "token"}, ip=request_ip())
        return await _login_form(status=401, error=f"That token does not sign in: {exc.detail}.")

    def open_session(conn: DocConnection) -> str:
        session_id, _ = create_session(conn, principal.owner, False, token_id=principal.id)
        return session_id

    session_id = await state.supervisor.service.write(open_session)
    if state.cluster is not None:  # the browser's next request may reach another node
        await state.cluster.share_row("sessions", stored_key(session_id))
    await record_event(state, "login", actor=principal.id, subject=principal.id,
                       detail={"via": "token", "label": principal.label}, ip=request_ip())
    response = _redirect(safe_next(request.args.get("next") or form.get("next")))
    set_session_cookie(response, session_id)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/ui/login")
    return response


async def signed_out() -> Response:
    """Where sign-out lands (also the provider's ``post_logout_redirect_uri``)."""
    signed = await signed_in()
    response = await render_page("web/signed_out.html", signed.viewer if signed else None, title="Signed out")
    if signed is None and request.cookies.get(COOKIE):
        response.delete_cookie(COOKIE, path="/")
    return response


__all__ = ["SkaldError", "install", "login_redirect"]
