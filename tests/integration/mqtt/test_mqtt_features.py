"""Retained messages, wills, keep-alive, the in-flight window and the slow-consumer policy."""

from __future__ import annotations

import select
from pathlib import Path

import trio
import trio.testing
from support.live import ADMIN_TOKEN, LiveServer, make_settings, start_live_server
from support.mqtt import Paho, RawClient, mqtt_port

from skald.mqtt import codec
from skald.mqtt.codec import Prop

DB = "/api/v1/db/notes"


async def test_retained_one_per_topic_delivered_on_subscribe_cleared_by_empty(mqtt_server: LiveServer) -> None:
    port = mqtt_port(mqtt_server)
    publisher = Paho(port, ADMIN_TOKEN, protocol=5)
    await publisher.connect()
    for topic, payload in [("notes/s/a", b"1"), ("notes/s/a", b"2"), ("notes/s/b", b"x"), ("notes/s/b", b"")]:
        assert await publisher.publish(topic, payload, retain=True) == 0
    await publisher.close()
    for protocol in (4, 5):
        late = Paho(port, ADMIN_TOKEN, protocol=protocol)
        try:
            await late.connect()
            await late.subscribe("notes/s/+")
            [got] = await late.wait_messages(1)
            assert (got.topic, got.payload, got.retain) == ("notes/s/a", b"2", True)
        finally:
            await late.close()
    # every retained publish is also an ordinary message of the log
    async with mqtt_server.client() as http:
        polled = (await http.get(f"{DB}/messages")).json()["messages"]
    assert [m.get("payload_text") for m in polled] == ["1", "2", "x", ""]


async def test_will_on_lost_connection_not_on_disconnect(mqtt_server: LiveServer) -> None:
    port = mqtt_port(mqtt_server)
    watcher = Paho(port, ADMIN_TOKEN, protocol=5)
    await watcher.connect()
    await watcher.subscribe("notes/status/#")
    polite = Paho(port, ADMIN_TOKEN, protocol=4, will=("notes/status/polite", b"gone"))
    await polite.connect()
    await polite.disconnect()  # DISCONNECT: the will is discarded
    lost = Paho(port, ADMIN_TOKEN, protocol=4, will=("notes/status/lost", b"offline"))
    await lost.connect()
    await lost.drop()  # no DISCONNECT: the will is published
    try:
        [got] = await watcher.wait_messages(1)
        assert (got.topic, got.payload) == ("notes/status/lost", b"offline")
    finally:
        await watcher.close()
    async with mqtt_server.client() as http:
        polled = (await http.get(f"{DB}/messages")).json()["messages"]
    assert [m["topic"] for m in polled] == ["status/lost"]


async def test_keep_alive_expiry_ends_the_connection_and_sends_the_will(mqtt_server: LiveServer) -> None:
    port = mqtt_port(mqtt_server)
    watcher = Paho(port, ADMIN_TOKEN, protocol=5)
    await watcher.connect()
    await watcher.subscribe("notes/status/+")
    will = codec.Will("notes/status/silent", b"timed out", 1, False)
    silent, connack = await RawClient.connect(port, ADMIN_TOKEN, keep_alive=1, will=will)
    try:
        assert connack.reason == codec.Reason.SUCCESS
        # it sends nothing; within 1.5 keep-alive periods the server says so and closes
        end = await silent.next_packet()
        assert isinstance(end, codec.Disconnect) and end.reason == codec.Reason.KEEP_ALIVE_TIMEOUT
        assert await silent.next_packet() is None
        [got] = await watcher.wait_messages(1)
        assert (got.topic, got.payload) == ("notes/status/silent", b"timed out")
    finally:
        await silent.aclose()
        await watcher.close()


async def test_in_flight_window_is_the_clients_receive_maximum(mqtt_server: LiveServer) -> None:
    port = mqtt_port(mqtt_server)
    client, _ = await RawClient.connect(port, ADMIN_TOKEN, properties=[(Prop.RECEIVE_MAXIMUM, 3)])
    try:
        await client.send(codec.Subscribe(1, [codec.Subscription("notes/w", 1)]))
        assert isinstance(await client.next_packet(), codec.SubAck)
        async with mqtt_server.client() as http:
            for i in range(6):
                r = await http.post(f"{DB}/messages", json={"topic": "w", "payload_text": str(i)})
                assert r.status_code == 201
        first = [await client.next_packet() for _ in range(3)]
        assert [p.payload for p in first] == [b"0", b"1", b"2"]
        await trio.testing.wait_all_tasks_blocked()  # the server (same trio run) has nothing more to do
        # and sent no fourth PUBLISH: the window is full (nothing buffered, nothing readable)
        assert client.reader._buffer == b""
        poll = select.poll()
        poll.register(client.stream.socket.fileno(), select.POLLIN)
        assert poll.poll(0) == []
        await client.send(codec.PubAck(first[0].packet_id))
        fourth = await client.next_packet()
        assert fourth.payload == b"3"
    finally:
        await client.aclose()


async def test_slow_consumer_is_cut_off_with_its_cursor_kept(nursery: trio.Nursery, data_dir: Path) -> None:
    live = await start_live_server(nursery, make_settings(data_dir, mqtt_port=0, subscriber_buffer=8))
    try:
        async with live.client() as http:
            assert (await http.put(DB)).status_code == 201
        port = mqtt_port(live)
        props: codec.Properties = [(Prop.SESSION_EXPIRY_INTERVAL, 600)]
        slow, _ = await RawClient.connect(port, ADMIN_TOKEN, client_id="slow", clean=False, properties=props)
        await slow.send(codec.Subscribe(1, [codec.Subscription("notes/big", 0)]))
        assert isinstance(await slow.next_packet(), codec.SubAck)
        # it stops reading; 400 messages of 64 KiB are far more than socket buffers and 8 buffered messages
        publisher = Paho(port, ADMIN_TOKEN, protocol=5)
        await publisher.connect()
        payloads = [f"{i:06d}".encode() + b"." * 65536 for i in range(400)]
        assert await publisher.publish_many([("notes/big", p) for p in payloads]) == [0] * 400
        await publisher.close()
        seen: list[bytes] = []
        end = None
        while (packet := await slow.next_packet()) is not None:
            if isinstance(packet, codec.Publish):
                seen.append(packet.payload)
            else:
                end = packet
        await slow.aclose()
        assert len(seen) < len(payloads)
        assert end is None or (isinstance(end, codec.Disconnect) and end.reason == codec.Reason.QUOTA_EXCEEDED)
        assert live.state.mqtt is not None and live.state.mqtt.metrics.slow_consumers._value.get() == 1
        # reconnecting resumes from the cursor kept in the session: nothing is missing
        back, connack = await RawClient.connect(port, ADMIN_TOKEN, client_id="slow", clean=False, properties=props)
        assert connack.session_present
        rest: list[bytes] = []
        while len(set(seen) | set(rest)) < len(payloads):
            packet = await back.next_packet()
            assert isinstance(packet, codec.Publish)
            rest.append(packet.payload)
        await back.aclose()
        assert set(seen) | set(rest) == set(payloads)
        assert rest == sorted(rest)  # in order
    finally:
        await live.stop()


async def test_more_retained_messages_than_the_in_flight_window(mqtt_server: LiveServer) -> None:
    port = mqtt_port(mqtt_server)
    publisher = Paho(port, ADMIN_TOKEN, protocol=5)
    await publisher.connect()
    assert await publisher.publish_many([(f"notes/r/{i}", b"v") for i in range(5)]) == [0] * 5
    for i in range(5):
        assert await publisher.publish(f"notes/r/{i}", str(i).encode(), retain=True) == 0
    await publisher.close()
    client, _ = await RawClient.connect(port, ADMIN_TOKEN, properties=[(Prop.RECEIVE_MAXIMUM, 2)])
    try:
        await client.send(codec.Subscribe(1, [codec.Subscription("notes/r/+", 1)]))
        assert isinstance(await client.next_packet(), codec.SubAck)
        got: list[bytes] = []
        while len(got) < 5:  # two at a time: each PUBACK lets the next one go
            packet = await client.next_packet()
            assert isinstance(packet, codec.Publish) and packet.retain
            got.append(packet.payload)
            await client.send(codec.PubAck(packet.packet_id or 0))
        assert sorted(got) == [b"0", b"1", b"2", b"3", b"4"]
    finally:
        await client.aclose()
