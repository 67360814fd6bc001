from __future__ import annotations

import hashlib
import hmac
import json
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import trio
from support.live import ADMIN_TOKEN, LiveServer, SkaldProcess, make_settings, start_live_server

from skald.db.connection import DocConnection

GITHUB_HEADERS = {
    "X-GitHub-Event": "push",
    "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    "Content-Type": "application/json",
}


def inbox_rows(path: Path) -> list[sqlite3.Row]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM webhook_inbox ORDER BY id").fetchall()
    finally:
        conn.close()


async def test_github_delivery_stored_with_redaction_and_dedup(server: LiveServer) -> None:
    token = await server.mint_token("hooks:webhook.ingest:github")
    async with server.client() as admin, server.client(token) as client:
        assert (await admin.put("/api/v1/db/hooks")).status_code == 201
        body = b'{"ref": "refs/heads/main"}'
        headers = {**GITHUB_HEADERS, "Cookie": "session=abc", "Proxy-Authorization": "Basic eA=="}
        r = await client.post("/api/v1/db/hooks/webhooks/github?x=1&y=2", content=body, headers=headers)
        assert r.status_code == 201, r.text
        first = r.json()
        assert first["duplicate"] is False
        assert first["delivery_id"] == GITHUB_HEADERS["X-GitHub-Delivery"]
        again = await client.post("/api/v1/db/hooks/webhooks/github", content=body, headers=headers)
        assert again.status_code == 200
        assert again.json()["id"] == first["id"]
        assert again.json()["duplicate"] is True
        # Same delivery id on another endpoint is a different delivery (and needs its own scope).
        denied = await client.post("/api/v1/db/hooks/webhooks/stripe", content=body, headers=headers)
        assert denied.status_code == 403
        other = await admin.post("/api/v1/db/hooks/webhooks/other", content=body, headers=headers)
        assert other.status_code == 201 and other.json()["id"] != first["id"]
        metrics = (await admin.get("/metrics")).text
        assert 'skald_webhook_deliveries_total{result="stored"} 2.0' in metrics
        assert 'skald_webhook_deliveries_total{result="duplicate"} 1.0' in metrics
    rows = inbox_rows(server.settings.document_path("hooks"))
    assert [r["endpoint"] for r in rows] == ["github", "other"]
    row = rows[0]
    assert row["id"] == first["id"]
    assert bytes(row["body"]) == body
    assert row["method"] == "POST"
    assert row["query_string"] == "x=1&y=2"
    assert row["content_type"] == "application/json"
    stored_headers = json.loads(row["headers"])
    assert stored_headers["authorization"] == "[redacted]"
    assert stored_headers["cookie"] == "[redacted]"
    assert stored_headers["proxy-authorization"] == "[redacted]"
    assert stored_headers["x-github-event"] == "push"
    assert token not in row["headers"]


async def test_binary_body_generated_id_and_configured_redaction(server: LiveServer) -> None:
    async with server.client() as client:
        await client.put("/api/v1/db/hooks")
        cfg = await client.put("/api/v1/db/hooks/webhooks/raw/config", json={"redact_headers": ["X-Api-Key"]})
        assert cfg.status_code == 200, cfg.text
        payload = bytes(range(256))
        headers = {"Content-Type": "application/octet-stream", "X-Api-Key": "hunter2"}
        a = await client.post("/api/v1/db/hooks/webhooks/raw", content=payload, headers=headers)
        b = await client.post("/api/v1/db/hooks/webhooks/raw", content=payload, headers=headers)
        assert a.status_code == b.status_code == 201
        assert a.json()["delivery_id"] != b.json()["delivery_id"]  # no provider id: each POST is new
    rows = inbox_rows(server.settings.document_path("hooks"))
    assert [bytes(r["body"]) for r in rows] == [payload, payload]
    assert json.loads(rows[0]["headers"])["x-api-key"] == "[redacted]"


async def test_operator_column_keeps_ingestion_working(server: LiveServer) -> None:
    async with server.client() as client:
        await client.put("/api/v1/db/hooks")
        async with server.state.supervisor.open_document("hooks") as actor:

            def alter(conn: DocConnection) -> None:
                conn.execute("ALTER TABLE webhook_inbox ADD COLUMN processed_at TEXT")
                conn.execute("ALTER TABLE webhook_inbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")

            await actor.write(alter)
        r = await client.post("/api/v1/db/hooks/webhooks/github", content=b"{}", headers=GITHUB_HEADERS)
        assert r.status_code == 201, r.text
    rows = inbox_rows(server.settings.document_path("hooks"))
    assert len(rows) == 1
    assert rows[0]["attempts"] == 0 and rows[0]["processed_at"] is None


async def test_body_over_limit_is_413_and_nothing_stored(nursery: trio.Nursery, data_dir: Path) -> None:
    live = await start_live_server(nursery, make_settings(data_dir, webhook_max_bytes=1000))
    try:
        async with live.client() as client:
            await client.put("/api/v1/db/hooks")
            ok = await client.post("/api/v1/db/hooks/webhooks/e", content=b"x" * 1000)
            assert ok.status_code == 201
            big = await client.post("/api/v1/db/hooks/webhooks/e", content=b"x" * 1001)
            assert big.status_code == 413
            assert big.headers["content-type"] == "application/problem+json"
            assert big.json()["code"] == "payload_too_large"

            async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies while streaming
                for _ in range(5):
                    yield b"y" * 400

            streamed = await client.post("/api/v1/db/hooks/webhooks/e", content=chunks())
            assert streamed.status_code == 413
    finally:
        await live.stop()
    assert len(inbox_rows(live.settings.document_path("hooks"))) == 1


async def test_github_signature_verification(server: LiveServer) -> None:
    secret = "It's a Secret to Everybody"
    body = b"Hello, World!"
    good = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    async with server.client() as client:
        await client.put("/api/v1/db/hooks")
        cfg = await client.put(
            "/api/v1/db/hooks/webhooks/github/config", json={"verify": {"style": "github", "secret": secret}}
        )
        assert cfg.status_code == 200
        assert cfg.json()["verify"]["secret"] == "[redacted]"
        bad = await client.post(
            "/api/v1/db/hooks/webhooks/github",
            content=body,
            headers={**GITHUB_HEADERS, "X-Hub-Signature-256": "sha256=" + "0" * 64},
        )
        assert bad.status_code == 401
        assert bad.json()["code"] == "webhook_signature_invalid"
        missing = await client.post("/api/v1/db/hooks/webhooks/github", content=body, headers=GITHUB_HEADERS)
        assert missing.status_code == 401
        assert inbox_rows(server.settings.document_path("hooks")) == []
        ok = await client.post(
            "/api/v1/db/hooks/webhooks/github",
            content=body,
            headers={**GITHUB_HEADERS, "X-Hub-Signature-256": good},
        )
        assert ok.status_code == 201, ok.text
    rows = inbox_rows(server.settings.document_path("hooks"))
    assert len(rows) == 1 and rows[0]["verified"] == "github"


async def test_acknowledged_delivery_survives_sigkill(tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    body = b'{"n": 1}'
    first = SkaldProcess(tmp_path / "data")
    try:
        url = await first.start()
        async with httpx.AsyncClient(base_url=url, headers=auth, timeout=30) as client:
            assert (await client.put("/api/v1/db/hooks")).status_code == 201
            r = await client.post("/api/v1/db/hooks/webhooks/github", content=body, headers=GITHUB_HEADERS)
            assert r.status_code == 201
            stored_id = r.json()["id"]
        first.signal(signal.SIGKILL)  # right after the 2xx: no graceful shutdown
        assert await first.wait() == -signal.SIGKILL
    finally:
        await first.stop()
    second = SkaldProcess(tmp_path / "data")
    try:
        url = await second.start()
        async with httpx.AsyncClient(base_url=url, headers=auth, timeout=30) as client:
            retry = await client.post(
                "/api/v1/db/hooks/webhooks/github", content=body, headers=GITHUB_HEADERS
            )
            assert retry.status_code == 200
            assert retry.json() == {**r.json(), "duplicate": True, "id": stored_id}
    finally:
        await second.stop()
    rows = inbox_rows(tmp_path / "data" / "documents" / "hooks.sqlite3")
    assert [(row["id"], bytes(row["body"])) for row in rows] == [(stored_id, body)]


async def test_column_without_default_is_a_clear_error(server: LiveServer) -> None:
    async with server.client() as client:
        await client.put("/api/v1/db/hooks")
        async with server.state.supervisor.open_document("hooks") as actor:
            await actor.write(
                lambda conn: conn.execute(
                    "ALTER TABLE webhook_inbox ADD COLUMN owner TEXT CHECK (owner IS NOT NULL)"
                )
            )
        r = await client.post("/api/v1/db/hooks/webhooks/e", content=b"{}")
        assert r.status_code == 500
        assert r.json()["code"] == "webhook_inbox_schema"
        assert "CHECK constraint" in r.json()["detail"]
