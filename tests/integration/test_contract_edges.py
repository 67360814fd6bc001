"""Inputs /openapi.json calls valid are accepted, and ones it calls invalid refused (found by schemathesis)."""

from __future__ import annotations

from support.live import LiveServer


async def test_ping_refuses_an_invalid_document_id(server: LiveServer) -> None:
    async with server.client() as client:
        response = await client.post("/api/v1/db/null%2Cnull/ping", json={})
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_db_id"
