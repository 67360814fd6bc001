"""``POST …/query/stream``: one SQL statement per NDJSON line, each acknowledged after its commit.

Each line is ``{"sql": …, "args": …}`` (what ``POST …/query`` takes, without ``options`` or
``fence``). Lines run in order on the document's writer, each as its own group-commit op, so
a line sees every earlier line's effect; a line that fails (SQL error, constraint, scope)
fails alone. The acknowledgement is the statement's result (``columns``, ``rows``,
``changes``, ``last_insert_rowid``, …) or ``{"line": n, "problem": {…}}``. The token needs
``query.read`` for the stream and the action of each line's class (``query.write``,
``query.admin``), checked per line. Lines of one stream that repeat a text share its prepared
statement (:class:`skald.query.service.ReusedTexts` says why that is safe). See
:mod:`skald.http.ndjson`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pydantic import BaseModel, ValidationError

from skald.auth.guard import check_scope
from skald.auth.scopes import Principal, decide
from skald.db.connection import DocConnection
from skald.db.sqlscope import StatementClass
from skald.errors import ScopeDenied, ValidationFailed
from skald.http.ndjson import Ack, Start, Started
from skald.http.state import AppState
from skald.query.service import (
    Limits,
    ReusedTexts,
    Statement,
    StatementResult,
    classify_sync,
    remember_class,
    remembered_class,
    run_statement,
)
from skald.query.values import decode_args

Args = list[Any] | dict[str, Any] | None


class _NeedsScope(ScopeDenied):
    """A line's class needs an action the token lacks (found in the writer thread; audited after)."""

    def __init__(self, cls: StatementClass) -> None:
        super().__init__(f"statement needs {cls.action}", action=cls.action)
        self.cls = cls


class StreamLine(BaseModel, extra="forbid"):
    sql: str
    args: Args = None


@asynccontextmanager
async def open_query_stream(
    state: AppState, db_id: str, principal: Principal, *, path: str, ip: str
) -> AsyncIterator[Start]:
    """Hold ``db_id`` open for the stream; yield the per-line ``start``."""
    limits = Limits.from_request(state.settings, None)
    reuse = ReusedTexts.fresh()  # touched only by the writer thread, one op at a time
    allowed: set[str] = set()  # actions decide() granted this stream's principal (it never changes)
    async with state.supervisor.open_document(db_id) as actor:

        async def start(value: Any) -> Started:
            try:
                line = StreamLine.model_validate(value)
            except ValidationError as exc:
                where = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'line'}: {e['msg']}" for e in exc.errors())
                raise ValidationFailed(where) from None
            stmt = Statement(line.sql, decode_args(line.args))
            known = remembered_class(actor, stmt.sql)
            if known is not None and known > StatementClass.READ and known.action not in allowed:
                # checked now, as POST …/query does; a denial is audited on every line that meets it
                await check_scope(state, principal, db_id, known.action, None, path=path, ip=ip)
                allowed.add(known.action)

            def op(conn: DocConnection) -> tuple[StatementClass, StatementResult]:
                # Not remembered: classified here, on the writer, so an earlier line's DDL (queued
                # just before, maybe not committed yet) is what this line is judged against.
                cls = known if known is not None else classify_sync(conn, stmt)
                if cls.action not in allowed:  # a set shared with the event loop: add/in hold the GIL
                    if not decide(principal, db_id, cls.action).allowed:
                        raise _NeedsScope(cls)
                    allowed.add(cls.action)
                return cls, run_statement(conn, stmt, cls, limits, reuse=reuse)

            generation = actor.schema_generation
            queued = await actor.enqueue_write(op)

            async def wait() -> Ack:
                try:
                    cls, result = await queued.result()
                except _NeedsScope as exc:  # audited and refused like any other scope denial
                    await check_scope(state, principal, db_id, exc.cls.action, None, path=path, ip=ip)
                    raise
                if known is None:
                    # what the writer saw is the committed schema unless a DDL was compiled
                    # meanwhile, and then the generation moved on and this is not kept
                    remember_class(actor, generation, stmt.sql, cls)
                return result.to_json()

            return Started(wait, lambda: queued.done)

        yield start
