"""Replay, resume and reconnect behaviour of the pub/sub SSE stream."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import httpx
import trio
from support.live import ADMIN_TOKEN, LiveServer, SkaldProcess
from support.sse import Event, follow, message_ids

DB = "/api/v1/db/pub"
STREAM = f"{DB}/events/stream"


def _stop_after(count: int) -> Callable[[list[Event]], bool]:
    def enough(events: list[Event]) -> bool:
        return len(message_ids(events)) >= count or events[-1][0] == "error"

    return enough


async def test_more_than_ten_thousand_messages(server: LiveServer) -> None:
    """Cursor lookup by index over >10,000 rows: since_id, literal and wildcard filters, tail."""
    async with server.client() as client:
        assert (await client.put(DB)).status_code == 201
    pubsub = server.state.pubsub
    ids: dict[str, list[int]] = {"even": [], "odd": []}
    async with server.state.supervisor.open_document("pub"):  # held open across the publishes

        async def publisher(start: int) -> None:
            for i in range(start, 10_400, 40):
                topic = "n/even" if i % 2 == 0 else "n/odd"
                result = await pubsub.publish("pub", topic, "json", str(i).encode(), None, None)
                ids[topic[2:]].append(result.message.id)

        async with trio.open_nursery() as nursery:
            for start in range(40):
                nursery.start_soon(publisher, start)
    every = sorted(ids["even"] + ids["odd"])
    assert len(every) == 10_400
    odd = sorted(ids["odd"])
    async with server.client() as client:
        cursor = odd[5000]
        events = await follow(client, STREAM, _stop_after(len(odd) - 5001),
                              params={"topic": "n/odd", "since_id": cursor})
        assert message_ids(events) == odd[5001:]
        events = await follow(client, STREAM, _stop_after(10),
                              params={"topic": "+/even", "since_id": every[10_000]})
        assert message_ids(events) == [i for i in every[10_001:] if i in set(ids["even"])][:10]
        events = await follow(client, STREAM, _stop_after(1000),
                              params={"tail": 1000, "topic": "n/#"})
        assert message_ids(events) == every[-1000:]
        polled = (await client.get(f"{DB}/messages", params={"since_id": every[-3], "limit": 10})).json()
        assert [m["id"] for m in polled["messages"]] == every[-2:]


async def test_resume_across_restart(tmp_path: Path) -> None:
    proc = SkaldProcess(tmp_path / "data")
    url = await proc.start()
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        async with httpx.AsyncClient(base_url=url, headers=headers) as client:
            assert (await client.put(DB)).status_code == 201
            sent = []
            for i in range(20):
                r = await client.post(f"{DB}/messages", json={"topic": f"t/{i % 3}", "payload": i})
                assert r.status_code == 201
                sent.append(r.json()["id"])
            first = await follow(client, STREAM, _stop_after(8), params={"since_id": 0})
            assert message_ids(first) == sent[:8]
        await proc.stop()
        url = await proc.start()
        async with httpx.AsyncClient(base_url=url, headers=headers) as client:
            resumed = await follow(client, STREAM, _stop_after(12),
                                   params={"since_id": 0}, headers={"Last-Event-ID": first[-1][1]})
            assert message_ids(resumed) == sent[8:]
            tail = await follow(client, STREAM, _stop_after(3), params={"tail": 3})
            assert message_ids(tail) == sent[-3:]
            since = await follow(client, STREAM, _stop_after(2),
                                 params={"since_id": sent[17], "topic": "t/+"})
            assert message_ids(since) == sent[18:]
            # new messages keep counting up after the restart (ids never reused)
            r = await client.post(f"{DB}/messages", json={"topic": "t/x", "payload": "after"})
            assert r.json()["id"] > sent[-1]
    finally:
        await proc.stop()


async def test_reconnect_race_no_gap_no_duplicate(server: LiveServer) -> None:
    """A publisher never stops while a subscriber disconnects and resumes 50 times."""
    async with server.client() as client:
        assert (await client.put(DB)).status_code == 201
    committed: list[int] = []
    received: list[int] = []
    stop_publishing = trio.Event()
    rng = random.Random(5)

    async def publisher() -> None:
        async with server.client() as pub:
            i = 0
            while not stop_publishing.is_set():
                r = await pub.post(f"{DB}/messages", json={"topic": "race", "payload": i})
                assert r.status_code == 201
                committed.append(r.json()["id"])
                i += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher)
        async with server.client() as sub:
            for round_no in range(50):
                headers = {"Last-Event-ID": str(received[-1])} if received else {}
                params = {} if received else {"since_id": "0"}
                want = rng.randint(1, 6)
                events = await follow(sub, STREAM, _stop_after(want),
                                      params={**params, "topic": "race"}, headers=headers)
                assert not [e for e in events if e[0] in {"error", "reset"}], round_no
                received.extend(message_ids(events))
            stop_publishing.set()
    # drain what was committed after the last reconnect
    async with server.client() as sub:
        remaining = len([c for c in committed if c > received[-1]])
        if remaining:
            events = await follow(sub, STREAM, _stop_after(remaining),
                                  headers={"Last-Event-ID": str(received[-1])})
            received.extend(message_ids(events))
    assert len(committed) > 50  # the publisher really ran through the reconnects
    assert received == committed
