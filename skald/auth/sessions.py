"""People and their web sessions in the service database (plain ``fn(conn)`` operations).

A session id is 256 random bits handed to the browser as a cookie; the
database keeps only its SHA-256 (like tokens). Each session has its own CSRF
token, which every state-changing form (and every cookie-authenticated API
write) must echo. Pending logins (``state``, ``nonce``, PKCE verifier) live in
``login_flows`` and are deleted by the callback that consumes them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import secrets
import sqlite3

from skald.auth.tokens import iso, utcnow

SESSION_LIFETIME = dt.timedelta(hours=12)
LOGIN_FLOW_LIFETIME = dt.timedelta(minutes=10)


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def stored_key(value: str) -> str:
    """The key a session id or login state is stored under (its SHA-256; a cluster shares rows by it)."""
    return _hash(value)


@dataclasses.dataclass(frozen=True)
class Session:
    owner: str
    is_admin: bool
    csrf: str
    expires_at: str
    # Set for a session opened by pasting a token (/ui/login): it acts with that token's scopes.
    token_id: str | None = None


@dataclasses.dataclass(frozen=True)
class LoginFlow:
    nonce: str
    code_verifier: str
    return_to: str


def start_login(conn: sqlite3.Connection, return_to: str) -> tuple[str, LoginFlow]:
    """Record a new authorization request; return ``(state, flow)``."""
    state = secrets.token_urlsafe(32)
    flow = LoginFlow(secrets.token_urlsafe(32), secrets.token_urlsafe(48), return_to)
    now = utcnow()
    conn.execute("DELETE FROM login_flows WHERE expires_at <= ?", (iso(now),))
    conn.execute(
        "INSERT INTO login_flows (state_hash, nonce, code_verifier, return_to, created_at, expires_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (_hash(state), flow.nonce, flow.code_verifier, return_to, iso(now), iso(now + LOGIN_FLOW_LIFETIME)),
    )
    return state, flow


def consume_login(conn: sqlite3.Connection, state: str) -> LoginFlow | None:
    """The flow ``state`` names, deleted so it cannot be used again; None if unknown or expired."""
    row = conn.execute(
        "DELETE FROM login_flows WHERE state_hash = ? RETURNING nonce, code_verifier, return_to, expires_at",
        (_hash(state),),
    ).fetchone()
    if row is None or row[3] <= iso(utcnow()):
        return None
    return LoginFlow(row[0], row[1], row[2])


def flow_of(row: dict[str, str]) -> LoginFlow | None:
    """The flow in a ``login_flows`` row taken from the cluster (None once expired)."""
    if row["expires_at"] <= iso(utcnow()):
        return None
    return LoginFlow(row["nonce"], row["code_verifier"], row["return_to"])


def upsert_user(
    conn: sqlite3.Connection, *, owner: str, issuer: str, subject: str, name: str, is_admin: bool
) -> None:
    now = iso(utcnow())
    conn.execute(
        "INSERT INTO users (owner, issuer, subject, name, is_admin, created_at, last_login_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (owner) DO UPDATE SET issuer = excluded.issuer, "
        "subject = excluded.subject, name = excluded.name, is_admin = excluded.is_admin, "
        "last_login_at = excluded.last_login_at",
        (owner, issuer, subject, name, int(is_admin), now, now),
    )


def create_session(
    conn: sqlite3.Connection, owner: str, is_admin: bool, *, token_id: str | None = None
) -> tuple[str, Session]:
    """Open a session; return ``(session id for the cookie, session)``. Only the id's hash is stored.

    With ``token_id`` the session is a token session: it acts with that token's scopes, and
    deleting the token deletes the session (the foreign key cascades).
    """
    session_id = secrets.token_urlsafe(32)
    now = utcnow()
    session = Session(owner, is_admin, secrets.token_urlsafe(24), iso(now + SESSION_LIFETIME), token_id)
    conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (iso(now),))
    conn.execute(
        "INSERT INTO sessions (id_hash, owner, is_admin, csrf, created_at, expires_at, token_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (_hash(session_id), owner, int(is_admin), session.csrf, iso(now), session.expires_at, token_id),
    )
    return session_id, session


def find_session(conn: sqlite3.Connection, session_id: str) -> Session | None:
    row = conn.execute(
        "SELECT owner, is_admin, csrf, expires_at, token_id FROM sessions WHERE id_hash = ?",
        (_hash(session_id),),
    ).fetchone()
    if row is None or row[3] <= iso(utcnow()):
        return None
    return Session(row[0], bool(row[1]), row[2], row[3], row[4])


def end_session(conn: sqlite3.Connection, session_id: str) -> str | None:
    """Delete the session; return its owner (None if there was none)."""
    row = conn.execute(
        "DELETE FROM sessions WHERE id_hash = ? RETURNING owner", (_hash(session_id),)
    ).fetchone()
    return None if row is None else str(row[0])
