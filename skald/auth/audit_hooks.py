"""Audit of administrative actions taken through routes other than the token API.

Every successful state-changing request (not GET/HEAD/OPTIONS) to a route
whose view requires ``db.admin`` (create or delete a document, and whatever
later capabilities guard with it) is appended to the audit log as
``admin.action`` with the caller, method, route and status. Token minting and
revocation audit themselves (``token.created`` / ``token.revoked``).
"""

from __future__ import annotations

from quart import Response, current_app, g, request
from quart_trio import QuartTrio

from skald.auth.token_admin import record_event
from skald.http.context import request_ip
from skald.http.state import AppState

AUDITED_ACTIONS = frozenset({"db.admin"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def install(app: QuartTrio, state: AppState) -> None:
    @app.after_request
    async def audit_admin_action(response: Response) -> Response:
        if request.method in SAFE_METHODS or response.status_code >= 400 or request.url_rule is None:
            return response
        view = current_app.view_functions.get(request.url_rule.endpoint)
        if getattr(view, "skald_action", None) not in AUDITED_ACTIONS:
            return response
        principal = g.get("principal")
        detail = {
            "method": request.method,
            "route": request.url_rule.rule,
            "path": request.path,
            "status": response.status_code,
        }
        await record_event(
            state, "admin.action", actor=principal.id if principal is not None else "",
            subject=(request.view_args or {}).get("db_id", ""), detail=detail, ip=request_ip(),
        )
        return response
