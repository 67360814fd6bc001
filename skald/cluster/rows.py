"""Users, web sessions and pending logins shared by every node, through etcd like tokens.

Each row of ``users``, ``sessions`` and ``login_flows`` that a node writes is put under
``/skald/rows/{table}/{key}`` (the row as JSON), and removed from etcd when the node deletes it;
every node's directory watch applies the copy to its own service DB, so a session opened through
one node is recognised by every other within the watch's delay, and a logout ends it everywhere.
Only hashes of session ids and login states are stored, locally and in etcd, as on one node.

Rows that expire (sessions, login flows) are put under an etcd lease of their remaining lifetime,
so etcd forgets them on its own. A login flow must work exactly once cluster-wide: its callback
(which HAProxy may send to any node) consumes it with one etcd delete that returns the deleted
row, which only one caller can get.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import sqlite3
from collections.abc import Callable
from typing import Any

import structlog
import trio

from skald.db.actor import DocumentActor
from skald.db.connection import DocConnection

log = structlog.get_logger("skald.cluster.rows")

ROWS = "/skald/rows/"

# table -> (primary key column, every column shared)
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "users": ("owner", ("owner", "issuer", "subject", "name", "is_admin", "created_at", "last_login_at")),
    "sessions": ("id_hash", ("id_hash", "owner", "is_admin", "csrf", "created_at", "expires_at", "token_id")),
    "login_flows": (
        "state_hash", ("state_hash", "nonce", "code_verifier", "return_to", "created_at", "expires_at"),
    ),
}


def row_key(table: str, key: str) -> str:
    return f"{ROWS}{table}/{key}"


def read_row(conn: DocConnection, table: str, key: str) -> dict[str, Any] | None:
    pk, columns = TABLES[table]
    row = conn.execute(f"SELECT {', '.join(columns)} FROM {table} WHERE {pk} = ?", (key,)).fetchone()
    return dict(zip(columns, row, strict=True)) if row else None


def seconds_left(row: dict[str, Any], now: dt.datetime | None = None) -> float | None:
    """How long an expiring row is still valid (None for rows that do not expire)."""
    expires = row.get("expires_at")
    if not isinstance(expires, str):
        return None
    at = dt.datetime.fromisoformat(expires.replace("Z", "+00:00"))
    return (at - (now or dt.datetime.now(dt.UTC))).total_seconds()


def _apply(conn: DocConnection, changes: list[tuple[str, str, dict[str, Any] | None]]) -> list[int]:
    """Upsert or delete each changed row; return the indexes that could not apply yet (a missing token)."""
    waiting = []
    for index, (table, key, row) in enumerate(changes):
        pk, columns = TABLES[table]
        if row is None:
            conn.execute(f"DELETE FROM {table} WHERE {pk} = ?", (key,))
            continue
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != pk)
        try:
            conn.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
                f"ON CONFLICT ({pk}) DO UPDATE SET {updates}",
                [row.get(c) for c in columns],
            )
        except sqlite3.IntegrityError:  # a token session whose token copy has not arrived yet
            waiting.append(index)
    return waiting


class RowMirror:
    """Applies row copies seen by the watch to the service DB; the latest change per row (bounded)."""

    def __init__(self, service: Callable[[], DocumentActor]) -> None:
        self._service = service
        self._pending: dict[tuple[str, str], dict[str, Any] | None] = {}
        self._tries: dict[tuple[str, str], int] = {}
        self._wakeup = trio.Event()

    def seen(self, kind: str, key: str, value: str) -> None:
        table, _, name = key.removeprefix(ROWS).partition("/")
        if table not in TABLES or not name:
            return
        self._pending[(table, name)] = json.loads(value) if kind == "PUT" else None
        self._wakeup.set()

    async def serve(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            batch, self._pending = self._pending, {}
            changes = [(table, key, row) for (table, key), row in batch.items()]
            try:
                waiting = await self._service().write(functools.partial(_apply, changes=changes))
            except Exception:
                log.exception("could not mirror shared rows; retrying")
                waiting = list(range(len(changes)))
            for table, key, _row in changes:
                self._tries.pop((table, key), None)
            if waiting:
                for index in waiting:
                    table, key, row = changes[index]
                    tries = self._tries[(table, key)] = self._tries.get((table, key), 0) + 1
                    if tries > 20:  # its token was deleted meanwhile: the row cannot exist here
                        log.warning("dropping a shared row that cannot apply", table=table)
                        self._tries.pop((table, key), None)
                        continue
                    self._pending.setdefault((table, key), row)
                await trio.sleep(0.5)  # the token copy travels on the same watch: it is moments behind
                self._wakeup.set()
