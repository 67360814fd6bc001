"""Admin token API and audit log over HTTP."""

from __future__ import annotations

from support.live import LiveServer


async def test_mint_use_list_revoke(server: LiveServer) -> None:
    async with server.client() as admin:
        assert (await admin.put("/api/v1/db/notes")).status_code == 201
        created = await admin.post(
            "/api/v1/admin/tokens",
            json={"scopes": [{"db": "notes", "action": "db.admin"}, "other:query.read"], "label": "ci",
                  "expires_in": "1h"},
        )
        assert created.status_code == 201, created.text
        body = created.json()
        secret = body["token"]
        assert secret.startswith("skd_") and len(secret) >= 40
        assert body["label"] == "ci"
        assert body["state"] == "active"
        assert body["expires_at"]
        assert [s["action"] for s in body["scopes"]] == ["db.admin", "query.read"]
        token_id = body["id"]

        listed = (await admin.get("/api/v1/admin/tokens")).json()["tokens"]
        mine = [t for t in listed if t["id"] == token_id]
        assert mine and "token" not in mine[0] and "token_hash" not in mine[0]
        one = await admin.get(f"/api/v1/admin/tokens/{token_id}")
        assert one.status_code == 200 and one.json()["id"] == token_id
        assert secret not in one.text

        async with server.client(secret) as user:
            assert (await user.get("/api/v1/db/notes")).status_code == 200
            # warm the token cache, then revoke: revocation must take effect at once
            assert (await user.get("/api/v1/db/notes")).status_code == 200
            assert (await admin.delete(f"/api/v1/admin/tokens/{token_id}")).status_code == 204
            after = await user.get("/api/v1/db/notes")
            assert after.status_code == 401
            assert after.headers["www-authenticate"].startswith("Bearer")
            assert after.json()["code"] == "token_invalid"
            # a non-admin token cannot use the admin API
            denied = await user.get("/api/v1/admin/tokens")
            assert denied.status_code == 401
        assert (await admin.get(f"/api/v1/admin/tokens/{token_id}")).json()["state"] == "revoked"
        missing = await admin.delete("/api/v1/admin/tokens/tok_nope")
        assert missing.status_code == 404 and missing.json()["code"] == "token_not_found"

        audit = (await admin.get("/api/v1/admin/audit", params={"limit": 500})).json()["events"]
        events = [(e["event"], e["subject"]) for e in audit]
        assert ("token.created", token_id) in events
        assert ("token.revoked", token_id) in events
        assert any(e["event"] == "access.denied" and e["subject"] == token_id for e in audit)
        assert all(secret not in str(e) for e in audit)


async def test_non_admin_token_is_403(server: LiveServer) -> None:
    secret = await server.mint_token("*:query.read")
    async with server.client(secret) as client:
        r = await client.get("/api/v1/admin/tokens")
        assert r.status_code == 403
        assert r.json()["code"] == "scope_denied"


async def test_validation_is_problem_json(server: LiveServer) -> None:
    async with server.client() as admin:
        bodies = [
            {"scopes": []},
            {"scopes": ["x:no.such"]},
            {"scopes": ["x:query.read"], "expires_in": "soon"},
            {"label": "x"},
        ]
        for body in bodies:
            r = await admin.post("/api/v1/admin/tokens", json=body)
            assert r.status_code == 400, (body, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["code"] == "validation_failed"
        r = await admin.get("/api/v1/admin/audit", params={"limit": "many"})
        assert r.status_code == 400


async def test_audit_paging(server: LiveServer) -> None:
    async with server.client() as admin:
        for i in range(5):
            r = await admin.post("/api/v1/admin/tokens", json={"scopes": ["d:query.read"], "label": f"t{i}"})
            assert r.status_code == 201
        seen: list[int] = []
        params: dict[str, int] = {"limit": 2}
        while True:
            page = (await admin.get("/api/v1/admin/audit", params=params)).json()
            seen.extend(e["id"] for e in page["events"])
            assert len(page["events"]) <= 2
            if page["next_before_id"] is None:
                break
            params = {"limit": 2, "before_id": page["next_before_id"]}
        assert seen == sorted(seen, reverse=True)
        assert len(seen) == len(set(seen)) >= 6  # bootstrap + 5 mints
        created = (await admin.get("/api/v1/admin/audit", params={"event": "token.created"})).json()["events"]
        assert {e["event"] for e in created} == {"token.created"}


async def test_audit_can_be_followed_oldest_first(server: LiveServer) -> None:
    """``after_id``: the events after an id, oldest first (how a cluster collects each node's log)."""
    async with server.client() as admin:
        newest = (await admin.get("/api/v1/admin/audit", params={"limit": 1})).json()["events"][0]["id"]
        for i in range(3):
            assert (await admin.post("/api/v1/admin/tokens", json={"scopes": ["d:query.read"], "label": f"f{i}"})
                    ).status_code == 201
        page = (await admin.get("/api/v1/admin/audit", params={"after_id": newest, "limit": 2})).json()
        ids = [e["id"] for e in page["events"]]
        assert len(ids) == 2 and ids == sorted(ids) and ids[0] > newest
        rest = (await admin.get("/api/v1/admin/audit", params={"after_id": ids[-1], "node": "local"})).json()
        assert [e["detail"]["label"] for e in page["events"] + rest["events"]] == ["f0", "f1", "f2"]
        wrong = await admin.get("/api/v1/admin/audit", params={"node": "all"})
        assert wrong.status_code == 400 and wrong.json()["code"] == "validation_failed"


async def test_openapi_documents_the_request_model(server: LiveServer) -> None:
    async with server.client(None) as client:
        spec = (await client.get("/openapi.json")).json()
    post = spec["paths"]["/api/v1/admin/tokens"]["post"]
    assert "requestBody" in post
    assert "CreateTokenRequest" in str(spec)


async def test_admin_actions_are_audited(server: LiveServer) -> None:
    async with server.client() as admin:
        assert (await admin.put("/api/v1/db/audited")).status_code == 201
        assert (await admin.get("/api/v1/db/audited")).status_code == 200
        assert (await admin.delete("/api/v1/db/audited")).status_code == 204
        assert (await admin.delete("/api/v1/db/audited")).status_code == 404
        events = (await admin.get("/api/v1/admin/audit", params={"event": "admin.action"})).json()["events"]
    assert [(e["detail"]["method"], e["subject"], e["detail"]["status"]) for e in reversed(events)] == [
        ("PUT", "audited", 201),
        ("DELETE", "audited", 204),
    ]
    assert all(e["actor"].startswith("tok_") for e in events)
