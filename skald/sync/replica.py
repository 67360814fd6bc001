"""A local SQLite replica of one document, kept in step by the change feed.

The replica file is a snapshot (SQLite backup API on the server) plus every
change applied in order. Its sync state lives in the file itself, in
``_skald_replica`` (key/value: ``db_id``, ``url``, ``seq``, ``last_error``,
``updated_at``), and ``seq`` is written in the same transaction as the changes
it covers, so a crash at any point resumes exactly where it stopped.
"""

from __future__ import annotations

import base64
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skald.client.aio import ResetRequired
from skald.client.blocking import Client
from skald.client.errors import SkaldClientError
from skald.client.types import Change

STATE_TABLE = "_skald_replica"
RETRYABLE = (0, 500, 502, 503, 504)
PAGE = 1000


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _value(value: Any) -> Any:
    if isinstance(value, dict) and "$base64" in value:
        return base64.b64decode(value["$base64"])
    if isinstance(value, dict) and "$real" in value:  # infinities, which JSON cannot hold
        return float(value["$real"])
    return value


def open_replica(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def read_state(path: Path) -> dict[str, str] | None:
    """The replica's sync state, or None if ``path`` is missing or not a replica."""
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, timeout=30)
    try:
        return dict(conn.execute(f"SELECT key, value FROM {STATE_TABLE}").fetchall())
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def _set_state(conn: sqlite3.Connection, **values: Any) -> None:
    values["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    conn.executemany(
        f"INSERT OR REPLACE INTO {STATE_TABLE} (key, value) VALUES (?, ?)",
        [(k, "" if v is None else str(v)) for k, v in values.items()],
    )


def record_error(path: Path, message: str) -> None:
    """Remember the last error in the replica (best effort: the file may not exist yet)."""
    if read_state(path) is None:
        return
    with contextlib.suppress(sqlite3.Error):
        conn = open_replica(path)
        try:
            _set_state(conn, last_error=message)
        finally:
            conn.close()


def install_snapshot(client: Client, db_id: str, path: Path) -> int:
    """Replace ``path`` with a fresh snapshot of ``db_id``; return its change sequence."""
    tmp = path.with_name(path.name + ".snapshot")
    tmp.unlink(missing_ok=True)
    seq = client.snapshot(db_id, tmp)
    conn = sqlite3.connect(str(tmp), isolation_level=None)
    try:
        conn.execute("BEGIN")
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='trigger' AND name LIKE '_skald_chg_%'"
        ).fetchall():
            conn.execute(f"DROP TRIGGER {_q(name)}")  # the replica must not record its own feed
        conn.execute("DELETE FROM _skald_changes")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        _set_state(conn, db_id=db_id, url=client.url, seq=seq, last_error="")
        conn.execute("COMMIT")
    finally:
        conn.close()
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    os.replace(tmp, path)
    return seq


def apply_change(conn: sqlite3.Connection, change: Change) -> None:
    """Apply one feed entry (inside the caller's transaction)."""
    table, op = _q(change["table"]), change["op"]
    if op == "schema":
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(change["sql"])
        return
    if op == "drop":
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        return
    if "key" in change:
        key = change["key"]
        where = " AND ".join(f"{_q(k)} IS ?" for k in key)
        if op in ("update", "delete"):
            conn.execute(f"DELETE FROM {table} WHERE {where}", [_value(v) for v in key.values()])
        if op in ("insert", "update"):
            row = change["row"]
            cols = ", ".join(_q(c) for c in row)
            marks = ", ".join("?" for _ in row)
            conn.execute(
                f"INSERT OR REPLACE INTO {table} ({cols}) VALUES ({marks})", [_value(v) for v in row.values()]
            )
        return
    rowid = change["rowid"]
    if op == "delete" or (op == "update" and change.get("new_rowid") != rowid):
        conn.execute(f"DELETE FROM {table} WHERE rowid = ?", (rowid,))
    if op in ("insert", "update"):
        row = change["row"]
        new_rowid = change.get("new_rowid", rowid) if op == "update" else rowid
        cols = ", ".join(["rowid", *(_q(c) for c in row)])
        marks = ", ".join("?" for _ in range(len(row) + 1))
        conn.execute(
            f"INSERT OR REPLACE INTO {table} ({cols}) VALUES ({marks})",
            [new_rowid, *(_value(v) for v in row.values())],
        )


def apply_changes(conn: sqlite3.Connection, changes: list[Change]) -> int:
    """Apply ``changes`` and store the last sequence, in one transaction; return the new sequence."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for change in changes:
            apply_change(conn, change)
        seq = changes[-1]["seq"]
        _set_state(conn, seq=seq, last_error="")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return seq


def pull(
    client: Client,
    db_id: str,
    path: Path,
    *,
    follow: bool = False,
    base_delay: float = 0.2,
    max_delay: float = 30.0,
    max_attempts: int | None = None,
    report: Callable[[str], None] = lambda message: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Bring ``path`` up to date with ``db_id`` (snapshot if needed); with ``follow``, keep following.

    Network loss and 5xx answers are retried with exponential backoff (from
    ``base_delay`` doubling to ``max_delay``), resuming from the stored
    sequence; a ``reset`` takes a new snapshot. Other errors (bad token,
    unknown document) are raised, and so is the last retryable one once
    ``max_attempts`` attempts in a row failed (``None``: retry forever).
    Returns the last applied sequence.
    """
    attempt = 0
    while True:
        try:
            return _pull_once(client, db_id, path, follow=follow, report=report, should_stop=should_stop)
        except ResetRequired:
            report("change feed was reset: taking a new snapshot")
            path.unlink(missing_ok=True)
            attempt = 0
        except SkaldClientError as exc:
            if exc.status not in RETRYABLE:
                record_error(path, str(exc))
                raise
            attempt += 1
            record_error(path, str(exc))
            if max_attempts is not None and attempt >= max_attempts:
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1))
            report(f"{exc}; retrying in {delay:.1f}s")
            time.sleep(delay)
            if should_stop():
                state = read_state(path)
                return int(state["seq"]) if state else 0


def _pull_once(
    client: Client,
    db_id: str,
    path: Path,
    *,
    follow: bool,
    report: Callable[[str], None],
    should_stop: Callable[[], bool],
) -> int:
    state = read_state(path)
    if state is None and path.exists() and path.stat().st_size > 0:
        raise SkaldClientError(
            400, "not_a_replica", f"{path} exists and is not a skald replica; not touching it"
        )
    if state is not None and state.get("db_id") != db_id:
        raise SkaldClientError(
            400, "not_a_replica", f"{path} is a replica of {state.get('db_id')}, not {db_id}"
        )
    if state is None:
        seq = install_snapshot(client, db_id, path)
        report(f"snapshot of {db_id} at sequence {seq}")
    else:
        seq = int(state["seq"])
    conn = open_replica(path)
    try:
        while True:  # catch up page by page (one transaction per page)
            page = client.changes(db_id, since=seq, limit=PAGE)
            if page["reset"]:
                raise ResetRequired(410, "reset", "change feed no longer holds this sequence")
            if page["changes"]:
                seq = apply_changes(conn, page["changes"])
            if not page["has_more"]:
                break
        if not follow:
            return seq
        report(f"following {db_id} from sequence {seq}")
        for event in client.follow_changes(db_id, seq, reconnect=False):
            if event.event == "change":
                seq = apply_changes(conn, [event.data])
            if should_stop():
                return seq
        return seq
    finally:
        conn.close()
