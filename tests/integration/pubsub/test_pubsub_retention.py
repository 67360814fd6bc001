"""Retention policies, and streams that end when the document or the server goes away."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from support.live import LiveServer, make_settings, start_live_server
from support.sse import Event, follow, message_ids

from skald.db.connection import DocConnection
from skald.pubsub import retention as pubsub_retention

DB = "/api/v1/db/pub"


async def _publish(server: LiveServer, count: int, size: int = 10) -> list[int]:
    pubsub = server.state.pubsub
    ids: list[int] = []
    async with server.state.supervisor.open_document("pub"):  # held open across the publishes
        for i in range(count):
            result = await pubsub.publish("pub", f"t/{i % 2}", "text", b"x" * size, None, None)
            ids.append(result.message.id)
    return ids


async def test_count_policy_sweeps_in_batches(server: LiveServer) -> None:
    async with server.client() as client:
        assert (await client.put(DB)).status_code == 201
        ids = await _publish(server, 1300)
        r = await client.put(f"{DB}/messages/retention", json={"max_count": 100})
        assert r.json()["removed"] == 1200  # three sweep batches (500 + 500 + 200)
        polled = (await client.get(f"{DB}/messages", params={"limit": 1000})).json()
        assert [m["id"] for m in polled["messages"]] == ids[-100:]
        assert polled["reset"]["oldest_id"] == ids[1200]
        # removing the policy keeps everything again
        r = await client.put(f"{DB}/messages/retention", json={"max_count": None})
        assert r.json()["removed"] == 0
        more = await _publish(server, 200)
        polled = (await client.get(f"{DB}/messages", params={"since_id": ids[-1], "limit": 1000})).json()
        assert [m["id"] for m in polled["messages"]] == more


async def test_bytes_and_age_policies(server: LiveServer) -> None:
    async with server.client() as client:
        assert (await client.put(DB)).status_code == 201
        ids = await _publish(server, 10, size=100)
        r = await client.put(f"{DB}/messages/retention", json={"max_bytes": 450})
        assert r.json()["removed"] == 6
        remaining = (await client.get(f"{DB}/messages")).json()["messages"]
        assert [m["id"] for m in remaining] == ids[6:]
        # make the two oldest remaining messages a day old, then keep one hour
        async with server.state.supervisor.open_document("pub") as actor:

            def age(conn: DocConnection) -> None:
                conn.execute(
                    "UPDATE _skald_messages SET created_at = '2000-01-01T00:00:00.000Z' WHERE id IN (?, ?)",
                    (ids[6], ids[7]),
                )

            await actor.write(age)
        r = await client.put(f"{DB}/messages/retention", json={"max_age_seconds": 3600})
        assert r.json()["removed"] == 2
        remaining = (await client.get(f"{DB}/messages")).json()["messages"]
        assert [m["id"] for m in remaining] == ids[8:]
        policy = (await client.get(f"{DB}/messages/retention")).json()
        assert policy == {"max_age_seconds": 3600.0, "max_count": None, "max_bytes": None, "pruned_through": ids[7]}
        for bad in [{"max_count": 1.5}, {"max_bytes": "x"}, {"max_age_seconds": 0}, {"other": 1}, [1]]:
            assert (await client.put(f"{DB}/messages/retention", json=bad)).status_code == 400


async def test_dedupe_key_is_free_again_after_retention(server: LiveServer) -> None:
    async with server.client() as client:
        assert (await client.put(DB)).status_code == 201
        first = await client.post(f"{DB}/messages", json={"topic": "t", "payload": 1, "dedupe_key": "k"})
        await client.post(f"{DB}/messages", json={"topic": "t", "payload": 2})
        await client.put(f"{DB}/messages/retention", json={"max_count": 1})
        again = await client.post(f"{DB}/messages", json={"topic": "t", "payload": 3, "dedupe_key": "k"})
        assert again.status_code == 201 and again.json()["id"] > first.json()["id"]


async def test_stream_ends_when_document_is_deleted(server: LiveServer) -> None:
    async with server.client() as client:
        assert (await client.put(DB)).status_code == 201
        live = trio.Event()

        def note_live(events: list[Event]) -> bool:
            if events[-1][0] == "heartbeat":
                live.set()
            return False  # read until the server ends the stream

        async with trio.open_nursery() as nursery:
            result: list[list[Event]] = []

            async def subscriber() -> None:
                result.append(await follow(client, f"{DB}/events/stream", note_live, params={"since_id": 0}))

            nursery.start_soon(subscriber)
            await live.wait()
            assert server.state.metrics.registry.get_sample_value("skald_sse_subscribers") == 1
            async with server.client() as admin:
                assert (await admin.delete(DB)).status_code == 204
        assert message_ids(result[0]) == []
        assert server.state.metrics.registry.get_sample_value("skald_sse_subscribers") == 0


async def test_stream_ends_on_server_shutdown(server: LiveServer) -> None:
    async with server.client() as client:
        assert (await client.put(DB)).status_code == 201
        r = await client.post(f"{DB}/messages", json={"topic": "t", "payload": 1})
        live = trio.Event()

        def note_live(events: list[Event]) -> bool:
            if events[-1][0] == "heartbeat":
                live.set()
            return False

        async with trio.open_nursery() as nursery:
            result: list[list[Event]] = []

            async def subscriber() -> None:
                # follow() returning normally means the response ended cleanly (final chunk sent):
                # had hypercorn cancelled the stream at its graceful timeout, httpx would raise
                # RemoteProtocolError (incomplete chunked read)
                result.append(await follow(client, f"{DB}/events/stream", note_live, params={"since_id": 0}))

            nursery.start_soon(subscriber)
            await live.wait()
            await server.stop()
        assert message_ids(result[0]) == [r.json()["id"]]


async def test_background_sweep_enforces_the_policy(
    nursery: trio.Nursery, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pubsub_retention, "SWEEP_INTERVAL_SECONDS", 0.05)
    live = await start_live_server(nursery, make_settings(data_dir))
    try:
        async with live.client() as client:
            assert (await client.put(DB)).status_code == 201
            policy = await client.put(f"{DB}/messages/retention", json={"max_count": 2})
            assert policy.json()["removed"] == 0
            ids = [
                (await client.post(f"{DB}/messages", json={"topic": "t", "payload": i})).json()["id"] for i in range(6)
            ]
            with trio.fail_after(20):
                while True:  # polling with a bound: the sweep runs in the background
                    kept = [m["id"] for m in (await client.get(f"{DB}/messages")).json()["messages"]]
                    if len(kept) == 2:
                        break
                    await trio.sleep(0.02)
            assert kept == ids[-2:]
    finally:
        await live.stop()
