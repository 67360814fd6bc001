"""Paced, coalesced fan-out over real SSE streams: every subscriber gets every message once, in order."""

from __future__ import annotations

import trio
from support.live import LiveServer
from support.sse import Event, follow, message_ids

DB = "/api/v1/db/fan"
MESSAGES = 40


async def test_paced_fan_out_delivers_every_message_once_in_order_to_every_subscriber(server: LiveServer) -> None:
    pubsub = server.state.pubsub
    pubsub.fanout_slice = 2  # six subscribers are three slices: the paced path, with passes in flight
    pubsub.fanout_interval = 0.005
    seen: list[list[int]] = []
    async with server.client() as client:
        assert (await client.put(DB)).status_code == 201

        def enough(events: list[Event]) -> bool:
            return len(message_ids(events)) >= MESSAGES or events[-1][0] == "error"

        async def subscriber() -> None:
            # since_id=0: what was committed before this stream went live comes from storage, the rest
            # from the hub; the stream must merge both without a gap or a repeat
            events = await follow(client, f"{DB}/events/stream", enough, params={"since_id": 0})
            seen.append(message_ids(events))

        published: list[int] = []
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(subscriber)
            batch = {"messages": [{"topic": "t", "payload": {"n": n}} for n in range(MESSAGES // 2)]}
            reply = await client.post(f"{DB}/messages", json=batch)
            assert reply.status_code == 201
            published += reply.json()["ids"]
            for n in range(MESSAGES // 2):
                reply = await client.post(f"{DB}/messages", json={"topic": "t", "payload": {"n": n}})
                assert reply.status_code == 201
                published.append(reply.json()["id"])
    assert len(seen) == 6
    assert all(ids == sorted(published) for ids in seen)
