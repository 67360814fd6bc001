"""libSQL's remote protocol at ``/api/v1/db/{db_id}/libsql``: Hrana over HTTP and WebSocket.

HTTP (``…/libsql/v2/pipeline``, ``…/libsql/v3/pipeline``, ``…/libsql/v3/cursor``, and the version
checks ``GET …/libsql/v2`` / ``…/v3``) needs ``query.read`` on the document, as ``/query`` does;
each statement's class then needs its own action. The clients resolve these paths *relative* to
the URL they are given (``new URL("v2/pipeline", url)``), so ``…/libsql`` without a trailing slash
reaches ``…/db/{db_id}/v2/pipeline``: those paths are served too (docs/libsql.md).

The WebSocket (subprotocols ``hrana3``, ``hrana2``) lives in :mod:`skald.libsql.ws`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from skald.auth.guard import current_principal, requires
from skald.db.ids import validate_db_id
from skald.errors import SkaldError
from skald.http.client_ip import client_ip
from skald.http.state import AppState, get_state
from skald.libsql import protocol, ws
from skald.libsql.errors import HranaProtocolError
from skald.libsql.service import LibsqlService, authorizer
from skald.libsql.stream import HranaStream

BASES = ("/api/v1/db/<db_id>/libsql", "/api/v1/db/<db_id>")
"""Where Hrana's paths are served: the documented base, and where a base without ``/`` resolves to."""


def install(app: QuartTrio, state: AppState) -> None:
    state.libsql = LibsqlService(state.supervisor, state.settings)
    for base in BASES:
        suffix = "" if base.endswith("libsql") else "_bare"
        app.add_url_rule(base + "/v2", "libsql_v2" + suffix, version_view, methods=["GET"])
        app.add_url_rule(base + "/v3", "libsql_v3" + suffix, version_view, methods=["GET"])
        app.add_url_rule(base + "/v2/pipeline", "libsql_v2_pipeline" + suffix, pipeline_view, methods=["POST"])
        app.add_url_rule(base + "/v3/pipeline", "libsql_v3_pipeline" + suffix, pipeline_view, methods=["POST"])
        app.add_url_rule(base + "/v3/cursor", "libsql_v3_cursor" + suffix, cursor_view, methods=["POST"])
    ws.add_routes(app)

    @app.before_serving
    async def start_libsql() -> None:
        await app.nursery.start(state.libsql.serve)

    @app.after_serving
    async def stop_libsql() -> None:
        await state.libsql.aclose()


async def version_view(db_id: str) -> dict[str, Any]:
    """Version check (``GET v2``/``GET v3``): the clients probe it without a token, so it says no more
    than "this server speaks Hrana 2 and 3 over JSON" (not even whether the document exists)."""
    validate_db_id(db_id)
    return {"hrana": [2, 3], "encoding": "json"}


async def _body() -> dict[str, Any]:
    body = await request.get_json(force=True)
    if not isinstance(body, dict):
        raise HranaProtocolError("the body must be a JSON object")
    return body


async def _stream_for(state: AppState, db_id: str, baton: Any) -> HranaStream:
    principal = current_principal()
    if baton is not None:
        if not isinstance(baton, str):
            raise HranaProtocolError("baton must be a string or null")
        return state.libsql.take(baton, db_id, principal)
    ip = client_ip(request.remote_addr, request.headers.get("X-Forwarded-For"), request.headers.get("X-Real-IP"),
                   state.settings.trusted_proxies)
    return await state.libsql.open_stream(db_id, principal, authorizer(state, principal, db_id, request.path, ip))


@requires("query.read")
async def pipeline_view(db_id: str) -> dict[str, Any]:
    """``POST v2/pipeline`` / ``v3/pipeline``: run the requests in order on the baton's stream."""
    state = get_state()
    body = await _body()
    requests = body.get("requests")
    if not isinstance(requests, list):
        raise HranaProtocolError("requests must be an array")
    if len(requests) > 1000:
        raise HranaProtocolError("at most 1000 requests per pipeline")
    if not all(isinstance(item, dict) and isinstance(item.get("type"), str) for item in requests):
        raise HranaProtocolError("every request must be an object with a string type")
    stream = await _stream_for(state, db_id, body.get("baton"))
    results: list[dict[str, Any]] = []
    closed = False
    try:
        for item in requests:
            if closed:
                results.append({"type": "error", "error": {"message": "the stream is closed", "code": "STREAM_CLOSED"}})
            elif isinstance(item, dict) and item.get("type") == "close":
                closed = True
                results.append({"type": "ok", "response": {"type": "close"}})
            else:
                try:
                    results.append({"type": "ok", "response": await stream.handle(item)})
                except SkaldError as exc:
                    results.append({"type": "error", "error": protocol.error_json(exc)})
    except BaseException:
        await state.libsql.close_stream(stream)  # a cancelled request (client gone) ends its stream
        raise
    if closed:
        await state.libsql.close_stream(stream)
        return {"baton": None, "base_url": None, "results": results}
    return {"baton": state.libsql.park(db_id, stream), "base_url": None, "results": results}


@requires("query.read")
async def cursor_view(db_id: str) -> Response:
    """``POST v3/cursor``: a batch whose results come as lines of JSON (``CursorRespBody``, then entries)."""
    state = get_state()
    body = await _body()
    batch = body.get("batch")
    steps = batch.get("steps") if isinstance(batch, dict) else None
    if not isinstance(steps, list) or not all(isinstance(s, dict) and isinstance(s.get("stmt"), dict) for s in steps):
        raise HranaProtocolError("batch.steps must be an array of steps, each with a stmt object")
    stream = await _stream_for(state, db_id, body.get("baton"))
    entries: list[dict[str, Any]]
    try:
        try:
            decoded = protocol.decode_batch(batch)
        except HranaProtocolError as exc:  # a malformed statement fails the batch, as a cursor entry
            entries = [{"type": "error", "error": protocol.error_json(exc)}]
        else:
            entries = protocol.cursor_entries(await stream.batch(decoded))
    except BaseException:
        await state.libsql.close_stream(stream)
        raise
    head = {"baton": state.libsql.park(db_id, stream), "base_url": None}

    async def lines() -> AsyncIterator[bytes]:
        yield _line(head)
        for entry in entries:
            yield _line(entry)

    response = Response(lines(), content_type="application/x-ndjson")
    response.timeout = None
    return response


def _line(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"
