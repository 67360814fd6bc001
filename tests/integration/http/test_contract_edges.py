"""Inputs /openapi.json calls valid are accepted, and ones it calls invalid refused (found by schemathesis)."""

from __future__ import annotations

import pytest
from support.live import LiveServer


async def test_ping_refuses_an_invalid_document_id(server: LiveServer) -> None:
    async with server.client() as client:
        response = await client.post("/api/v1/db/null%2Cnull/ping", json={})
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_db_id"


@pytest.mark.parametrize(
    "policy",
    [{"max_age_seconds": 1.5645740386064437e308}, {"max_count": 2**63}, {"max_bytes": 10**30}],
)
async def test_a_retention_limit_beyond_what_can_be_stored_is_refused(
    server: LiveServer, policy: dict[str, float]
) -> None:
    async with server.client() as client:
        assert (await client.put("/api/v1/db/demo")).status_code == 201
        response = await client.put("/api/v1/db/demo/messages/retention", json=policy)
        after = await client.get("/api/v1/db/demo/messages/retention")
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "validation_failed"
    assert after.json()["max_age_seconds"] is None and after.json()["max_count"] is None


@pytest.mark.parametrize(
    "query",
    ["before_id=&before_id=abc", "limit=5&limit=6", "event=a&event=b"],
)
async def test_a_single_valued_query_parameter_given_twice_is_refused(server: LiveServer, query: str) -> None:
    # Werkzeug would read the first and ignore the rest: the request would mean something it did not say.
    async with server.client() as client:
        response = await client.get(f"/api/v1/admin/audit?{query}")
    assert response.status_code == 400
    assert response.json()["code"] == "validation_failed"


async def test_a_repeatable_query_parameter_may_repeat(server: LiveServer) -> None:
    async with server.client() as client:
        assert (await client.put("/api/v1/db/demo")).status_code == 201
        response = await client.get("/api/v1/db/demo/messages?topic=a&topic=b")
    assert response.status_code == 200
