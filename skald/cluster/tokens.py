"""Tokens shared by every node: etcd holds each token row, every node mirrors them into its service DB.

Minting or revoking through any node writes the local row (as on a single node) and then puts a
copy under ``/skald/tokens/{id}``; every node's directory watch applies the copy to its own
``tokens`` table and clears its token cache. So a token minted through one node works through all
within the watch's delay (milliseconds), and a revocation is seen everywhere as fast; every
existing path (look-up, listing, revoke by id) keeps reading the local table. Only the hash of a
token is ever shared, as only the hash is stored. ``last_used_at`` stays per node.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable
from typing import Any

import structlog
import trio

from skald.db.actor import DocumentActor
from skald.db.connection import DocConnection

log = structlog.get_logger("skald.cluster.tokens")

TOKENS = "/skald/tokens/"
_COLUMNS = ("id", "token_hash", "label", "owner", "scopes_json", "created_at", "expires_at", "revoked_at")


def read_row(conn: DocConnection, token_id: str) -> dict[str, Any] | None:
    row = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM tokens WHERE id = ?", (token_id,)).fetchone()
    return dict(zip(_COLUMNS, row, strict=True)) if row else None


def _upsert(conn: DocConnection, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        try:
            _upsert_one(conn, row)
        except sqlite3.IntegrityError:
            # The same secret under another id (each node's own row of a shared admin token): this
            # node already accepts that secret; one such row must not hold back every other copy.
            log.warning("token copy skipped: its hash is here under another id", token_id=row.get("id"))


def _upsert_one(conn: DocConnection, row: dict[str, Any]) -> None:
    # A revocation is never undone by an older copy: revoked_at only goes from NULL to a time.
    conn.execute(
        f"INSERT INTO tokens ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
        "ON CONFLICT (id) DO UPDATE SET label = excluded.label, owner = excluded.owner, "
        "scopes_json = excluded.scopes_json, expires_at = excluded.expires_at, "
        "revoked_at = COALESCE(tokens.revoked_at, excluded.revoked_at)",
        [row.get(c) for c in _COLUMNS],
    )


class TokenMirror:
    """Applies token copies seen by the watch to the service DB; one pending copy per token (bounded)."""

    def __init__(self, service: Callable[[], DocumentActor]) -> None:
        self._service = service
        self._pending: dict[str, dict[str, Any]] = {}
        self._wakeup = trio.Event()
        self.on_change: list[Callable[[], None]] = []

    def seen(self, value: str) -> None:
        row = json.loads(value)
        self._pending[row["id"]] = row
        self._wakeup.set()

    async def serve(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            rows, self._pending = list(self._pending.values()), {}
            try:
                await self._service().write(functools.partial(_upsert, rows=rows))
            except Exception:
                log.exception("could not mirror tokens; retrying")
                for row in rows:
                    self._pending.setdefault(row["id"], row)
                await trio.sleep(0.5)
                self._wakeup.set()
                continue
            for callback in self.on_change:
                callback()
