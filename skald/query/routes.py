"""Query API: ``POST /api/v1/db/{db_id}/query``, ``/query/batch`` and ``/query/watch`` (SSE).

Routes parse, authorize and render; :mod:`skald.query.service` and :mod:`skald.query.watch`
do the work. Every route needs at least ``query.read``; the statement's class
(decided by SQLite's authorizer) then decides whether ``query.write`` or
``query.admin`` is needed too.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from pydantic import BaseModel, Field
from quart import Response, request
from quart_schema import validate_request
from quart_trio import QuartTrio

from skald.auth.guard import authorize, current_principal, requires
from skald.db.connection import DocConnection
from skald.db.ids import validate_db_id
from skald.db.sqlscope import StatementClass
from skald.errors import DocumentNotFound
from skald.http.context import request_ip
from skald.http.export import export_response, negotiate
from skald.http.ndjson import AckStream, ndjson_response
from skald.http.params import HEARTBEAT_MAX_SECONDS, HEARTBEAT_MIN_SECONDS
from skald.http.sse import sse_response
from skald.http.state import AppState, get_state
from skald.query.ingest import open_query_stream
from skald.query.metrics import QueryMetrics
from skald.query.service import Authorize, Guard, Limits, NotReadOnly, QueryService, Statement
from skald.query.values import decode_args
from skald.query.watch import QueryWatch, WatchHub

Args = list[Any] | dict[str, Any] | None


class QueryOptions(BaseModel):
    max_rows: int | None = Field(default=None, ge=0, description="lower the server's row cap")
    timeout_ms: int | None = Field(default=None, ge=1, description="lower the server's time limit")
    read_only: bool = Field(
        default=False,
        description="refuse (400 not_read_only) a statement that would write, by the server's classification",
    )


class FenceBody(BaseModel):
    resource: str = Field(min_length=1, description="the leased resource")
    token: int | str = Field(description="the fence number the writer holds")


class QueryBody(BaseModel):
    sql: str = Field(description="exactly one SQL statement")
    args: Args = Field(default=None, description="positional list or named object; see docs/query.md")
    options: QueryOptions | None = None
    fence: FenceBody | None = Field(default=None, description="refuse the write (409 stale_fence) unless current")


class BatchStatement(BaseModel):
    sql: str
    args: Args = None


class BatchBody(BaseModel):
    statements: list[BatchStatement] = Field(min_length=1, max_length=1000)
    options: QueryOptions | None = None
    fence: FenceBody | None = None


class WatchOptions(QueryOptions):
    heartbeat_seconds: float | None = Field(default=None, ge=HEARTBEAT_MIN_SECONDS, le=HEARTBEAT_MAX_SECONDS)
    result_hash: str | None = Field(default=None, description="hash the client already has")


class WatchBody(BaseModel):
    sql: str
    args: Args = None
    options: WatchOptions | None = None


def install(app: QuartTrio, state: AppState) -> None:
    state.query = QueryService(state.supervisor)
    state.query_watch_hub = WatchHub()
    state.query_metrics = QueryMetrics(state.metrics.registry)
    app.add_url_rule("/api/v1/db/<db_id>/query", view_func=query_view, methods=["POST"])
    app.add_url_rule("/api/v1/db/<db_id>/query/batch", view_func=batch_view, methods=["POST"])
    app.add_url_rule("/api/v1/db/<db_id>/query/watch", view_func=watch_view, methods=["POST"])
    app.add_url_rule("/api/v1/db/<db_id>/query/stream", view_func=query_stream_view, methods=["POST"])


def _limits(options: QueryOptions | None) -> Limits:
    return Limits.from_request(get_state().settings, options.model_dump() if options else None)


def _authorizer(db_id: str, options: QueryOptions | None = None) -> Authorize:
    """Require the action the statement's class needs (``query.read`` was checked by the route).

    With ``options.read_only`` a statement that would write is refused before anything runs: clients
    (the CLI's write guard) ask the server's classification instead of guessing from the SQL text.
    """
    principal = current_principal()
    read_only = options is not None and options.read_only

    async def check(cls: StatementClass) -> None:
        if read_only and cls in (StatementClass.WRITE, StatementClass.ADMIN):
            raise NotReadOnly(f"this statement writes (it needs {cls.action}) and read_only was asked")
        if cls > StatementClass.READ:
            await authorize(principal, db_id, cls.action)

    return check


def _service() -> QueryService:
    service: QueryService = get_state().query
    return service


def _fence_guard(fence: FenceBody | None) -> Guard | None:
    """The lease fence check, run inside the same transaction as the write it guards."""
    if fence is None:
        return None
    leases = get_state().leases
    resource, token = fence.resource, fence.token

    def guard(conn: DocConnection) -> None:
        leases.check_fence(conn, resource, token)

    return guard


def _metrics() -> QueryMetrics:
    metrics: QueryMetrics = get_state().query_metrics
    return metrics


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


@requires("query.read")
@validate_request(QueryBody)
async def query_view(db_id: str, data: QueryBody) -> dict[str, Any] | Response:
    """Run one statement; reads on the read pool, writes in the next group commit.

    ``?format=csv|ndjson`` (or ``Accept: text/csv`` / ``application/x-ndjson``) streams the rows in
    that format instead of the JSON object (:mod:`skald.http.export`), under the same limits.
    """
    fmt = negotiate(request.args.get("format"), request.headers.get("Accept", ""))
    started = time.perf_counter()
    stmt = Statement(data.sql, decode_args(data.args))
    limits = _limits(data.options)
    cls, result = await _service().run(db_id, stmt, limits, _authorizer(db_id, data.options), _fence_guard(data.fence))
    if fmt != "json":
        _metrics().duration.labels(cls.name.lower()).observe(time.perf_counter() - started)
        return export_response(fmt, result.columns, result.rows, truncated=result.truncated)
    body = result.to_json()
    body["duration_ms"] = _ms(started)
    _metrics().duration.labels(cls.name.lower()).observe(body["duration_ms"] / 1000)
    return body


@requires("query.read")
@validate_request(BatchBody)
async def batch_view(db_id: str, data: BatchBody) -> dict[str, Any]:
    """Run several statements in one transaction: all or nothing."""
    started = time.perf_counter()
    stmts = [Statement(s.sql, decode_args(s.args)) for s in data.statements]
    limits = _limits(data.options)
    cls, results = await _service().run_batch(
        db_id, stmts, limits, _authorizer(db_id, data.options), _fence_guard(data.fence)
    )
    duration_ms = _ms(started)
    _metrics().duration.labels(cls.name.lower()).observe(duration_ms / 1000)
    return {"results": [r.to_json() for r in results], "duration_ms": duration_ms}


@requires("query.read")
@validate_request(WatchBody)
async def watch_view(db_id: str, data: WatchBody) -> Response:
    """SSE stream of a read-only query's result: snapshot, then updates when it changes."""
    state = get_state()
    stmt = Statement(data.sql, decode_args(data.args))
    options = data.options or WatchOptions()
    limits = _limits(options)
    cls = await state.query.classify(db_id, stmt)
    if cls != StatementClass.READ:
        raise NotReadOnly(f"this statement needs {cls.action}; watches run read-only statements")
    watch = QueryWatch(
        state.supervisor,
        db_id,
        stmt,
        limits,
        heartbeat_seconds=options.heartbeat_seconds or state.settings.sse_heartbeat_seconds,
        known_hash=options.result_hash or request.headers.get("Last-Event-ID"),
        shutdown=state.shutdown.event,
        hub=state.query_watch_hub,
        metrics=_metrics(),
    )
    return sse_response(watch.events())


STREAM_WINDOW = 1000
"""Lines of one NDJSON stream in flight (queued or running) before reading waits."""
STREAM_MAX_LINE = 1024 * 1024


@requires("query.read")
async def query_stream_view(db_id: str) -> Response:
    """NDJSON in, NDJSON out: one statement per line, run in order, acknowledged after its commit."""
    state = get_state()
    validate_db_id(db_id)
    if not state.supervisor.exists(db_id):
        raise DocumentNotFound(f"document {db_id} does not exist")
    opened = functools.partial(
        open_query_stream, state, db_id, current_principal(), path=request.path, ip=request_ip()
    )
    return ndjson_response(AckStream(request.body, opened, window=STREAM_WINDOW, max_line=STREAM_MAX_LINE))
