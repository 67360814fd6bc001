"""One Hrana stream on one document: its statements in order, its transaction, its stored SQL.

Outside a transaction each statement is one ``/query`` statement: classified by SQLite's
authorizer (:func:`skald.query.service.classify`), authorized by class (``query.write`` /
``query.admin``), run on the read pool or in the next group commit, so it reaches query
watches, the change feed and capability guards exactly as ``/query`` does. ``BEGIN`` borrows
the document's writer (:meth:`DocumentActor.lend_writer`) for this stream alone: the
statements up to ``COMMIT`` run on it, each classified and authorized the same way, under
the same sandbox and limits; the actor rolls the transaction back and frees the writer when it
outlives ``libsql_transaction_timeout_seconds``. ``BEGIN TRANSACTION READONLY`` (libSQL's read
mode) borrows a read-only connection instead: one snapshot, reads only.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from skald.auth.scopes import Principal, decide
from skald.db.actor import DocumentActor, LoanEnded, ReaderLoan, WriterLoan
from skald.db.connection import DocConnection
from skald.db.sqlscope import StatementClass
from skald.errors import ScopeDenied, SkaldError
from skald.libsql import protocol
from skald.libsql.errors import (
    HranaProtocolError,
    ReadOnlyTransaction,
    ResultTooLarge,
    SqlNotFound,
    TransactionStatementRefused,
)
from skald.libsql.protocol import Json, Stmt
from skald.libsql.sqltext import TxnStatement, parameters, split_statements, transaction_statement
from skald.query.service import Limits, Statement, StatementResult, classify, classify_sync, run_statement

Authorize = Callable[[str], Awaitable[None]]
"""Raise :class:`skald.errors.ScopeDenied` (audited) unless the stream's token may do this action."""

MAX_STORED_SQL = 256


class SqlStore:
    """``store_sql`` texts: per stream over HTTP, per connection over WebSocket (bounded)."""

    def __init__(self) -> None:
        self._texts: dict[int, str] = {}

    def store(self, sql_id: int, sql: str) -> None:
        if sql_id not in self._texts and len(self._texts) >= MAX_STORED_SQL:
            raise HranaProtocolError(f"at most {MAX_STORED_SQL} stored SQL texts")
        self._texts[sql_id] = sql

    def close(self, sql_id: int) -> None:
        self._texts.pop(sql_id, None)

    def get(self, sql_id: int) -> str:
        try:
            return self._texts[sql_id]
        except KeyError:
            raise SqlNotFound(f"no SQL text is stored under sql_id {sql_id}") from None


class HranaStream:
    """The state of one stream. Requests on it must not overlap (HTTP batons and the WebSocket
    dispatcher serialize them)."""

    def __init__(
        self,
        actor: DocumentActor,
        principal: Principal,
        authorize: Authorize,
        limits: Limits,
        transaction_seconds: float,
        sqls: SqlStore | None = None,
        on_read_transaction: Callable[[], None] | None = None,
    ) -> None:
        self.actor = actor
        self.principal = principal
        self._authorize = authorize
        self.limits = limits
        self._transaction_seconds = transaction_seconds
        self.sqls = sqls or SqlStore()
        self._writer: WriterLoan | None = None
        self._reader: ReaderLoan | None = None
        self.reader_deadline = float("inf")
        self._on_read_transaction = on_read_transaction
        self.closed = False

    # ---- state -------------------------------------------------------------------------------

    @property
    def is_autocommit(self) -> bool:
        """SQLite's view: no transaction is open on this stream's behalf."""
        return (self._writer is None or not self._writer.active) and self._reader is None

    def _live_writer(self) -> WriterLoan | None:
        """The writer loan of the open transaction, or ``None`` in autocommit.

        A transaction the actor took back (timeout, shutdown) stays an error on this stream
        until the client ends it with ``COMMIT`` or ``ROLLBACK``: running the client's next
        statements in autocommit would commit what it meant to be one transaction piecemeal.
        One that SQLite itself ended (``RAISE(ROLLBACK)``) leaves the stream in autocommit, as
        SQLite does.
        """
        writer = self._writer
        if writer is None or writer.active:
            return writer
        if writer.end_reason in ("timeout", "closing"):
            raise LoanEnded(f"the transaction was rolled back ({writer.end_reason}); send ROLLBACK")
        self._writer = None
        return None

    async def aclose(self) -> None:
        """End the stream: roll back its transaction and give back what it borrowed."""
        self.closed = True
        with trio.CancelScope(shield=True):
            await self._end_transaction()

    async def _end_transaction(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.discard_pending()
            writer.end("stream closed")
        reader, self._reader = self._reader, None
        if reader is not None:
            self.reader_deadline = float("inf")
            await reader.aclose()

    async def expire_reader(self, now: float) -> None:
        """Roll back a read transaction past its deadline (the service's reaper calls this)."""
        if self._reader is not None and now >= self.reader_deadline:
            await self._end_transaction()

    # ---- requests ------------------------------------------------------------------------------

    def resolve(self, stmt: Stmt) -> str:
        return stmt.sql if stmt.sql is not None else self.sqls.get(stmt.sql_id or 0)

    async def execute(self, stmt: Stmt, sql: str | None = None) -> Json:
        """Run one statement; its ``StmtResult``. Raises a :class:`SkaldError` for a failed statement."""
        started = time.perf_counter()
        text = sql if sql is not None else self.resolve(stmt)
        control = transaction_statement(text)
        if control is not None:
            await self._control(control)
            return _stmt_result(None, started)
        statement = Statement(text, stmt.params)
        result = await self._run(statement)
        if result.truncated:
            raise ResultTooLarge(
                f"the result has more than {self.limits.max_rows} rows or {self.limits.max_bytes} bytes; "
                "add LIMIT/OFFSET (Hrana has no way to say a result was cut short)"
            )
        return _stmt_result(result, started, stmt.want_rows)

    async def _run(self, stmt: Statement) -> StatementResult:
        limits = self.limits
        encode = protocol.encode_value
        if self._reader is not None:
            reader = self._reader
            cls = await reader.run(lambda conn: classify_sync(conn, stmt))
            if cls > StatementClass.READ:
                raise ReadOnlyTransaction(f"this statement needs {cls.action}; the transaction is read-only")
            return await reader.run(lambda conn: run_statement(conn, stmt, cls, limits, encode=encode))
        writer = self._live_writer()
        if writer is not None:
            cls = await writer.run(lambda conn: classify_sync(conn, stmt), statement=False)
            await self._authorize_class(cls)
            return await writer.run(lambda conn: run_statement(conn, stmt, cls, limits, encode=encode))
        if _WRITE_START.match(stmt.sql):
            return await self._classify_and_write(stmt)
        cls = await classify(self.actor, stmt)
        await self._authorize_class(cls)
        if cls == StatementClass.READ:
            return await self.actor.read(lambda conn: run_statement(conn, stmt, cls, limits, encode=encode))

        def op(conn: DocConnection) -> StatementResult:
            return run_statement(conn, stmt, cls, limits, encode=encode)

        return await self.actor.write(op)

    async def _classify_and_write(self, stmt: Statement) -> StatementResult:
        """A statement that looks like a write: classified, authorized and run in one group-commit op.

        The same classification and the same decision as the two-step path (``classify_sync`` and
        :func:`skald.auth.scopes.decide`), without the trip to a read connection first: one thread
        hop per write instead of two. A refusal fails the op alone (nothing ran) and is then raised,
        and audited, by the stream's normal scope check. Whatever the statement turns out to be
        (the first word is only a hint), it runs under the class SQLite's authorizer gave it.
        """
        limits, encode = self.limits, protocol.encode_value
        principal, db_id = self.principal, self.actor.db_id

        def op(conn: DocConnection) -> StatementResult:
            cls = classify_sync(conn, stmt)
            if cls > StatementClass.READ and not decide(principal, db_id, cls.action).allowed:
                raise _Refused(cls.action)
            return run_statement(conn, stmt, cls, limits, encode=encode)

        try:
            return await self.actor.write(op)
        except _Refused as refused:
            await self._authorize(refused.action)  # audits the denial and raises ScopeDenied
            raise ScopeDenied(f"no scope grants {refused.action}", action=refused.action) from None

    async def _authorize_class(self, cls: StatementClass) -> None:
        if cls > StatementClass.READ:
            await self._authorize(cls.action)

    async def _control(self, control: TxnStatement) -> None:
        stale = self._writer
        if stale is not None and not stale.active:
            self._writer = None
            taken_back = stale.end_reason in ("timeout", "closing")
            if taken_back and control is TxnStatement.COMMIT:
                raise LoanEnded(f"the transaction was rolled back ({stale.end_reason}), not committed")
            if taken_back and control is TxnStatement.ROLLBACK:
                return  # the actor rolled it back already
        if control is TxnStatement.BEGIN_WRITE:
            if not self.is_autocommit:
                raise TransactionStatementRefused("cannot start a transaction within a transaction")
            # Holding the writer is a write: a read-only token cannot take it from everyone else.
            await self._authorize("query.write")
            loan = await self.actor.lend_writer(self._transaction_seconds)
            try:
                await loan.run(lambda conn: conn.execute("BEGIN IMMEDIATE"), statement=False)
            except BaseException:
                loan.end("begin failed")
                raise
            self._writer = loan
        elif control is TxnStatement.BEGIN_READ:
            if not self.is_autocommit:
                raise TransactionStatementRefused("cannot start a transaction within a transaction")
            reader = await self.actor.lend_reader()
            try:
                await reader.run(_begin_read)
            except BaseException:
                await reader.aclose()
                raise
            self._reader = reader
            self.reader_deadline = trio.current_time() + self._transaction_seconds
            if self._on_read_transaction is not None:
                self._on_read_transaction()  # the service's reaper enforces the deadline
        elif self.is_autocommit:
            raise TransactionStatementRefused(
                f"cannot {control.value}: no transaction is active", sqlite_error="SQLITE_ERROR"
            )
        elif self._reader is not None:
            await self._end_transaction()  # COMMIT or ROLLBACK of a read snapshot: the same
        else:
            writer = self._writer
            assert writer is not None
            if control is TxnStatement.COMMIT:
                await writer.run(lambda conn: conn.execute("COMMIT"), statement=False)
                self._writer = None
                await writer.confirm_commit()  # the cluster's gate, as for a group commit
            else:
                writer.discard_pending()
                await writer.run(lambda conn: conn.execute("ROLLBACK"), statement=False)
            self._writer = None

    async def batch(self, steps: list[protocol.Step]) -> Json:
        """Run a batch's steps in order under their conditions; its ``BatchResult``."""
        ok: list[bool | None] = []
        results: list[Json] = []
        errors: list[Json] = []
        for step in steps:
            if step.condition is not None and not protocol.evaluate(step.condition, ok, lambda: self.is_autocommit):
                ok.append(None)
                results.append(None)
                errors.append(None)
                continue
            try:
                results.append(await self.execute(step.stmt))
            except SkaldError as exc:
                ok.append(False)
                results.append(None)
                errors.append(protocol.error_json(exc))
            else:
                ok.append(True)
                errors.append(None)
        return {"step_results": results, "step_errors": errors}

    async def sequence(self, sql: str) -> None:
        """Run every statement of ``sql`` in order, without results; stops at the first error."""
        for piece in split_statements(sql):
            await self.execute(Stmt(piece, None, (), want_rows=False), piece)

    async def describe(self, sql: str) -> Json:
        """Parameters, result columns and whether ``sql`` is read-only (see docs/libsql.md)."""
        names = parameters(sql)
        params: tuple[Any, ...] | dict[str, Any]
        # Bind every parameter to NULL: by name when all have one (sqlite3 wants a mapping then), else
        # by position (a statement mixing `?` and `:a`).
        if names and all(name is not None and name[0] in ":@$" for name in names):
            params = {name[1:]: None for name in names if name is not None}
        else:
            params = (None,) * len(names)
        is_explain = sql.lstrip()[:7].upper() == "EXPLAIN"
        stmt = Statement(sql, params)
        if transaction_statement(sql) is not None:
            return {"params": [], "cols": [], "is_explain": False, "is_readonly": False}
        cls = await classify(self.actor, stmt)
        cols: list[Json] = []
        if cls == StatementClass.READ:
            # Python's sqlite3 names result columns only once a statement runs: run it on a read
            # connection, with every parameter NULL and no row fetched.
            limits = Limits(self.limits.timeout_ms, 0, self.limits.max_bytes, self.limits.max_value_bytes)
            result = await self.actor.read(lambda conn: run_statement(conn, stmt, cls, limits))
            cols = [{"name": name, "decltype": None} for name in result.columns]
        return {
            "params": [{"name": name} for name in names],
            "cols": cols,
            "is_explain": is_explain,
            "is_readonly": cls == StatementClass.READ,
        }

    async def handle(self, request: Json) -> Json:
        """One stream request (the part HTTP and WebSocket share); its response object."""
        if not isinstance(request, dict):
            raise HranaProtocolError("a request must be an object")
        kind = request.get("type")
        if kind == "execute":
            return {"type": "execute", "result": await self.execute(protocol.decode_stmt(request.get("stmt")))}
        if kind == "batch":
            return {"type": "batch", "result": await self.batch(protocol.decode_batch(request.get("batch")))}
        if kind == "sequence":
            await self.sequence(self._text_of(request))
            return {"type": "sequence"}
        if kind == "describe":
            return {"type": "describe", "result": await self.describe(self._text_of(request))}
        if kind == "store_sql":
            sql_id, sql = request.get("sql_id"), request.get("sql")
            if isinstance(sql_id, bool) or not isinstance(sql_id, int) or not isinstance(sql, str):
                raise HranaProtocolError("store_sql needs an integer sql_id and a string sql")
            self.sqls.store(sql_id, sql)
            return {"type": "store_sql"}
        if kind == "close_sql":
            sql_id = request.get("sql_id")
            if isinstance(sql_id, bool) or not isinstance(sql_id, int):
                raise HranaProtocolError("close_sql needs an integer sql_id")
            self.sqls.close(sql_id)
            return {"type": "close_sql"}
        if kind == "get_autocommit":
            return {"type": "get_autocommit", "is_autocommit": self.is_autocommit}
        raise HranaProtocolError(f"unknown request type {str(kind)[:40]!r}")

    def _text_of(self, request: Json) -> str:
        sql, sql_id = request.get("sql"), request.get("sql_id")
        if isinstance(sql, str) and sql_id is None:
            return sql
        if sql is None and isinstance(sql_id, int) and not isinstance(sql_id, bool):
            return self.sqls.get(sql_id)
        raise HranaProtocolError("a request needs exactly one of sql and sql_id")


_WRITE_START = re.compile(r"\s*(?:INSERT|UPDATE|DELETE|REPLACE|UPSERT)\b", re.I)


class _Refused(Exception):
    """Inside a write op: the token may not run this class of statement (re-raised as ScopeDenied)."""

    def __init__(self, action: str) -> None:
        super().__init__(action)
        self.action = action


def _begin_read(conn: DocConnection) -> None:
    conn.execute("BEGIN")
    conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # take the snapshot now


def _stmt_result(result: StatementResult | None, started: float, want_rows: bool = True) -> Json:
    duration = round((time.perf_counter() - started) * 1000, 3)
    if result is None:
        return {
            "cols": [], "rows": [], "affected_row_count": 0, "last_insert_rowid": None,
            "rows_read": 0, "rows_written": 0, "query_duration_ms": duration,
        }
    rowid = result.last_insert_rowid
    return {
        "cols": [{"name": name, "decltype": None} for name in result.columns],
        "rows": result.rows if want_rows else [],
        "affected_row_count": result.changes,
        "last_insert_rowid": None if rowid is None else str(rowid),
        "rows_read": len(result.rows),
        "rows_written": result.changes,
        "query_duration_ms": duration,
    }


__all__ = ["HranaStream", "LoanEnded", "SqlStore"]
