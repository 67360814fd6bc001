"""Rendering a web page: one template, the signed-in viewer, and the headers every page carries.

Pages load scripts only from skald itself (``script-src 'self'``: no inline script, no CDN), may not
be framed, and are never cached (they show data the viewer's session may see, and CSRF tokens).
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import quote

from quart import Response, render_template

from skald import __version__

# Inline styles stay allowed for Swagger UI, which sets style attributes from its own script. No
# form-action: Chromium applies it to the redirect after a post, and signing out redirects to the
# identity provider's end-session page (RP-initiated logout).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self' 'unsafe-inline'; script-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; frame-ancestors 'none'"
)


@dataclasses.dataclass(frozen=True)
class Viewer:
    """Who a page is rendered for: shown in the header, with the CSRF token for its forms."""

    name: str
    csrf: str
    is_admin: bool
    via_token: bool


async def render_page(
    template: str, viewer: Viewer | None, *, status: int = 200, title: str = "", **context: Any
) -> Response:
    """``template`` rendered for ``viewer`` (None: signed out) as a ``text/html`` response."""
    if "db_id" in context:  # the document pages' links start here
        context.setdefault("base", "/ui/db/" + quote(str(context["db_id"]), safe=""))
    html = await render_template(template, viewer=viewer, title=title, version=__version__, **context)
    response = Response(html, status=status, content_type="text/html; charset=utf-8")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response
