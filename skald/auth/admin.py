"""Admin API: machine tokens and the audit log (action ``admin.token``, global).

``POST /api/v1/admin/tokens`` (201, the plaintext once), ``GET /api/v1/admin/tokens``,
``GET|DELETE /api/v1/admin/tokens/{token_id}``, ``GET /api/v1/admin/audit?before_id=&limit=&event=``
(``after_id=``: this node's own events after that id, oldest first; on a cluster the log without it
is the cluster's, collected by :mod:`skald.cluster.audit`).
The rate limiter (:mod:`skald.http.throttle`) and the audit of admin actions (:mod:`skald.auth.audit_hooks`)
are their own entries in :data:`skald.http.app.INSTALLERS`.
"""

from __future__ import annotations

from typing import Any

import structlog
from pydantic import BaseModel, Field, field_validator
from quart import Response, jsonify, request
from quart_schema import validate_request
from quart_trio import QuartTrio

from skald.auth.guard import current_principal, requires
from skald.auth.scopes import Scope, ScopeError
from skald.auth.token_admin import (
    AUDIT_PAGE_MAX,
    MintRequest,
    fetch_token,
    fetch_tokens,
    mint_token,
    read_after,
    read_audit,
    revoke,
)
from skald.auth.tokens import parse_duration
from skald.cluster.forward import FORWARDED_BY
from skald.errors import SkaldError, ValidationFailed
from skald.http.context import request_ip
from skald.http.params import int_param
from skald.http.state import AppState, get_state


class ScopeIn(BaseModel):
    db: str = Field(description="document id or glob pattern (`*`, `team-*`)")
    action: str = Field(description="one of the actions in docs/identity.md, or `*`")
    resource_prefix: str | None = Field(default=None, description="limit to resources under this prefix")


class CreateTokenRequest(BaseModel):
    scopes: list[ScopeIn | str] = Field(
        min_length=1, description="scope objects or `DB:ACTION[:PREFIX]` strings"
    )
    label: str = Field(default="", max_length=200)
    owner: str | None = Field(default=None, max_length=200, description="defaults to the caller's owner")
    expires_in: str | None = Field(
        default=None, description="lifetime like `30d`, `12h`, `15m`; none = never"
    )

    @field_validator("expires_in")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)  # raises ValueError -> 400 validation_failed
        return value


log = structlog.get_logger("skald.auth.admin")


def install(app: QuartTrio, state: AppState) -> None:
    rules = [
        ("/api/v1/admin/tokens", create_view, "POST"),
        ("/api/v1/admin/tokens", list_view, "GET"),
        ("/api/v1/admin/tokens/<token_id>", get_view, "GET"),
        ("/api/v1/admin/tokens/<token_id>", delete_view, "DELETE"),
        ("/api/v1/admin/audit", audit_view, "GET"),
    ]
    for rule, view, method in rules:
        app.add_url_rule(rule, endpoint=f"admin.{view.__name__}", view_func=view, methods=[method])

    # Token bookkeeping (skald.auth.usage): written every few seconds by a task of the app's
    # nursery, and once more as the app stops. Installers' after_serving hooks run before
    # create_app's own, which closes the service database.
    @app.before_serving
    async def start_token_usage() -> None:
        app.nursery.start_soon(state.token_usage.run, lambda: state.supervisor.service, state.shutdown.event)

    @app.after_serving
    async def flush_token_usage() -> None:
        try:
            await state.token_usage.flush(state.supervisor.service)
        except SkaldError as exc:
            log.warning("token usage not written at stop", error=str(exc))


def parse_scopes(items: list[ScopeIn | str]) -> tuple[Scope, ...]:
    try:
        return tuple(
            Scope.parse(item) if isinstance(item, str)
            else Scope(item.db, item.action, item.resource_prefix or None)
            for item in items
        )
    except ScopeError as exc:
        raise ValidationFailed(str(exc)) from None


@requires("admin.token")
@validate_request(CreateTokenRequest)
async def create_view(data: CreateTokenRequest) -> tuple[Response, int]:
    """Mint a token; the response carries the plaintext ``token`` once (it is not stored)."""
    principal = current_principal()
    mint = MintRequest(
        scopes=parse_scopes(data.scopes),
        label=data.label,
        owner=data.owner if data.owner is not None else principal.owner,
        expires_in=parse_duration(data.expires_in) if data.expires_in else None,
    )
    secret, record = await mint_token(get_state(), principal, mint, ip=request_ip())
    response = jsonify({**record.to_public(), "token": secret})
    response.headers["Cache-Control"] = "no-store"
    return response, 201


@requires("admin.token")
async def list_view() -> dict[str, Any]:
    owner = request.args.get("owner")
    records = await fetch_tokens(get_state(), owner=owner)
    return {"tokens": [r.to_public() for r in records]}


@requires("admin.token")
async def get_view(token_id: str) -> dict[str, Any]:
    return (await fetch_token(get_state(), token_id)).to_public()


@requires("admin.token")
async def delete_view(token_id: str) -> tuple[str, int]:
    await revoke(get_state(), current_principal(), token_id, ip=request_ip())
    return "", 204


@requires("admin.token")
async def audit_view() -> dict[str, Any]:
    """A page of the audit log, newest first; follow ``next_before_id`` for older events."""
    before_id = int_param("before_id", request.args.get("before_id"), minimum=1)
    limit = min(int_param("limit", request.args.get("limit"), 100, minimum=1), AUDIT_PAGE_MAX)
    event = request.args.get("event") or None
    after_id = int_param("after_id", request.args.get("after_id"), minimum=0)
    node = request.args.get("node")
    if node is not None and node != "local":
        raise ValidationFailed("node may only be `local` (this node's own events)")
    state = get_state()
    cluster = state.cluster
    if cluster is not None and node is None and after_id is None:
        # The cluster's log (every node's events, collected in the owned document ``_audit``).
        forwarded = request.headers.get(FORWARDED_BY) is not None
        return await cluster.audit.page(before_id=before_id, limit=limit, event=event, forwarded=forwarded)
    if after_id is not None:  # following this node's log: events after that id, oldest first
        events = await state.supervisor.service.read(
            lambda conn: read_after(conn, after_id, limit, event)
        )
        return {"events": events, "next_before_id": None}
    events = await state.supervisor.service.read(
        lambda conn: read_audit(conn, before_id=before_id, limit=limit, event=event)
    )
    next_before = events[-1]["id"] if len(events) == limit else None
    return {"events": events, "next_before_id": next_before}
