"""Sync routes: ``GET …/snapshot``, ``GET …/changes`` (JSON page) and ``GET …/changes/stream`` (SSE)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from skald.auth.guard import requires
from skald.db.connection import DocConnection
from skald.http.params import int_param
from skald.http.sse import json_event, sse_response, wait_first
from skald.http.state import AppState, get_state
from skald.server.shutdown import final_event
from skald.sync.changefeed import read_changes
from skald.sync.service import SyncService, stream_file

MAX_PAGE = 1000
STREAM_PAGE = 500


def install(app: QuartTrio, state: AppState) -> None:
    state.sync = SyncService(state.supervisor)
    app.add_url_rule("/api/v1/db/<db_id>/snapshot", view_func=snapshot_view, methods=["GET"])
    app.add_url_rule("/api/v1/db/<db_id>/changes", view_func=changes_view, methods=["GET"])
    app.add_url_rule("/api/v1/db/<db_id>/changes/stream", view_func=changes_stream_view, methods=["GET"])


def _service() -> SyncService:
    service: SyncService = get_state().sync
    return service


@requires("sync.read")
async def snapshot_view(db_id: str) -> Response:
    state = get_state()
    async with state.supervisor.open_document(db_id) as actor:
        path, seq = await _service().snapshot_file(actor)
    response = Response(stream_file(path), content_type="application/vnd.sqlite3")
    response.headers["Skald-Change-Seq"] = str(seq)
    response.headers["Content-Length"] = str(path.stat().st_size)
    response.headers["Content-Disposition"] = f'attachment; filename="{db_id}.sqlite"'
    response.headers["Cache-Control"] = "no-store"
    response.timeout = None
    return response


@requires("sync.read")
async def changes_view(db_id: str) -> dict[str, Any]:
    since = int_param("since", request.args.get("since"), 0)
    limit = int_param("limit", request.args.get("limit"), MAX_PAGE, minimum=1, maximum=MAX_PAGE)
    async with get_state().supervisor.open_document(db_id) as actor:
        page = await _service().changes(actor, since, limit)
    page["since"] = since
    page["has_more"] = bool(page["changes"]) and page["changes"][-1]["seq"] < page["last_seq"]
    return page


@requires("sync.read")
async def changes_stream_view(db_id: str) -> Response:
    since = int_param("since", request.args.get("since"))
    if since is None:  # a reconnect without ?since= resumes from the browser's Last-Event-ID
        since = int_param("Last-Event-ID", request.headers.get("Last-Event-ID"), 0)
    state = get_state()
    service = _service()
    heartbeat = state.settings.sse_heartbeat_seconds
    shutdown: trio.Event | None = state.shutdown.event
    async with state.supervisor.open_document(db_id) as actor:
        await service.prepare(actor)
        actor.keep_alive_until(trio.current_time() + 60)  # until the generator holds it

    async def events() -> AsyncIterator[bytes]:
        cursor = since
        if actor.closing.is_set():
            return
        with actor.hold():
            while not actor.closing.is_set() and not (shutdown is not None and shutdown.is_set()):
                wake = service.wakeup(db_id)
                page = await actor.read(functools.partial(_page, cursor=cursor))
                if page["reset"]:
                    yield json_event("reset", {"since": cursor, "last_seq": page["last_seq"]})
                    return
                for change in page["changes"]:
                    cursor = change["seq"]
                    yield json_event("change", change, cursor)
                if len(page["changes"]) >= STREAM_PAGE:
                    continue
                with trio.move_on_after(heartbeat) as scope:
                    await wait_first(wake, actor.closing, shutdown)
                if scope.cancelled_caught:
                    yield json_event("heartbeat", {"last_seq": page["last_seq"]})
            if shutdown is not None and shutdown.is_set():
                yield final_event(resume_from=cursor)

    return sse_response(events())


def _page(conn: DocConnection, cursor: int) -> dict[str, Any]:
    return read_changes(conn, cursor, STREAM_PAGE)

