"""/openapi.json describes every operation well enough for a tool to check responses against it."""

from __future__ import annotations

from typing import Any

import pytest
from support.live import LiveServer

from skald.http import openapi

METHODS = {"get", "put", "post", "delete", "patch"}


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


async def _document(server: LiveServer) -> dict[str, Any]:
    async with server.client(token=None) as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


async def test_every_operation_declares_a_success_response_with_its_schema(server: LiveServer) -> None:
    document = await _document(server)
    undocumented = []
    for method, path, operation in _operations(document):
        success = {status: r for status, r in operation.get("responses", {}).items() if status[0] in "23"}
        if not success:
            undocumented.append(f"{method} {path}")
            continue
        for status, response in success.items():
            if status in ("204", "303"):
                assert "content" not in response, f"{method} {path} {status} has no body"
            else:
                contents = response.get("content", {})
                assert contents and all("schema" in c or t == "text/plain" for t, c in contents.items()), (
                    f"{method} {path} {status} declares no schema"
                )
    assert undocumented == []


async def test_every_error_response_is_a_problem_with_its_codes(server: LiveServer) -> None:
    document = await _document(server)
    assert document["components"]["schemas"]["ProblemDetails"]["required"] == [
        "type", "title", "status", "detail", "code"
    ]
    for method, path, operation in _operations(document):
        errors = {s: r for s, r in operation["responses"].items() if s[0] in "45"}
        assert errors, f"{method} {path} declares no error responses"
        for status, response in errors.items():
            if "text/html" in response.get("content", {}):
                continue  # the token page renders a form's own error as HTML
            schema = response["content"]["application/problem+json"]["schema"]
            ref, pinned = schema["allOf"]
            assert ref == {"$ref": "#/components/schemas/ProblemDetails"}
            assert pinned["properties"]["status"] == {"const": int(status)}
            codes = pinned["properties"]["code"]["enum"]
            assert codes and all(f"`{code}`" in response["description"] for code in codes)
    assert "500" not in {s for _, _, o in _operations(document) for s in o["responses"]}, "a 500 is a bug"


async def test_json_bodies_are_required_where_the_server_requires_them(server: LiveServer) -> None:
    document = await _document(server)
    required = {
        ("POST", "/api/v1/admin/tokens"),
        ("POST", "/api/v1/db/{db_id}/query"),
        ("POST", "/api/v1/db/{db_id}/query/batch"),
        ("POST", "/api/v1/db/{db_id}/query/watch"),
        ("POST", "/api/v1/db/{db_id}/messages"),
        ("PUT", "/api/v1/db/{db_id}/messages/retention"),
        ("PUT", "/api/v1/db/{db_id}/webhooks/{endpoint}/config"),
        ("POST", "/api/v1/db/{db_id}/leases/acquire"),
        ("POST", "/api/v1/db/{db_id}/blobs/init-upload"),
        ("POST", "/api/v1/db/{db_id}/blobs/claim"),
    }
    by_key = {(m, p): o for m, p, o in _operations(document)}
    for key in required:
        body = by_key[key].get("requestBody")
        assert body is not None and body.get("required") is True, f"{key} body not marked required"
        assert "application/json" in body["content"]


async def test_query_parameters_the_routes_read_are_declared(server: LiveServer) -> None:
    document = await _document(server)
    by_key = {(m, p): o for m, p, o in _operations(document)}
    expected = {
        ("GET", "/api/v1/admin/audit"): {"before_id", "limit", "event", "after_id", "node"},
        ("GET", "/api/v1/db/{db_id}/messages"): {"topic", "since_id", "limit"},
        ("GET", "/api/v1/db/{db_id}/events/stream"): {"topic", "since_id", "tail", "heartbeat"},
        ("GET", "/api/v1/db/{db_id}/changes"): {"since", "limit"},
        ("GET", "/api/v1/db/{db_id}/blobs"): {"sha256", "limit"},
    }
    for key, names in expected.items():
        declared = {p["name"] for p in by_key[key]["parameters"] if p["in"] == "query"}
        assert declared == names, key


async def test_operation_ids_are_unique(server: LiveServer) -> None:
    ids = [operation.get("operationId") for _, _, operation in _operations(await _document(server))]
    assert None not in ids and len(ids) == len(set(ids))


def test_a_route_without_an_entry_cannot_be_published() -> None:
    document: dict[str, Any] = {"paths": {"/new": {"get": {"parameters": [], "responses": {}}}}}
    with pytest.raises(LookupError, match="GET /new"):
        openapi.complete(document)
