"""Client requests follow the documented shapes of routes other branches build (mock transport)."""

from __future__ import annotations

import json
from contextlib import aclosing

import httpx
import pytest
import trio

from skald.client import AsyncClient, Client, Conflict, LeaseLost, NotFound, RateLimited


def sse(*events: tuple[str, str, object]) -> bytes:
    return b"".join(f"id: {i}\nevent: {e}\ndata: {json.dumps(d)}\n\n".encode() for i, e, d in events)


async def test_query_batch_publish_bodies() -> None:
    seen: list[tuple[str, str, object]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((request.method, request.url.path, body))
        if request.url.path.endswith("/messages"):
            assert isinstance(body, dict)
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
    bodies: list[object] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        bodies.append(json.loads(request.content))
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
    assert bodies == [
        {"sql": "SELECT 1"},
        {"sql": "SELECT 1", "options": {"result_hash": "h1"}},
        {"sql": "SELECT 1", "options": {"result_hash": "h2"}},
    ]


async def test_lease_renews_and_releases(autojump_clock: trio.abc.Clock) -> None:
    seen: list[tuple[str, object]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.url.path.rsplit("/", 1)[1], body))
        lease = {"resource": "r", "owner": "o", "fence": 7, "ttl_seconds": 3.0, "expires_at": str(len(seen))}
        if len(seen) == 1:
            lease["lease_token"] = "tok"
        return httpx.Response(200, json=lease)

    client = AsyncClient("http://x", "t", transport=httpx.MockTransport(handler))
    async with client, client.lease("notes", "r", ttl_seconds=3, owner="o") as lease:
        await trio.sleep(2.5)
        assert lease["expires_at"] == "3" and lease["lease_token"] == "tok"
    assert seen == [
        ("acquire", {"resource": "r", "owner": "o", "ttl_seconds": 3}),
        ("renew", {"resource": "r", "lease_token": "tok", "ttl_seconds": 3}),
        ("renew", {"resource": "r", "lease_token": "tok", "ttl_seconds": 3}),
        ("release", {"resource": "r", "lease_token": "tok"}),
    ]


async def test_lease_lost_cancels_the_block(autojump_clock: trio.abc.Clock) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("acquire"):
            lease = {"resource": "r", "owner": "o", "fence": 1, "ttl_seconds": 3, "lease_token": "tok"}
            return httpx.Response(201, json=lease)
        return httpx.Response(409, json={"code": "lease_expired", "detail": "gone"})

    client = AsyncClient("http://x", "t", transport=httpx.MockTransport(handler))
    reached_end = False
    with pytest.raises(LeaseLost) as lost:
        async with client, client.lease("notes", "r", ttl_seconds=3):
            await trio.sleep(10)
            reached_end = True
    assert lost.value.code == "lease_expired" and not reached_end


async def test_lease_block_errors_are_not_wrapped() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        lease = {"resource": "r", "owner": "o", "fence": 1, "ttl_seconds": 3, "lease_token": "tok"}
        return httpx.Response(200, json=lease)

    client = AsyncClient("http://x", "t", transport=httpx.MockTransport(handler))
    with pytest.raises(KeyError):
        async with client, client.lease("notes", "r"):
            raise KeyError("mine")


async def test_blob_and_lease_request_shapes() -> None:
    seen: list[tuple[str, str, object]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((request.method, str(request.url.copy_with(scheme="http")).split("://x")[-1], body))
        if request.url.path.endswith("init-upload"):
            assert isinstance(body, dict)
            return httpx.Response(200, json={"sha256": body["sha256"], "size": 1, "exists": True})
        return httpx.Response(200, json={"blobs": [], "url": "u"})

    async with AsyncClient("http://x", "t", transport=httpx.MockTransport(handler)) as client:
        result = await client.upload_blob("m", b"a", "text/plain", ref="r1")
        await client.release_blob("m", result["sha256"], "r1")
        await client.blob_url("m", result["sha256"])
        await client.list_blobs("m", limit=5)
    digest = result["sha256"]
    assert result == {"sha256": digest, "size": 1, "uploaded": False, "ref": "r1"}
    assert seen == [
        ("POST", "/api/v1/db/m/blobs/init-upload", {"sha256": digest, "size": 1, "content_type": "text/plain"}),
        ("POST", "/api/v1/db/m/blobs/claim", {"sha256": digest, "ref": "r1"}),
        ("POST", "/api/v1/db/m/blobs/release", {"sha256": digest, "ref": "r1"}),
        ("GET", f"/api/v1/db/m/blobs/{digest}/read-url", None),
        ("GET", "/api/v1/db/m/blobs?limit=5", None),
    ]


def test_blocking_errors_carry_code() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("acquire"):
            return httpx.Response(409, json={"status": 409, "code": "lease_held", "detail": "held by b"})
        return httpx.Response(429, json={"status": 429, "code": "rate_limited", "retry_after": 3})

    with Client("http://x", "t", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(Conflict) as conflict:
            client.acquire_lease("notes", "r", 10, owner="a")
        assert (conflict.value.status, conflict.value.code, conflict.value.detail) == (
            409,
            "lease_held",
            "held by b",
        )
        with pytest.raises(RateLimited) as limited:
            client.stream_next("notes", "q")
        assert limited.value.retry_after == 3


def test_idle_events_follow_the_clock_not_the_heartbeats() -> None:
    """``subscribe(idle_timeout=)`` (both clients share this cursor): ``idle`` once per quiet
    period, measured from the subscription's start or the last message/idle; a reconnect does not
    restart the period."""
    from skald.client._api import SubscribeCursor
    from skald.client.types import Event

    now = [0.0]
    cursor = SubscribeCursor("notes", ["a/#"], None, None, 0.5, 1.0, lambda: now[0])
    cursor.call()  # the first connection starts the clock
    seen = []
    for at, name in [(0.5, "heartbeat"), (1.0, "heartbeat"), (1.5, "heartbeat"), (1.9, "message"),
                     (2.8, "heartbeat"), (2.9, "heartbeat"), (3.5, "heartbeat")]:
        now[0] = at
        if at == 2.8:
            cursor.call()  # a reconnect in the middle of a quiet period
        shown = cursor.accept(Event(name, "7" if name == "message" else "", {}))
        seen.append((at, shown.event if shown else None))
    assert seen == [(0.5, None), (1.0, "idle"), (1.5, None), (1.9, "message"), (2.8, None), (2.9, "idle"),
                    (3.5, None)]
    assert cursor.call().headers == {"Accept": "text/event-stream", "Last-Event-ID": "7"}

    quiet = SubscribeCursor("notes", ["a/#"], None, None, 0.5, None, lambda: now[0])
    quiet.call()
    now[0] = 100.0
    assert quiet.accept(Event("heartbeat", "", {})) is None  # no idle_timeout: never idle
