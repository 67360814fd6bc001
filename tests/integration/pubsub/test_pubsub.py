from __future__ import annotations

import base64
from typing import Any

import httpx
import trio
from support.live import LiveServer
from support.sse import Event, follow, message_ids

DB = "/api/v1/db/pub"


async def _create(client: httpx.AsyncClient) -> None:
    assert (await client.put(DB)).status_code == 201


async def collect(
    client: httpx.AsyncClient, params: Any, count: int, headers: dict[str, str] | None = None
) -> list[Event]:
    """Read events until ``count`` message events (or an error event) arrived."""

    def enough(events: list[Event]) -> bool:
        return len(message_ids(events)) >= count or events[-1][0] == "error"

    return await follow(client, f"{DB}/events/stream", enough, params=params, headers=headers)


async def test_publish_forms_and_replay(server: LiveServer) -> None:
    async with server.client() as client:
        await _create(client)
        r1 = await client.post(f"{DB}/messages", json={"topic": "a/b", "payload": {"x": [1, 2]}})
        assert r1.status_code == 201
        assert set(r1.json()) == {"id", "topic", "created_at"}
        r2 = await client.post(f"{DB}/messages", json={"topic": "a/c", "payload_text": "héllo",
                                                      "content_type": "text/plain"})
        raw = base64.b64encode(b"\0\1").decode()
        r3 = await client.post(f"{DB}/messages", json={"topic": "z", "payload_base64": raw})
        ids = [r.json()["id"] for r in (r1, r2, r3)]
        assert ids == sorted(ids) and len(set(ids)) == 3
        events = await collect(client, {"since_id": 0}, 3)
        msgs = [e for e in events if e[0] == "message"]
        assert [int(e[1]) for e in msgs] == ids
        assert msgs[0][2]["payload"] == {"x": [1, 2]}
        assert msgs[1][2]["payload_text"] == "héllo" and msgs[1][2]["content_type"] == "text/plain"
        assert base64.b64decode(msgs[2][2]["payload_base64"]) == b"\0\1"
        # wildcard filters: a/+ only
        events = await collect(client, [("since_id", "0"), ("topic", "a/+")], 2)
        assert [e[2]["topic"] for e in events if e[0] == "message"] == ["a/b", "a/c"]
        # tail=1 -> only the last message
        events = await collect(client, {"tail": 1}, 1)
        assert [int(e[1]) for e in events if e[0] == "message"] == [ids[2]]
        # Last-Event-ID wins over since_id
        events = await collect(client, {"since_id": 0}, 1, headers={"Last-Event-ID": str(ids[1])})
        assert [int(e[1]) for e in events if e[0] == "message"] == [ids[2]]
        # JSON poll
        polled = (await client.get(f"{DB}/messages", params={"topic": "a/#", "since_id": ids[0]})).json()
        assert [m["id"] for m in polled["messages"]] == [ids[1]]


async def test_publish_validation(server: LiveServer) -> None:
    async with server.client() as client:
        await _create(client)
        bad_bodies: list[Any] = [
            {"topic": "a/+", "payload": 1},
            {"topic": "a//b", "payload": 1},
            {"topic": "", "payload": 1},
            {"topic": "x" * 256, "payload": 1},
            {"topic": "a"},
            {"topic": "a", "payload": 1, "payload_text": "x"},
            {"topic": "a", "payload_base64": "!!!"},
            [1, 2],
        ]
        for body in bad_bodies:
            r = await client.post(f"{DB}/messages", json=body)
            assert r.status_code == 400, body
            assert r.headers["content-type"] == "application/problem+json"
        too_big = "x" * (1024 * 1024 + 1)
        big = await client.post(f"{DB}/messages", json={"topic": "a", "payload_text": too_big})
        assert big.status_code == 413 and big.json()["code"] == "payload_too_large"
        ok = await client.post(f"{DB}/messages", json={"topic": "a", "payload_text": "x" * (1024 * 1024)})
        assert ok.status_code == 201
        r = await client.get(f"{DB}/events/stream", params={"since_id": 1, "tail": 2})
        assert r.status_code == 400
        r = await client.get(f"{DB}/events/stream", params={"tail": 1001})
        assert r.status_code == 400
        r = await client.get(f"{DB}/events/stream", params={"topic": "a/#/b"})
        assert r.status_code == 400
        r = await client.get("/api/v1/db/missing/events/stream")
        assert r.status_code == 404


async def test_dedupe_returns_original(server: LiveServer) -> None:
    async with server.client() as client:
        await _create(client)
        first = await client.post(f"{DB}/messages", json={"topic": "t", "payload": 1, "dedupe_key": "k"})
        again = await client.post(f"{DB}/messages", json={"topic": "t", "payload": 2, "dedupe_key": "k"})
        other = await client.post(f"{DB}/messages", json={"topic": "u", "payload": 3, "dedupe_key": "k"})
        assert first.status_code == 201 and again.status_code == 200 and other.status_code == 201
        assert again.json()["id"] == first.json()["id"]
        polled = (await client.get(f"{DB}/messages")).json()["messages"]
        assert [m["payload"] for m in polled] == [1, 3]


async def test_live_delivery_and_heartbeat(server: LiveServer) -> None:
    async with server.client() as client:
        await _create(client)
        got: list[tuple[str, str, Any]] = []
        live = trio.Event()
        done = trio.Event()

        async def subscriber() -> None:
            def enough(events: list[Event]) -> bool:
                if events[-1][0] == "heartbeat":
                    live.set()
                beats = sum(1 for e in events if e[0] == "heartbeat")
                return beats >= 3 and bool(message_ids(events))

            got.extend(await follow(client, f"{DB}/events/stream", enough,
                                    params={"topic": "s/#", "heartbeat": "0.1"}))
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(subscriber)
            await live.wait()
            await client.post(f"{DB}/messages", json={"topic": "other", "payload": 0})
            r = await client.post(f"{DB}/messages", json={"topic": "s", "payload": 1})
            await done.wait()
        messages = [g for g in got if g[0] == "message"]
        assert [int(m[1]) for m in messages] == [r.json()["id"]]
        metrics = (await client.get("/metrics")).text
        assert "skald_messages_published_total 2.0" in metrics
        assert "skald_sse_subscribers" in metrics


async def test_prefix_token_sees_only_its_topics(server: LiveServer) -> None:
    async with server.client() as admin:
        await _create(admin)
        for topic in ["sensors/a", "secret/x", "sensors/b/c"]:
            await admin.post(f"{DB}/messages", json={"topic": topic, "payload": topic})
    token = await server.mint_token("pub:pub.subscribe:sensors/", "pub:pub.publish:sensors/")
    async with server.client(token) as client:
        events = await collect(client, {"since_id": 0}, 2)
        assert [e[2]["topic"] for e in events if e[0] == "message"] == ["sensors/a", "sensors/b/c"]
        events = await collect(client, [("since_id", "0"), ("topic", "+/b/#")], 1)
        assert [e[2]["topic"] for e in events if e[0] == "message"] == ["sensors/b/c"]
        denied = await client.get(f"{DB}/events/stream", params={"topic": "secret/#"})
        assert denied.status_code == 403
        polled = (await client.get(f"{DB}/messages")).json()["messages"]
        assert [m["topic"] for m in polled] == ["sensors/a", "sensors/b/c"]
        r = await client.post(f"{DB}/messages", json={"topic": "secret/y", "payload": 1})
        assert r.status_code == 403
        r = await client.post(f"{DB}/messages", json={"topic": "sensors/y", "payload": 1})
        assert r.status_code == 201


async def test_retention_reset(server: LiveServer) -> None:
    async with server.client() as client:
        await _create(client)
        ids = []
        for i in range(10):
            ids.append((await client.post(f"{DB}/messages", json={"topic": "t", "payload": i})).json()["id"])
        assert (await client.get(f"{DB}/messages/retention")).json()["max_count"] is None
        r = await client.put(f"{DB}/messages/retention", json={"max_count": 4})
        assert r.status_code == 200 and r.json()["removed"] == 6
        assert (await client.get(f"{DB}/messages/retention")).json()["pruned_through"] == ids[5]
        events = await collect(client, {"since_id": ids[1]}, 4)
        assert events[0][0] == "reset"
        assert events[0][2]["oldest_id"] == ids[6]
        assert [int(e[1]) for e in events if e[0] == "message"] == ids[6:]
        # a cursor inside the retained range: no reset
        events = await collect(client, {"since_id": ids[7]}, 2)
        assert [e[0] for e in events if e[0] != "heartbeat"] == ["message", "message"]
        r = await client.put(f"{DB}/messages/retention", json={"max_count": -1})
        assert r.status_code == 400
        token = await server.mint_token("pub:pub.subscribe")
    async with server.client(token) as other:
        assert (await other.put(f"{DB}/messages/retention", json={})).status_code == 403


async def test_ping_requires_auth(server: LiveServer) -> None:
    async with server.client(None) as anon:
        assert (await anon.post(f"{DB}/ping", json={})).status_code == 401
    async with server.client() as client:
        r = await client.post(f"{DB}/ping", json={"x": 1})
        assert r.status_code == 200 and r.json() == {"ok": True}
