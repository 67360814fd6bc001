from __future__ import annotations

from support.live import LiveServer


async def test_health_ready_status(server: LiveServer) -> None:
    async with server.client(token=None) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
    async with server.client() as client:
        await client.put("/api/v1/db/one")
        status = (await client.get("/status")).json()
    assert status["version"]
    assert status["documents"] == 1
    assert status["open_actors"] >= 1
    assert "one" in status["mailboxes"]
    assert status["uptime_seconds"] >= 0


async def test_readyz_fails_when_data_dir_unwritable(server: LiveServer) -> None:
    server.settings.data_dir.chmod(0o500)
    try:
        async with server.client(token=None) as client:
            r = await client.get("/readyz")
        # root ignores directory permissions; then the folder is in fact writable
        import os

        if os.geteuid() != 0:
            assert r.status_code == 503
            assert r.json()["code"] == "not_ready"
        else:
            assert r.status_code == 200
    finally:
        server.settings.data_dir.chmod(0o700)


async def test_metrics_exposes_core_series(server: LiveServer) -> None:
    async with server.client() as client:
        await client.put("/api/v1/db/m1")
        await client.get("/api/v1/db/nope")
        text = (await client.get("/metrics")).text
    assert 'skald_http_requests_total{method="PUT",route="/api/v1/db/<db_id>",status="201"} 1.0' in text
    assert 'skald_requests_rejected_total{code="document_not_found"} 1.0' in text
    for name in (
        "skald_http_request_duration_seconds_bucket",
        "skald_actors_open",
        "skald_actors_started_total",
        "skald_mailbox_depth",
        "skald_commit_batch_size_bucket",
        "skald_commit_duration_seconds_bucket",
        "skald_data_dir_free_bytes",
    ):
        assert name in text, name


async def test_openapi_document(server: LiveServer) -> None:
    async with server.client(token=None) as client:
        spec = (await client.get("/openapi.json")).json()
    assert spec["info"]["title"] == "skald"
    assert "/api/v1/db/{db_id}" in spec["paths"]
    # The stream routes are served ahead of Quart, and listed all the same.
    queue = spec["paths"]["/api/v1/db/{db_id}/streams/queue/{topic}"]
    assert set(queue) == {"post", "put"} and "stream.write" in queue["post"]["description"]
    assert set(spec["paths"]["/api/v1/db/{db_id}/streams/res/{path}"]) == {"get", "post", "put"}


async def test_request_id_is_echoed(server: LiveServer) -> None:
    async with server.client(token=None) as client:
        r = await client.get("/healthz", headers={"X-Request-Id": "abc123"})
    assert r.headers["x-request-id"] == "abc123"
