"""The SSE topic-matching table, run through MQTT: both sides deliver exactly the same topics."""

from __future__ import annotations

import trio
from support.live import ADMIN_TOKEN, LiveServer
from support.mqtt import Paho, mqtt_port
from unit.pubsub.test_topics import MATCH_TABLE

from skald.errors import SkaldError
from skald.pubsub.topics import TopicFilter, validate_topic

DB = "/api/v1/db/notes"
SENTINEL = "zz/end"  # published last: once a client has it, it has everything before it (one follower, id order)


def _valid(topic: str) -> bool:
    try:
        validate_topic(topic)
    except SkaldError:
        return False
    return True


async def test_match_table_through_mqtt_and_sse(mqtt_server: LiveServer) -> None:
    port = mqtt_port(mqtt_server)
    cases = [(p, t, e) for p, t, e in MATCH_TABLE if _valid(t)]
    patterns = sorted({p for p, _t, _e in cases})
    topics = sorted({t for _p, t, _e in cases})
    assert SENTINEL not in topics and len(cases) >= 25
    clients = {p: Paho(port, ADMIN_TOKEN, protocol=5 if i % 2 else 4) for i, p in enumerate(patterns)}
    received: dict[str, set[str]] = {}
    try:
        for pattern, client in clients.items():
            await client.connect()
            assert await client.subscribe(f"notes/{pattern}", f"notes/{SENTINEL}") == [1, 1]
        publisher = Paho(port, ADMIN_TOKEN, protocol=5)
        await publisher.connect()
        assert await publisher.publish_many([(f"notes/{t}", t.encode()) for t in [*topics, SENTINEL]]) == [0] * (
            len(topics) + 1
        )
        await publisher.close()
        for pattern, client in clients.items():
            got = await client.wait_until(lambda ms: any(m.topic == f"notes/{SENTINEL}" for m in ms))
            received[pattern] = {m.topic.removeprefix("notes/") for m in got} - {SENTINEL}
    finally:
        async with trio.open_nursery() as nursery:
            for client in clients.values():
                nursery.start_soon(client.close)
    for pattern, topic, expected in cases:
        assert (topic in received[pattern]) is expected, (pattern, topic)
    async with mqtt_server.client() as http:
        for pattern in patterns:
            polled = (await http.get(f"{DB}/messages", params={"topic": pattern, "limit": 1000})).json()
            over_sse_api = {m["topic"] for m in polled["messages"]} - {SENTINEL}
            assert over_sse_api == received[pattern], pattern
            assert over_sse_api == {t for t in topics if TopicFilter.parse(pattern).matches(t)}
