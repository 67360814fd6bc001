"""Hrana over WebSocket at ``/api/v1/db/{db_id}/libsql`` (subprotocols ``hrana3``, ``hrana2``).

The client's ``hello`` carries the skald token (the client's ``authToken``), checked like a
Bearer header and again (cached) before every request, so a revoked token stops working on an
open socket too; the token needs ``query.read`` on the document. Requests on one stream run in
order on that stream's task; streams run side by side. A stream's queue is bounded: when it is
full the reader stops reading, and TCP pushes back on the client (the spec's advice).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import structlog
import trio
from quart import websocket
from quart_trio import QuartTrio

from skald.auth.guard import check_scope, check_token
from skald.auth.scopes import Principal
from skald.errors import SkaldError, Unauthenticated
from skald.http.client_ip import client_ip
from skald.http.state import AppState, get_state
from skald.libsql import protocol
from skald.libsql.errors import HranaProtocolError
from skald.libsql.service import authorizer
from skald.libsql.stream import HranaStream, SqlStore

log = structlog.get_logger("skald.libsql")

SUBPROTOCOLS = ("hrana3", "hrana2")
STREAM_QUEUE = 64
MAX_STREAMS_PER_CONNECTION = 64
MAX_CURSORS_PER_CONNECTION = 64


class _ProtocolViolation(Exception):
    """The peer broke the protocol: the socket is closed with 1002 (the spec asks for that)."""


def add_routes(app: QuartTrio) -> None:
    """The WebSocket endpoint, with and without the trailing ``/`` (called by :func:`skald.libsql.routes.install`)."""
    app.add_websocket("/api/v1/db/<db_id>/libsql", "libsql_ws", websocket_view)
    app.add_websocket("/api/v1/db/<db_id>/libsql/", "libsql_ws_slash", websocket_view)


async def websocket_view(db_id: str) -> None:
    state = get_state()
    offered = websocket.requested_subprotocols
    chosen = next((p for p in SUBPROTOCOLS if p in offered), None)
    if chosen is None and offered:
        await websocket.close(1002, "skald speaks hrana3 and hrana2 (JSON)")
        return
    await websocket.accept(subprotocol=chosen)
    ip = client_ip(websocket.remote_addr, websocket.headers.get("X-Forwarded-For"),
                   websocket.headers.get("X-Real-IP"), state.settings.trusted_proxies)
    connection = HranaConnection(state, db_id, websocket.path, ip, version=3 if chosen == "hrana3" else 2)
    await connection.serve()


@dataclasses.dataclass
class _WsStream:
    stream: HranaStream
    send: trio.MemorySendChannel[tuple[int, dict[str, Any]]]


class HranaConnection:
    """One WebSocket: its hello, its streams, its stored SQL texts and its cursors."""

    def __init__(self, state: AppState, db_id: str, path: str, ip: str, version: int) -> None:
        self.state = state
        self.db_id = db_id
        self.path = path
        self.ip = ip
        self.version = version
        self.secret: str | None = None
        self.principal: Principal | None = None
        self.sqls = SqlStore()
        self.streams: dict[int, _WsStream] = {}
        self.cursors: dict[int, int] = {}  # cursor_id -> stream_id
        self.cursor_entries: dict[int, list[dict[str, Any]] | SkaldError] = {}
        self._out_send, self._out_receive = trio.open_memory_channel[str](256)

    async def serve(self) -> None:
        """Until the client leaves, breaks the protocol or the server shuts down; streams are closed after."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._send_loop)
                nursery.start_soon(self._close_on_shutdown, nursery.cancel_scope)
                try:
                    await self._receive_loop()
                except _ProtocolViolation as exc:
                    await self._flush_and_close(1002, str(exc)[:120])
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for entry in self.streams.values():
                    await self.state.libsql.close_stream(entry.stream)
                self.streams.clear()

    async def _close_on_shutdown(self, scope: trio.CancelScope) -> None:
        await self.state.shutdown.event.wait()
        await websocket.close(1001, "server shutting down")
        scope.cancel()

    async def _flush_and_close(self, code: int, reason: str) -> None:
        with trio.move_on_after(1):
            await self._out_send.aclose()
            while True:
                await trio.lowlevel.checkpoint()
                if self._out_receive.statistics().current_buffer_used == 0:
                    break
        await websocket.close(code, reason)

    async def _send_loop(self) -> None:
        async for text in self._out_receive:
            await websocket.send(text)

    async def _emit(self, message: dict[str, Any]) -> None:
        await self._out_send.send(json.dumps(message, separators=(",", ":"), ensure_ascii=False))

    async def _receive_loop(self) -> None:
        while True:
            raw = await websocket.receive()
            if not isinstance(raw, str):
                raise _ProtocolViolation("binary frames are not part of the JSON encoding")
            try:
                message = json.loads(raw)
            except ValueError:
                raise _ProtocolViolation("a message is not valid JSON") from None
            if not isinstance(message, dict):
                raise _ProtocolViolation("a message must be an object")
            kind = message.get("type")
            if kind == "hello":
                if not await self._hello(message.get("jwt")):
                    return
            elif kind == "request":
                if self.principal is None:
                    raise _ProtocolViolation("send hello first")
                request_id = message.get("request_id")
                if isinstance(request_id, bool) or not isinstance(request_id, int):
                    raise _ProtocolViolation("request_id must be an integer")
                await self._request(request_id, message.get("request"))
            else:
                raise _ProtocolViolation(f"unknown message type {str(kind)[:40]!r}")

    async def _authenticate(self) -> Principal:
        if not self.secret:
            raise Unauthenticated("send the skald token as the client's authToken")
        principal = await check_token(self.state, self.secret, path=self.path, ip=self.ip)
        await check_scope(self.state, principal, self.db_id, "query.read", None, path=self.path, ip=self.ip)
        return principal

    async def _hello(self, jwt: Any) -> bool:
        self.secret = jwt if isinstance(jwt, str) else None
        try:
            principal = await self._authenticate()
            if self.principal is not None and principal.id != self.principal.id:
                raise HranaProtocolError("a new hello must carry the same token identity")
        except SkaldError as exc:
            await self._emit({"type": "hello_error", "error": protocol.error_json(exc)})
            await self._flush_and_close(1008, "authentication failed")
            return False
        self.principal = principal
        await self._emit({"type": "hello_ok"})
        return True

    async def _respond_error(self, request_id: int, exc: SkaldError) -> None:
        await self._emit({"type": "response_error", "request_id": request_id, "error": protocol.error_json(exc)})

    async def _request(self, request_id: int, request: Any) -> None:
        if not isinstance(request, dict):
            raise _ProtocolViolation("request must be an object")
        kind = request.get("type")
        try:
            await self._authenticate()  # cached: a revoked token stops here within seconds
            if kind == "open_stream":
                await self._open_stream(request_id, request)
            elif kind == "store_sql":
                sql_id, sql = request.get("sql_id"), request.get("sql")
                if isinstance(sql_id, bool) or not isinstance(sql_id, int) or not isinstance(sql, str):
                    raise HranaProtocolError("store_sql needs an integer sql_id and a string sql")
                self.sqls.store(sql_id, sql)
                await self._emit({"type": "response_ok", "request_id": request_id, "response": {"type": "store_sql"}})
            elif kind == "close_sql":
                sql_id = request.get("sql_id")
                if isinstance(sql_id, int) and not isinstance(sql_id, bool):
                    self.sqls.close(sql_id)
                await self._emit({"type": "response_ok", "request_id": request_id, "response": {"type": "close_sql"}})
            elif kind in ("fetch_cursor", "close_cursor"):
                cursor_id = request.get("cursor_id")
                stream_id = self.cursors.get(cursor_id) if isinstance(cursor_id, int) else None
                if stream_id is None or stream_id not in self.streams:
                    raise HranaProtocolError(f"no cursor {cursor_id}")
                await self.streams[stream_id].send.send((request_id, request))
            else:
                stream_id = request.get("stream_id")
                if isinstance(stream_id, bool) or not isinstance(stream_id, int) or stream_id not in self.streams:
                    raise HranaProtocolError(f"no open stream {stream_id}")
                if kind == "open_cursor":
                    cursor_id = request.get("cursor_id")
                    if isinstance(cursor_id, bool) or not isinstance(cursor_id, int) or cursor_id in self.cursors:
                        raise HranaProtocolError("open_cursor needs a cursor_id not in use")
                    if len(self.cursors) >= MAX_CURSORS_PER_CONNECTION:
                        # each open cursor keeps its (bounded) result until closed
                        raise HranaProtocolError(f"at most {MAX_CURSORS_PER_CONNECTION} open cursors; close some")
                    self.cursors[cursor_id] = stream_id
                if kind == "close_stream":
                    entry = self.streams.pop(stream_id)
                    await entry.send.send((request_id, request))
                    entry.send.close()  # the stream's task answers what was queued, then closes it
                else:
                    await self.streams[stream_id].send.send((request_id, request))
        except SkaldError as exc:
            await self._respond_error(request_id, exc)

    async def _open_stream(self, request_id: int, request: dict[str, Any]) -> None:
        stream_id = request.get("stream_id")
        if isinstance(stream_id, bool) or not isinstance(stream_id, int) or stream_id in self.streams:
            raise HranaProtocolError("open_stream needs a stream_id not in use")
        if len(self.streams) >= MAX_STREAMS_PER_CONNECTION:
            raise HranaProtocolError(f"at most {MAX_STREAMS_PER_CONNECTION} streams per connection")
        assert self.principal is not None
        stream = await self.state.libsql.open_stream(
            self.db_id, self.principal, authorizer(self.state, self.principal, self.db_id, self.path, self.ip),
            sqls=self.sqls,
        )
        send, receive = trio.open_memory_channel[tuple[int, dict[str, Any]]](STREAM_QUEUE)
        self.streams[stream_id] = _WsStream(stream, send)
        self._nursery.start_soon(self._run_stream, stream, receive)
        await self._emit({"type": "response_ok", "request_id": request_id, "response": {"type": "open_stream"}})

    async def _run_stream(
        self, stream: HranaStream, receive: trio.MemoryReceiveChannel[tuple[int, dict[str, Any]]]
    ) -> None:
        async with receive:
            async for request_id, request in receive:
                kind = request.get("type")
                try:
                    response = await self._stream_request(stream, kind, request)
                except SkaldError as exc:
                    await self._respond_error(request_id, exc)
                except Exception as exc:  # a bug: answered and logged, the connection lives on
                    log.exception("libsql request failed")
                    await self._emit({"type": "response_error", "request_id": request_id,
                                      "error": {"message": f"internal error ({type(exc).__name__})",
                                                "code": "INTERNAL_ERROR"}})
                else:
                    await self._emit({"type": "response_ok", "request_id": request_id, "response": response})
        await self.state.libsql.close_stream(stream)

    async def _stream_request(self, stream: HranaStream, kind: Any, request: dict[str, Any]) -> dict[str, Any]:
        if kind == "close_stream":
            await self.state.libsql.close_stream(stream)
            return {"type": "close_stream"}
        if kind == "open_cursor":
            cursor_id = request["cursor_id"]
            try:
                result = await stream.batch(protocol.decode_batch(request.get("batch")))
            except SkaldError as exc:
                self.cursor_entries[cursor_id] = exc
                raise
            self.cursor_entries[cursor_id] = protocol.cursor_entries(result)
            return {"type": "open_cursor"}
        if kind == "fetch_cursor":
            entries = self.cursor_entries.get(request["cursor_id"], [])
            if isinstance(entries, SkaldError):
                raise entries
            max_count = request.get("max_count")
            count = max_count if isinstance(max_count, int) and max_count > 0 else 1000
            taken, rest = entries[:count], entries[count:]
            self.cursor_entries[request["cursor_id"]] = rest
            return {"type": "fetch_cursor", "entries": taken, "done": not rest}
        if kind == "close_cursor":
            self.cursors.pop(request["cursor_id"], None)
            self.cursor_entries.pop(request["cursor_id"], None)
            return {"type": "close_cursor"}
        if kind == "get_autocommit":
            return {"type": "get_autocommit", "is_autocommit": stream.is_autocommit}
        response: dict[str, Any] = await stream.handle(request)
        return response
