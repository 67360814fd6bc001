"""Documents API: ``/api/v1/db`` and ``/api/v1/db/{db_id}``."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from quart import Response, jsonify
from quart_trio import QuartTrio

from skald.auth.guard import authenticate, requires
from skald.db.ids import validate_db_id
from skald.documents.service import inspect_document, list_documents
from skald.http.state import AppState, get_state


def install(app: QuartTrio, state: AppState) -> None:
    app.add_url_rule("/api/v1/db", view_func=list_view, methods=["GET"])
    app.add_url_rule("/api/v1/db/<db_id>", view_func=create_view, methods=["PUT"])
    app.add_url_rule("/api/v1/db/<db_id>", view_func=inspect_view, methods=["GET"])
    app.add_url_rule("/api/v1/db/<db_id>", view_func=delete_view, methods=["DELETE"])


async def list_view() -> dict[str, Any]:
    """Documents the caller holds any scope on."""
    principal = await authenticate()
    assert principal is not None
    state = get_state()
    docs = list_documents(state.supervisor)
    if state.cluster is not None:  # every document of the cluster, wherever it is served
        here = {d["db_id"]: d for d in docs}
        docs = [here.get(db_id, {"db_id": db_id, "open": False}) for db_id in state.cluster.list_documents()]
    if not principal.is_admin:
        docs = [d for d in docs if any(fnmatchcase(d["db_id"], s.db) for s in principal.scopes)]
    return {"documents": docs}


list_view.skald_action = "any"  # type: ignore[attr-defined]


@requires("db.admin")
async def create_view(db_id: str) -> tuple[Response, int]:
    validate_db_id(db_id)
    supervisor = get_state().supervisor
    created = await supervisor.create_document(db_id)
    body = await inspect_document(supervisor, db_id)
    return jsonify(body), (201 if created else 200)


@requires("db.admin")
async def inspect_view(db_id: str) -> dict[str, Any]:
    validate_db_id(db_id)
    return await inspect_document(get_state().supervisor, db_id)


@requires("db.admin")
async def delete_view(db_id: str) -> tuple[str, int]:
    await get_state().supervisor.delete_document(db_id)
    return "", 204
