"""What the document browser reads: summaries, a table's rows, SQL, and the capability tables.

The service owns its documents: it takes a ``db_id`` and opens the document through the supervisor
(routes never do). A table's rows are read with a generated ``SELECT`` run by
:func:`skald.query.service.run_statement` under the query API's limits (time, rows, bytes), so browsing costs
no more than a query could. Identifiers from the URL are never pasted into SQL: a table or column
name must be one the document's schema lists, and is then quoted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

from skald.db.connection import DocConnection
from skald.db.ids import validate_db_id
from skald.db.sqlscope import StatementClass
from skald.documents.service import inspect_document, list_documents
from skald.errors import DocumentNotFound, NotFound
from skald.http.state import AppState
from skald.query.service import Authorize, Limits, Statement, StatementResult, run_statement

PAGE_SIZE = 50
FILTER_OPS = {"eq": "= ?", "ne": "!= ?", "contains": "LIKE ? ESCAPE '\\'", "gt": "> ?", "lt": "< ?",
              "null": "IS NULL", "notnull": "IS NOT NULL"}
FILTER_LABELS = {"eq": "equals", "ne": "is not", "contains": "contains", "gt": "greater than",
                 "lt": "less than", "null": "is empty (NULL)", "notnull": "is not empty"}
RECENT = 100  # rows shown on the inbox, leases and blobs pages


class TableNotFound(NotFound):
    code = "table_not_found"
    title = "No such table in this document"


@dataclasses.dataclass(frozen=True)
class TableQuery:
    """A table page's view: sort, one column filter, page (from the URL, checked against the schema)."""

    sort: str | None = None
    descending: bool = False
    filter_column: str | None = None
    filter_op: str = "eq"
    filter_value: str = ""
    page: int = 1


@dataclasses.dataclass(frozen=True)
class TablePage:
    table: str
    columns: list[str]
    result: StatementResult
    total: int
    query: TableQuery

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // PAGE_SIZE))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _user_tables(conn: DocConnection) -> list[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
        "AND name NOT LIKE '\\_skald\\_%' ESCAPE '\\' AND name != 'schema_migrations' ORDER BY name"
    ).fetchall()
    return [str(r[0]) for r in rows]


def _columns(conn: DocConnection, table: str) -> list[str]:
    return [str(r[1]) for r in conn.execute(f"PRAGMA table_xinfo({_quote(table)})") if r[6] in (0, 2, 3)]


class DocumentBrowser:
    """Read-side views of documents for the web pages; every method opens the document it names."""

    def __init__(self, state: AppState) -> None:
        self._state = state

    def _limits(self, max_rows: int | None = None) -> Limits:
        options = {"max_rows": max_rows} if max_rows is not None else None
        return Limits.from_request(self._state.settings, options)

    def _check(self, db_id: str) -> None:
        validate_db_id(db_id)
        if not self._state.supervisor.exists(db_id):
            raise DocumentNotFound(f"document {db_id} does not exist")

    def document_ids(self) -> list[str]:
        return [d["db_id"] for d in list_documents(self._state.supervisor)]

    async def summary(self, db_id: str) -> dict[str, Any]:
        """Size, schema version and tables (as ``GET /api/v1/db/{db_id}`` reports them)."""
        self._check(db_id)
        return await inspect_document(self._state.supervisor, db_id)

    async def table_page(self, db_id: str, table: str, view: TableQuery) -> TablePage:
        """One page of ``table``'s rows, sorted and filtered as ``view`` says (unknown names: ignored)."""
        self._check(db_id)
        limits = self._limits(PAGE_SIZE)

        def read(conn: DocConnection) -> TablePage:
            if table not in _user_tables(conn):
                raise TableNotFound(f"{db_id} has no table {table!r}")
            columns = _columns(conn, table)
            where, params = "", []
            if view.filter_column in columns and view.filter_op in FILTER_OPS:
                where = f" WHERE {_quote(view.filter_column)} {FILTER_OPS[view.filter_op]}"
                if view.filter_op == "contains":
                    escaped = view.filter_value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                    params.append(f"%{escaped}%")
                elif "?" in FILTER_OPS[view.filter_op]:
                    params.append(view.filter_value)
            order = ""
            if view.sort in columns:
                order = f" ORDER BY {_quote(view.sort)}{' DESC' if view.descending else ''}"
            offset = (max(1, view.page) - 1) * PAGE_SIZE
            count_stmt = Statement(f"SELECT count(*) FROM {_quote(table)}{where}", tuple(params))
            total_result = run_statement(conn, count_stmt, StatementClass.READ, limits)
            total = int(total_result.rows[0][0]) if total_result.rows else 0
            select = Statement(
                f"SELECT * FROM {_quote(table)}{where}{order} LIMIT {PAGE_SIZE} OFFSET {offset}", tuple(params)
            )
            result = run_statement(conn, select, StatementClass.READ, limits)
            return TablePage(table, result.columns or columns, result, total, view)

        async with self._state.supervisor.open_document(db_id) as actor:
            page: TablePage = await actor.read(read)
        return page

    async def run(self, db_id: str, sql: str, authorize: Authorize) -> tuple[StatementClass, StatementResult]:
        """Run ``sql`` as the query API does (:class:`~skald.query.service.QueryService`, same limits):
        ``authorize`` sees the statement's class first and refuses it by raising."""
        self._check(db_id)
        return await self._state.query.run(db_id, Statement(sql, ()), self._limits(), authorize)

    async def inbox(self, db_id: str, endpoint: str | None) -> list[dict[str, Any]]:
        """The newest webhook deliveries (all endpoints, or one), body shown as text where it is text."""
        self._check(db_id)

        def read(conn: DocConnection) -> list[dict[str, Any]]:
            sql = ("SELECT id, endpoint, delivery_id, method, content_type, body, received_at, verified, "
                   "query_string, headers FROM webhook_inbox")
            params: tuple[Any, ...] = ()
            if endpoint:
                sql += " WHERE endpoint = ?"
                params = (endpoint,)
            rows = conn.execute(sql + f" ORDER BY id DESC LIMIT {RECENT}", params).fetchall()
            return [
                {"id": r[0], "endpoint": r[1], "delivery_id": r[2], "method": r[3], "content_type": r[4],
                 "body": _text_preview(r[5]), "received_at": r[6], "verified": r[7], "query": r[8],
                 "headers": json.loads(r[9])}
                for r in rows
            ]

        async with self._state.supervisor.open_document(db_id) as actor:
            return await actor.read(read)

    async def leases(self, db_id: str) -> list[dict[str, Any]]:
        """Leases not yet expired by the lease clock (their tokens are never shown: only hashes exist)."""
        self._check(db_id)
        now_ms = self._state.leases.clock.now_ms()

        def read(conn: DocConnection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT resource, owner, fence, ttl_seconds, acquired_at_ms, expires_at_ms FROM _skald_leases "
                f"WHERE expires_at_ms > ? ORDER BY resource LIMIT {RECENT}", (now_ms,)
            ).fetchall()
            return [
                {"resource": r[0], "owner": r[1], "fence": r[2], "ttl_seconds": r[3],
                 "acquired_at": _iso_ms(r[4]), "expires_at": _iso_ms(r[5])}
                for r in rows
            ]

        async with self._state.supervisor.open_document(db_id) as actor:
            return await actor.read(read)

    async def blobs(self, db_id: str) -> list[dict[str, Any]]:
        """The blobs this document references, each with its references (the object's size from the service db)."""
        self._check(db_id)

        def read(conn: DocConnection) -> list[tuple[str, str, str]]:
            return [
                (str(r[0]), str(r[1]), str(r[2]))
                for r in conn.execute(
                    f"SELECT sha256, ref, claimed_at FROM _skald_blobs ORDER BY sha256, ref LIMIT {RECENT * 10}"
                )
            ]

        async with self._state.supervisor.open_document(db_id) as actor:
            refs = await actor.read(read)
        hashes = sorted({sha for sha, _, _ in refs})

        def sizes(conn: DocConnection) -> dict[str, int]:
            if not hashes:
                return {}
            marks = ",".join("?" * len(hashes))
            rows = conn.execute(f"SELECT sha256, size FROM blob_objects WHERE sha256 IN ({marks})", hashes)
            return {str(r[0]): int(r[1]) for r in rows}

        known = await self._state.supervisor.service.read(sizes)
        grouped: dict[str, dict[str, Any]] = {}
        for sha, ref, claimed_at in refs:
            entry = grouped.setdefault(sha, {"sha256": sha, "size": known.get(sha), "refs": []})
            entry["refs"].append({"ref": ref, "claimed_at": claimed_at})
        return list(grouped.values())[:RECENT]


def _text_preview(body: bytes | str | None, limit: int = 2000) -> str:
    if body is None:
        return ""
    if isinstance(body, str):
        return body[:limit]
    try:
        return body[:limit].decode("utf-8")
    except UnicodeDecodeError:
        return f"({len(body)} bytes of binary data)"


def _iso_ms(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
