"""The change feed: generated triggers that record every row change in ``_skald_changes``.

Runs in the writer thread. :func:`sync_triggers` is installed as an actor
write hook: after each write op it compares ``PRAGMA schema_version`` with the
last value it saw on that connection and, only when the schema moved,
(re)generates the ``AFTER INSERT/UPDATE/DELETE`` triggers of every replicated
table. A table whose triggers are (re)created gets a ``schema`` change with its
``CREATE`` statement followed by an ``insert`` of every current row, so rows
written in the same op that created or altered the table are never lost.
A dropped table gets a ``drop`` change.

Values are JSON; BLOBs are ``{"$hex": "..."}`` inside SQLite (it has no base64)
and REALs go through ``quote()`` so they round-trip exactly.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from typing import Any

TRIGGER_PREFIX = "_skald_chg_"
# Capability tables that are replicated although they carry the capability prefix.
INCLUDED_CAPABILITY_TABLES = frozenset({"_skald_messages", "_skald_webhook_inbox", "webhook_inbox"})
EXCLUDED_PREFIXES = ("_skald_", "sqlite_")
EXCLUDED_TABLES = frozenset({"schema_migrations"})
DEFAULT_RETENTION = 100_000
_PRUNE_EVERY = 500
_OURS = "name LIKE '\\_skald\\_chg\\_%' ESCAPE '\\'"


def is_replicated(name: str) -> bool:
    """Whether changes to table ``name`` go to the feed."""
    if name in INCLUDED_CAPABILITY_TABLES:
        return True
    return name not in EXCLUDED_TABLES and not name.startswith(EXCLUDED_PREFIXES)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _value(ref: str) -> str:
    return (
        f"CASE typeof({ref}) WHEN 'blob' THEN json_object('$hex', hex({ref})) "
        f"WHEN 'real' THEN CASE WHEN abs({ref}) > 1.7976931348623157e308 "
        f"THEN json_object('$real', quote({ref})) ELSE json(quote({ref})) END ELSE {ref} END"
    )


_PAIRS = 60  # SQLite functions take at most 127 arguments: wide tables are built in slices


def _row_expr(alias: str, columns: list[str]) -> str:
    head, rest = columns[:_PAIRS], columns[_PAIRS:]
    expr = "json_object(" + ", ".join(f"{_lit(c)}, {_value(f'{alias}.{_q(c)}')}" for c in head) + ")"
    for start in range(0, len(rest), _PAIRS):
        pairs = ", ".join(
            f"{_lit(_json_path(c))}, {_value(f'{alias}.{_q(c)}')}" for c in rest[start : start + _PAIRS]
        )
        expr = f"json_insert({expr}, {pairs})"
    return expr


def _json_path(column: str) -> str:
    return '$."' + column.replace('"', '\\"') + '"'


def replicated_tables(conn: sqlite3.Connection) -> dict[str, str]:
    """Replicated tables: name -> CREATE sql (virtual tables and their shadow tables excluded)."""
    rows = conn.execute("SELECT name, sql FROM main.sqlite_master WHERE type = 'table'").fetchall()
    virtual = [name for name, sql in rows if (sql or "").upper().startswith("CREATE VIRTUAL")]
    found: dict[str, str] = {}
    for name, sql in rows:
        if not is_replicated(name) or name in virtual or any(name.startswith(v + "_") for v in virtual):
            continue
        found[name] = sql
    return found


def _table_shape(conn: sqlite3.Connection, table: str) -> tuple[list[str], list[str], bool]:
    """(stored columns, primary key columns, without_rowid)."""
    info = conn.execute(f"PRAGMA main.table_xinfo({_q(table)})").fetchall()
    columns = [r[1] for r in info if r[6] == 0]  # hidden != 0: generated or virtual-table columns
    pk = [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
    return columns, pk, not _has_rowid(conn, table)


def _has_rowid(conn: sqlite3.Connection, table: str) -> bool:
    try:
        conn.execute(f"SELECT rowid FROM main.{_q(table)} LIMIT 0")
    except sqlite3.OperationalError:
        return False
    return True


def _create_triggers(conn: sqlite3.Connection, table: str) -> None:
    columns, pk, without_rowid = _table_shape(conn, table)
    t, lit = _q(table), _lit(table)
    insert = "INSERT INTO _skald_changes (tbl, op, rowid_old, rowid_new, pk_json, row_json)"
    if without_rowid:
        new_row = _row_expr("NEW", columns)
        ins = f"{insert} VALUES ({lit}, 'insert', NULL, NULL, {_row_expr('NEW', pk)}, {new_row})"
        upd = f"{insert} VALUES ({lit}, 'update', NULL, NULL, {_row_expr('OLD', pk)}, {new_row})"
        dele = f"{insert} VALUES ({lit}, 'delete', NULL, NULL, {_row_expr('OLD', pk)}, NULL)"
    else:
        ins = f"{insert} VALUES ({lit}, 'insert', NEW.rowid, NEW.rowid, NULL, {_row_expr('NEW', columns)})"
        upd = f"{insert} VALUES ({lit}, 'update', OLD.rowid, NEW.rowid, NULL, {_row_expr('NEW', columns)})"
        dele = f"{insert} VALUES ({lit}, 'delete', OLD.rowid, NULL, NULL, NULL)"
    for op, body in (("insert", ins), ("update", upd), ("delete", dele)):
        name = _q(f"{TRIGGER_PREFIX}{table}_{op}")
        conn.execute(f"CREATE TRIGGER main.{name} AFTER {op.upper()} ON {t} BEGIN {body}; END")
    # Record the table as it is now and every current row (rows written before the triggers existed).
    sql = conn.execute(
        "SELECT sql FROM main.sqlite_master WHERE type='table' AND name=?", (table,)
    ).fetchone()[0]
    conn.execute("INSERT INTO _skald_changes (tbl, op, sql) VALUES (?, 'schema', ?)", (table, sql))
    if without_rowid:
        conn.execute(
            f"{insert} SELECT {lit}, 'insert', NULL, NULL, {_row_expr('r', pk)}, {_row_expr('r', columns)}"
            f" FROM main.{t} AS r"
        )
    else:
        conn.execute(
            f"{insert} SELECT {lit}, 'insert', r.rowid, r.rowid, NULL, {_row_expr('r', columns)}"
            f" FROM main.{t} AS r"
        )
    conn.execute("INSERT OR REPLACE INTO _skald_change_tables (tbl, sql) VALUES (?, ?)", (table, sql))


def sync_triggers(conn: sqlite3.Connection, *, retention: int = DEFAULT_RETENTION) -> None:
    """Keep the change triggers in step with the schema (cheap when nothing changed).

    Call inside a write transaction. Also prunes the feed to ``retention``
    changes every few hundred calls.
    """
    version = conn.execute("PRAGMA schema_version").fetchone()[0]
    state: dict[str, int] = conn.__dict__.setdefault("_skald_changefeed", {"version": -1, "ops": 0})
    state["ops"] += 1
    if state["ops"] % _PRUNE_EVERY == 0:
        prune(conn, retention)
    if version == state["version"]:
        return
    tables = replicated_tables(conn)
    known = dict(conn.execute("SELECT tbl, sql FROM _skald_change_tables").fetchall())
    ours = {
        name: tbl
        for name, tbl in conn.execute(
            "SELECT name, tbl_name FROM main.sqlite_master WHERE type='trigger' AND " + _OURS
        ).fetchall()
    }
    for name, tbl in ours.items():
        # Triggers follow a renamed table but keep their old name; regenerate those.
        stale = (
            tbl not in tables
            or known.get(tbl) != tables[tbl]
            or not name.startswith(f"{TRIGGER_PREFIX}{tbl}_")
        )
        if stale:
            conn.execute(f"DROP TRIGGER IF EXISTS main.{_q(name)}")
    for table in sorted(set(known) - set(tables)):
        conn.execute("INSERT INTO _skald_changes (tbl, op) VALUES (?, 'drop')", (table,))
        conn.execute("DELETE FROM _skald_change_tables WHERE tbl = ?", (table,))
    have = {
        r[0]
        for r in conn.execute("SELECT tbl_name FROM main.sqlite_master WHERE type='trigger' AND " + _OURS)
    }
    for table, sql in sorted(tables.items()):
        if known.get(table) != sql or table not in have:
            for op in ("insert", "update", "delete"):
                conn.execute(f"DROP TRIGGER IF EXISTS main.{_q(f'{TRIGGER_PREFIX}{table}_{op}')}")
            _create_triggers(conn, table)
    state["version"] = conn.execute("PRAGMA schema_version").fetchone()[0]


def prune(conn: sqlite3.Connection, retention: int) -> None:
    """Delete all but the newest ``retention`` changes; remember how far the feed was pruned."""
    top = last_seq(conn)
    cut = top - retention
    if cut <= pruned_through(conn):
        return
    conn.execute("DELETE FROM _skald_changes WHERE seq <= ?", (cut,))
    conn.execute("UPDATE _skald_meta SET value = ? WHERE key = 'changes_pruned_through'", (str(cut),))


def last_seq(conn: sqlite3.Connection) -> int:
    """The highest sequence ever assigned (0 for an empty feed)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = '_skald_changes'").fetchone()
    return int(row[0]) if row else 0


def pruned_through(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM _skald_meta WHERE key = 'changes_pruned_through'").fetchone()
    return int(row[0]) if row else 0


def _decode_values(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict) and "$hex" in value:
            value = {"$base64": base64.b64encode(bytes.fromhex(value["$hex"])).decode()}
        out[key] = value
    return out


def read_changes(conn: sqlite3.Connection, since: int, limit: int) -> dict[str, Any]:
    """One page of the feed after ``since``: ``{"changes": [...], "last_seq": N, "reset": bool}``.

    ``reset`` is true (and ``changes`` empty) when ``since`` is older than the
    retained feed or newer than anything this document ever recorded (the
    document was recreated): the client must take a new snapshot.
    """
    top = last_seq(conn)
    if since < pruned_through(conn) or since > top:
        return {"changes": [], "last_seq": top, "reset": True}
    rows = conn.execute(
        "SELECT seq, tbl, op, rowid_old, rowid_new, pk_json, row_json, sql FROM _skald_changes"
        " WHERE seq > ? ORDER BY seq LIMIT ?",
        (since, limit),
    ).fetchall()
    changes = []
    for seq, tbl, op, rowid_old, rowid_new, pk_json, row_json, sql in rows:
        change: dict[str, Any] = {"seq": seq, "table": tbl, "op": op}
        if op in ("insert", "update", "delete"):
            if pk_json is None:
                change["rowid"] = rowid_old
                if op == "update":
                    change["new_rowid"] = rowid_new
            else:
                change["key"] = _decode_values(json.loads(pk_json))
            if row_json is not None:
                change["row"] = _decode_values(json.loads(row_json))
        elif op == "schema":
            change["sql"] = sql
        changes.append(change)
    return {"changes": changes, "last_seq": top, "reset": False}
