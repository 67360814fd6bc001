"""Token bookkeeping off the request path (issue 17): ``last_used_at`` is written in batches.

A request with a token writes nothing to the service database; the use shows in the admin
API after the next batch, and a graceful stop writes what is still pending.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
from support.live import LiveServer


async def _mint(admin: httpx.AsyncClient) -> tuple[str, str]:
    created = await admin.post("/api/v1/admin/tokens", json={"scopes": ["notes:pub.publish"], "label": "use"})
    assert created.status_code == 201, created.text
    return created.json()["id"], created.json()["token"]


async def test_requests_write_nothing_and_the_use_shows_after_a_batch(server: LiveServer) -> None:
    service = server.state.supervisor.service
    async with server.client() as admin:
        token_id, secret = await _mint(admin)
        assert (await admin.get(f"/api/v1/admin/tokens/{token_id}")).json()["last_used_at"] is None
        if server.state.token_cache is not None:
            server.state.token_cache.clear()  # the first request below looks the token up
        commits = service.commits
        async with server.client(secret) as user:
            for _ in range(20):
                r = await user.post("/api/v1/db/notes/ping", json={})
                assert r.status_code == 200, r.text
        assert service.commits == commits  # no write to the service database on the request path
        assert server.state.token_usage.pending >= 1
        assert await server.state.token_usage.flush(service) >= 1  # what the background task does every 5 s
        used = (await admin.get(f"/api/v1/admin/tokens/{token_id}")).json()["last_used_at"]
        assert used is not None


async def test_a_graceful_stop_writes_the_pending_uses(server: LiveServer, data_dir: Path) -> None:
    async with server.client() as admin:
        token_id, secret = await _mint(admin)
    async with server.client(secret) as user:
        assert (await user.post("/api/v1/db/notes/ping", json={})).status_code == 200
    await server.stop()
    with sqlite3.connect(data_dir / "_skald.db") as conn:
        row = conn.execute("SELECT last_used_at FROM tokens WHERE id = ?", (token_id,)).fetchone()
    conn.close()
    assert row is not None and row[0] is not None
