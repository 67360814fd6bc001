"""Token administration as service-database operations: mint, revoke, list, read the audit log.

Shared by the admin API (``skald.auth.admin``) and the token page
(``skald.auth.identity``). Every state change writes its audit event in the
same transaction, so a token never exists without the record of who made it.
Revocation clears the server's :class:`~skald.auth.guard.TokenCache` so a
revoked token stops working at once on this node.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from skald.auth.guard import token_cache
from skald.auth.scopes import Principal, Scope
from skald.auth.tokens import TokenRecord, audit, create_token, get_token, list_tokens, revoke_token
from skald.db.connection import DocConnection
from skald.errors import NotFound
from skald.http.state import AppState

AUDIT_PAGE_MAX = 500


class TokenNotFound(NotFound):
    code = "token_not_found"
    title = "Token not found"


@dataclasses.dataclass(frozen=True)
class MintRequest:
    scopes: tuple[Scope, ...]
    label: str
    owner: str
    expires_in: dt.timedelta | None


async def mint_token(
    state: AppState, actor: Principal, request: MintRequest, *, ip: str = "", via: str = "api"
) -> tuple[str, TokenRecord]:
    """Create a token and audit ``token.created``; return ``(plaintext, record)``.

    The plaintext exists only in the return value: the database keeps its hash.
    """

    def op(conn: DocConnection) -> tuple[str, TokenRecord]:
        secret, record = create_token(
            conn, scopes=request.scopes, label=request.label, owner=request.owner,
            expires_in=request.expires_in,
        )
        detail = {"label": request.label, "owner": request.owner, "scopes": [str(s) for s in request.scopes],
                  "via": via}
        audit(conn, "token.created", actor=actor.id, subject=record.id, detail=detail, ip=ip)
        return secret, record

    result: tuple[str, TokenRecord] = await state.supervisor.service.write(op)
    if state.cluster is not None:  # every node accepts it once the copy arrives (skald.cluster.tokens)
        await state.cluster.share_token(result[1].id)
    return result


async def fetch_token(state: AppState, token_id: str, *, owner: str | None = None) -> TokenRecord:
    """The token's metadata; 404 if unknown (or, with ``owner``, not owned by them)."""
    record: TokenRecord | None = await state.supervisor.service.read(lambda conn: get_token(conn, token_id))
    if record is None or (owner is not None and record.owner != owner):
        raise TokenNotFound(f"no token {token_id}")
    return record


async def fetch_tokens(state: AppState, *, owner: str | None = None) -> list[TokenRecord]:
    records: list[TokenRecord] = await state.supervisor.service.read(lambda conn: list_tokens(conn, owner))
    return records


async def revoke(
    state: AppState,
    actor: Principal,
    token_id: str,
    *,
    owner: str | None = None,
    ip: str = "",
    via: str = "api",
) -> None:
    """Revoke ``token_id`` (idempotent), audit ``token.revoked`` and clear the token cache.

    With ``owner`` only a token of that owner may be revoked (404 otherwise).
    """

    def op(conn: DocConnection) -> bool:
        record = get_token(conn, token_id)
        if record is None or (owner is not None and record.owner != owner):
            return False
        revoke_token(conn, token_id)
        audit(conn, "token.revoked", actor=actor.id, subject=token_id, detail={"via": via}, ip=ip)
        return True

    found = await state.supervisor.service.write(op)
    cache = token_cache(state)
    cache.clear()
    if not found:
        raise TokenNotFound(f"no token {token_id}")
    if state.cluster is not None:  # every node refuses it once the copy arrives (skald.cluster.tokens)
        await state.cluster.share_token(token_id)


async def record_event(
    state: AppState, event: str, *, actor: str = "", subject: str = "", detail: dict[str, Any] | None = None,
    ip: str = "",
) -> None:
    """Append one audit event (login, logout, failed login, admin action)."""

    def op(conn: DocConnection) -> None:
        audit(conn, event, actor=actor, subject=subject, detail=detail, ip=ip)

    await state.supervisor.service.write(op)


def read_audit(
    conn: DocConnection, *, before_id: int | None, limit: int, event: str | None = None
) -> list[dict[str, Any]]:
    """Newest first; ``before_id`` pages backwards (pass the last id of the previous page)."""
    clauses: list[str] = []
    params: list[Any] = []
    if before_id is not None:
        clauses.append("id < ?")
        params.append(before_id)
    if event:
        clauses.append("event = ?")
        params.append(event)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = conn.execute(
        "SELECT id, at, event, actor, subject, detail_json, ip FROM audit_log "
        f"{where} ORDER BY id DESC LIMIT ?",
        (*params, limit),
    ).fetchall()
    return [
        {"id": r[0], "at": r[1], "event": r[2], "actor": r[3], "subject": r[4],
         "detail": json.loads(r[5]), "ip": r[6]}
        for r in rows
    ]


def read_after(
    conn: DocConnection, after_id: int, limit: int, event: str | None = None
) -> list[dict[str, Any]]:
    """Oldest first, the events after ``after_id`` (following the log; a cluster collects it so)."""
    clause, params = ("AND event = ?", [event]) if event else ("", [])
    rows = conn.execute(
        "SELECT id, at, event, actor, subject, detail_json, ip FROM audit_log "
        f"WHERE id > ? {clause} ORDER BY id LIMIT ?",
        (after_id, *params, limit),
    ).fetchall()
    return [
        {"id": r[0], "at": r[1], "event": r[2], "actor": r[3], "subject": r[4],
         "detail": json.loads(r[5]), "ip": r[6]}
        for r in rows
    ]


def scopes_text(scopes: Sequence[Scope]) -> str:
    return ", ".join(str(s) for s in scopes)
