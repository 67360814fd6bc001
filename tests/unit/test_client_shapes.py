"""Client requests follow the documented shapes of routes other branches build (mock transport)."""

from __future__ import annotations

import json
from contextlib import aclosing

import httpx
import pytest
import trio

from skald.client import AsyncClient, Client, Conflict, NotFound, RateLimited


def sse(*events: tuple[str, str, object]) -> bytes:
    return b"".join(f"id: {i}\nevent: {e}\ndata: {json.dumps(d)}\n\n".encode() for i, e, d in events)


async def test_query_batch_publish_bodies() -> None:
    seen: list[tuple[str, str, object]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((request.method, request.url.path, body))
        if request.url.path.endswith("/messages"):
            return httpx.Response(201, json={"id": 1, "topic": body["topic"], "created_at": "now"})
        if request.url.path.endswith("/batch"):
            return httpx.Response(200, json={"results": [{"changes": 1}]})
        return httpx.Response(200, json={"columns": ["a"], "rows": [[1]], "row_count": 1})

    async with AsyncClient("http://x", "t", transport=httpx.MockTransport(handler)) as client:
        result = await client.query("notes", "SELECT ?", [b"\x00"], max_rows=5)
        assert result["rows"] == [[1]]
        assert await client.batch("notes", [("INSERT INTO t VALUES (?)", [1])]) == [{"changes": 1}]
        published = await client.publish("notes", "a/b", {"x": 1}, dedupe_key="k")
        assert published["id"] == 1
        await client.publish("notes", "a/b", text="hi")
        await client.publish("notes", "a/b", data=b"\xff")
    assert seen == [
        (
            "POST",
            "/api/v1/db/notes/query",
            {"sql": "SELECT ?", "args": [{"$base64": "AA=="}], "options": {"max_rows": 5}},
        ),
        (
            "POST",
            "/api/v1/db/notes/query/batch",
            {"statements": [{"sql": "INSERT INTO t VALUES (?)", "args": [1]}]},
        ),
        ("POST", "/api/v1/db/notes/messages", {"topic": "a/b", "payload": {"x": 1}, "dedupe_key": "k"}),
        ("POST", "/api/v1/db/notes/messages", {"topic": "a/b", "payload_text": "hi"}),
        ("POST", "/api/v1/db/notes/messages", {"topic": "a/b", "payload_base64": "/w=="}),
    ]


async def test_subscribe_resumes_with_last_event_id() -> None:
    headers: list[str | None] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers.get("Last-Event-ID"))
        if len(headers) == 1:
            body = sse(("1", "message", {"topic": "a"}), ("2", "message", {"topic": "a"}))
        elif len(headers) == 2:
            body = sse(("3", "message", {"topic": "a"}))
        else:  # ends the iteration (under trio, consume streams to their end rather than break)
            return httpx.Response(404, json={"code": "document_not_found", "detail": "gone"})
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    got: list[str] = []
    client = AsyncClient("http://x", "t", transport=httpx.MockTransport(handler), reconnect_delay=0)
    with pytest.raises(NotFound):
        async with client, aclosing(client.subscribe("notes", "a", since_id=0)) as events:
            async for event in events:
                got.append(event.id)
    assert got == ["1", "2", "3"]
    assert headers == [None, "2", "3"]


async def test_watch_skips_an_unchanged_snapshot_after_reconnect() -> None:
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 3:
            return httpx.Response(404, json={"code": "document_not_found", "detail": "gone"})
        events = [("", "snapshot", {"result_hash": "h1"})]
        if calls == 2:
            events.append(("", "update", {"result_hash": "h2"}))
        return httpx.Response(200, content=sse(*events), headers={"content-type": "text/event-stream"})

    hashes: list[str] = []
    client = AsyncClient("http://x", "t", transport=httpx.MockTransport(handler), reconnect_delay=0)
    with pytest.raises(NotFound):
        async with client, aclosing(client.watch("notes", "SELECT 1")) as events:
            async for event in events:
                hashes.append(event.data["result_hash"])
    assert hashes == ["h1", "h2"]


async def test_lease_renews_and_releases(autojump_clock: trio.abc.Clock) -> None:
    paths: list[str] = []
    bodies: list[dict[str, object]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path.rsplit("/", 1)[1])
        bodies.append(json.loads(request.content))
        # as the server does: renewing keeps the fence and moves the expiry
        return httpx.Response(200, json={"resource": "r", "fence": 7, "lease_token": "7.x", "expires_at": len(paths)})

    client = AsyncClient("http://x", "t", transport=httpx.MockTransport(handler))
    async with client, client.lease("notes", "r", ttl=3, holder="w") as lease:
        await trio.sleep(2.5)
        assert lease["fence"] == 7 and lease["expires_at"] >= 3  # renewed twice
    assert paths == ["acquire", "renew", "renew", "release"]
    assert bodies[0] == {"resource": "r", "owner": "w", "ttl_seconds": 3}
    assert all(b["lease_token"] == "7.x" and b["resource"] == "r" for b in bodies[1:])


def test_blocking_errors_carry_code() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("acquire"):
            return httpx.Response(409, json={"status": 409, "code": "lease_held", "detail": "held by b"})
        return httpx.Response(429, json={"status": 429, "code": "rate_limited", "retry_after": 3})

    with Client("http://x", "t", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(Conflict) as conflict:
            client.acquire_lease("notes", "r", 10)
        assert (conflict.value.status, conflict.value.code, conflict.value.detail) == (
            409,
            "lease_held",
            "held by b",
        )
        with pytest.raises(RateLimited) as limited:
            client.stream_next("notes", "q")
        assert limited.value.retry_after == 3
