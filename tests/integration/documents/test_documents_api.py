from __future__ import annotations

from support.live import LiveServer


async def test_create_inspect_list_delete(server: LiveServer) -> None:
    async with server.client() as client:
        created = await client.put("/api/v1/db/notes")
        assert created.status_code == 201
        body = created.json()
        assert body["db_id"] == "notes"
        assert body["schema_version"] >= 1
        assert body["page_count"] > 0
        assert body["created_at"]
        again = await client.put("/api/v1/db/notes")
        assert again.status_code == 200
        listed = (await client.get("/api/v1/db")).json()["documents"]
        assert [d["db_id"] for d in listed] == ["notes"]
        inspected = await client.get("/api/v1/db/notes")
        assert inspected.status_code == 200
        deleted = await client.delete("/api/v1/db/notes")
        assert deleted.status_code == 204
        gone = await client.get("/api/v1/db/notes")
        assert gone.status_code == 404
        assert gone.headers["content-type"] == "application/problem+json"
        assert gone.json()["code"] == "document_not_found"
    assert not server.settings.document_path("notes").exists()


async def test_invalid_ids_are_400(server: LiveServer) -> None:
    async with server.client() as client:
        for bad in [".hidden", "a..b", "x" * 129, "-dash", "sp%20ace"]:
            r = await client.put(f"/api/v1/db/{bad}")
            assert r.status_code == 400, bad
            assert r.json()["code"] == "invalid_db_id"


async def test_problem_json_for_framework_errors(server: LiveServer) -> None:
    async with server.client() as client:
        r = await client.get("/no/such/route")
        assert r.status_code == 404
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "not_found"
        r = await client.post("/healthz")
        assert r.status_code == 405
        assert r.json()["code"] == "method_not_allowed"
        assert "GET" in r.headers["allow"]
        r = await client.get("/api/v1/db", headers={"Authorization": ""})
        assert r.status_code == 401
