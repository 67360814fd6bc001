"""Machine tokens in the service database: mint, look up, list, revoke.

The secret is 256 random bits (``skd_`` + 43 url-safe characters), shown once
at creation; the database keeps only its SHA-256. These are plain
``fn(conn)`` operations: the server runs them through the service actor, the
CLI directly on the data folder (so an operator can act with the server down).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
import secrets
import sqlite3
from collections.abc import Sequence
from typing import Any

from skald.auth.scopes import Principal, Scope, scopes_from_json

TOKEN_PREFIX = "skd_"
_DURATION = re.compile(r"^([0-9]+)([smhdw])$")  # ASCII digits only: the documented pattern
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# A lifetime must land on the calendar (``now + lifetime`` overflows past year 9999); "never" is no
# lifetime at all. A century is longer than any token should live and far from that edge.
MAX_LIFETIME = dt.timedelta(days=36500)


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def iso(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_duration(text: str) -> dt.timedelta:
    """``30d``, ``12h``, ``15m``, ``90s``, ``2w`` -> timedelta."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"duration {text!r} is not like 30d, 12h, 15m, 90s or 2w")
    seconds = int(match[1]) * _UNITS[match[2]]
    if seconds > MAX_LIFETIME.total_seconds():
        raise ValueError(f"duration {text!r} is too long: at most {MAX_LIFETIME.days}d (omit it for no expiry)")
    return dt.timedelta(seconds=seconds)


@dataclasses.dataclass(frozen=True)
class TokenRecord:
    id: str
    label: str
    owner: str
    scopes: tuple[Scope, ...]
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None

    def state(self, now: dt.datetime | None = None) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked_at:
            return "revoked"
        if self.expires_at and self.expires_at <= iso(now or utcnow()):
            return "expired"
        return "active"

    def to_public(self) -> dict[str, Any]:
        """Metadata only: never the secret, never its hash."""
        return {
            "id": self.id,
            "label": self.label,
            "owner": self.owner,
            "scopes": [s.to_dict() for s in self.scopes],
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "last_used_at": self.last_used_at,
            "state": self.state(),
        }

    def principal(self) -> Principal:
        return Principal("token", self.id, self.owner, self.scopes, self.label)


_COLUMNS = "id, label, owner, scopes_json, created_at, expires_at, revoked_at, last_used_at"


def _record(row: Sequence[Any]) -> TokenRecord:
    return TokenRecord(
        row[0], row[1], row[2], scopes_from_json(json.loads(row[3])), row[4], row[5], row[6], row[7]
    )


def create_token(
    conn: sqlite3.Connection,
    *,
    scopes: Sequence[Scope],
    label: str = "",
    owner: str = "",
    expires_in: dt.timedelta | None = None,
    secret: str | None = None,
) -> tuple[str, TokenRecord]:
    """Insert a token; return ``(plaintext secret, record)``. The secret is not kept anywhere."""
    secret = secret or TOKEN_PREFIX + secrets.token_urlsafe(32)
    token_id = "tok_" + secrets.token_hex(8)
    now = utcnow()
    expires = iso(now + expires_in) if expires_in else None
    scopes_json = json.dumps([s.to_dict() for s in scopes])
    conn.execute(
        "INSERT INTO tokens (id, token_hash, label, owner, scopes_json, created_at, expires_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (token_id, hash_token(secret), label, owner, scopes_json, iso(now), expires),
    )
    return secret, TokenRecord(token_id, label, owner, tuple(scopes), iso(now), expires, None, None)


def find_by_secret(conn: sqlite3.Connection, secret: str) -> TokenRecord | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM tokens WHERE token_hash = ?", (hash_token(secret),)).fetchone()
    return _record(row) if row else None


def get_token(conn: sqlite3.Connection, token_id: str) -> TokenRecord | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM tokens WHERE id = ?", (token_id,)).fetchone()
    return _record(row) if row else None


def list_tokens(conn: sqlite3.Connection, owner: str | None = None) -> list[TokenRecord]:
    if owner is None:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM tokens ORDER BY created_at, id").fetchall()
    else:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM tokens WHERE owner = ? ORDER BY created_at, id", (owner,)
        ).fetchall()
    return [_record(r) for r in rows]


def revoke_token(conn: sqlite3.Connection, token_id: str) -> bool:
    """Mark revoked; return False if there is no such token. Revoking twice keeps the first time."""
    cur = conn.execute(
        "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?", (iso(utcnow()), token_id)
    )
    return cur.rowcount > 0


def touch_token(conn: sqlite3.Connection, token_id: str) -> None:
    conn.execute("UPDATE tokens SET last_used_at = ? WHERE id = ?", (iso(utcnow()), token_id))


def count_tokens(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM tokens").fetchone()
    return int(row[0])


def audit(
    conn: sqlite3.Connection,
    event: str,
    *,
    actor: str = "",
    subject: str = "",
    detail: dict[str, Any] | None = None,
    ip: str = "",
) -> None:
    """Append one security event to the audit log (never a secret in ``detail``)."""
    conn.execute(
        "INSERT INTO audit_log (at, event, actor, subject, detail_json, ip) VALUES (?, ?, ?, ?, ?, ?)",
        (iso(utcnow()), event, actor, subject, json.dumps(detail or {}, sort_keys=True), ip),
    )


def bootstrap_admin(conn: sqlite3.Connection, secret: str | None) -> str | None:
    """On an empty token table create the admin token; return its secret only if newly made.

    With ``secret`` (``SKALD_ADMIN_TOKEN``) the given value is registered if
    its hash is not yet known, and ``None`` is returned (nothing to print).
    """
    if secret:
        if find_by_secret(conn, secret) is None:
            create_token(conn, scopes=[Scope("*", "*")], label="admin (SKALD_ADMIN_TOKEN)", owner="admin",
                         secret=secret)
            audit(conn, "token.created", actor="bootstrap", subject="admin", detail={"source": "env"})
        return None
    if count_tokens(conn):
        return None
    plaintext, record = create_token(conn, scopes=[Scope("*", "*")], label="admin (first start)", owner="admin")
    audit(conn, "token.created", actor="bootstrap", subject=record.id, detail={"source": "first-start"})
    return plaintext
