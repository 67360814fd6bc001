"""Sync routes: ``GET …/snapshot``, ``GET …/changes`` (JSON page) and ``GET …/changes/stream`` (SSE)."""

from __future__ import annotations

from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from skald.auth.guard import requires
from skald.http.params import int_param
from skald.http.sse import sse_response
from skald.http.state import AppState, get_state
from skald.sync.service import SyncService, stream_file

MAX_PAGE = 1000


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
    path, seq = await _service().snapshot_file(db_id)
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
    page = await _service().changes(db_id, since, limit)
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
    await service.prepare(db_id)  # a missing document is a 404 before the stream starts
    return sse_response(service.change_events(db_id, since, state.settings.sse_heartbeat_seconds, state.shutdown.event))
