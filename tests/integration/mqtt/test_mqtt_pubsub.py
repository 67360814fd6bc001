"""MQTT and HTTP/SSE speak to one pub/sub log: what one side publishes, the other receives."""

from __future__ import annotations

import base64
import subprocess

import pytest
import trio
from support.live import ADMIN_TOKEN, LiveServer
from support.mqtt import Paho, mqtt_port
from support.sse import follow, message_ids

DB = "/api/v1/db/notes"


@pytest.mark.parametrize("protocol", [4, 5])
async def test_mqtt_publish_reaches_sse_and_mqtt(mqtt_server: LiveServer, protocol: int) -> None:
    port = mqtt_port(mqtt_server)
    subscriber = Paho(port, ADMIN_TOKEN, protocol=protocol)
    publisher = Paho(port, ADMIN_TOKEN, protocol=protocol)
    try:
        assert (await subscriber.connect())[0] == 0
        assert await subscriber.subscribe("notes/sensors/+") == [1]
        assert (await publisher.connect())[0] == 0
        assert await publisher.publish("notes/sensors/kitchen", b"21.5") == 0
        assert await publisher.publish("notes/sensors/hall", bytes([0, 255]), qos=0) is None
        assert await publisher.publish("notes/other/x", b"not for the subscriber") == 0
        got = await subscriber.wait_messages(2)
        assert [(m.topic, m.payload) for m in got[:2]] == [
            ("notes/sensors/kitchen", b"21.5"), ("notes/sensors/hall", bytes([0, 255]))
        ]
        async with mqtt_server.client() as client:
            events = await follow(client, f"{DB}/events/stream", lambda ev: len(message_ids(ev)) >= 3,
                                  params={"since_id": 0})
        messages = [e[2] for e in events if e[0] == "message"]
        assert [m["topic"] for m in messages] == ["sensors/kitchen", "sensors/hall", "other/x"]
        assert messages[0]["payload_text"] == "21.5"  # UTF-8 payloads are text over HTTP
        assert base64.b64decode(messages[1]["payload_base64"]) == bytes([0, 255])  # binary stays binary
    finally:
        await subscriber.close()
        await publisher.close()


async def test_http_publish_reaches_mqtt(mqtt_server: LiveServer) -> None:
    client5 = Paho(mqtt_port(mqtt_server), ADMIN_TOKEN, protocol=5)
    try:
        await client5.connect()
        assert await client5.subscribe("notes/#") == [1]
        async with mqtt_server.client() as client:
            r = await client.post(f"{DB}/messages", json={"topic": "a/b", "payload": {"x": 1},
                                                          "content_type": "application/json"})
            assert r.status_code == 201
        [got] = await client5.wait_messages(1)
        assert (got.topic, got.payload, got.qos) == ("notes/a/b", b'{"x":1}', 1)
        assert got.properties == {"PayloadFormatIndicator": 1, "ContentType": "application/json"}
    finally:
        await client5.close()


async def test_mosquitto_clients_round_trip(mqtt_server: LiveServer) -> None:
    """The Debian command-line clients, as the README shows them."""
    port = str(mqtt_server.state.mqtt.port if mqtt_server.state.mqtt else 0)
    async with trio.open_nursery() as nursery:
        sub_cmd = ["mosquitto_sub", "-p", port, "-u", "me", "-P", ADMIN_TOKEN, "-t", "notes/sensors/#", "-C", "1",
                   "-v", "-q", "1"]
        result: list[subprocess.CompletedProcess[bytes]] = []

        async def run_sub() -> None:
            result.append(await trio.run_process(sub_cmd, capture_stdout=True))

        nursery.start_soon(run_sub)
        # mosquitto_sub has subscribed once the server holds a live subscriber on the document
        pubsub = mqtt_server.state.pubsub
        while not pubsub.subscribers_gauge._value.get():
            await trio.lowlevel.checkpoint()
        await trio.run_process(["mosquitto_pub", "-p", port, "-u", "me", "-P", ADMIN_TOKEN, "-t",
                                "notes/sensors/kitchen", "-m", "21.5", "-q", "1"])
    assert result[0].stdout == b"notes/sensors/kitchen 21.5\n"


async def test_mosquitto_sub_persistent_session_gets_what_it_missed(mqtt_server: LiveServer) -> None:
    """README's ``mosquitto_sub -i kitchen-display -c``: it SUBSCRIBEs again on every connect, and that
    must not move the replay start past the messages published while it was away."""
    service = mqtt_server.state.mqtt
    assert service is not None
    port = str(service.port)
    sub_cmd = ["mosquitto_sub", "-p", port, "-u", "me", "-P", ADMIN_TOKEN, "-i", "kitchen-display", "-c",
               "-t", "notes/sensors/#", "-q", "1", "-v"]

    async def pub(message: str) -> None:
        await trio.run_process(["mosquitto_pub", "-p", port, "-u", "me", "-P", ADMIN_TOKEN, "-t",
                                "notes/sensors/kitchen", "-m", message, "-q", "1"])

    async with trio.open_nursery() as nursery:
        first: list[subprocess.CompletedProcess[bytes]] = []

        async def run_first() -> None:
            first.append(await trio.run_process([*sub_cmd, "-C", "1"], capture_stdout=True))

        nursery.start_soon(run_first)
        # Subscribed once the subscription's start is known (ids after it are delivered; the SUBACK
        # follows): a message committed before that may or may not be sent, as MQTT allows.
        while (conn := service.connections.get("kitchen-display")) is None or conn.session is None or (
            (subscription := conn.session.subscriptions.get("notes/sensors/#")) is None or subscription.start is None
        ):
            await trio.lowlevel.checkpoint()
        await pub("21.5")
    assert first[0].stdout == b"notes/sensors/kitchen 21.5\n"
    while "kitchen-display" in service.connections:  # the session is stored when the connection ends
        await trio.lowlevel.checkpoint()
    await pub("22.0")
    await pub("22.5")
    # -W: give up (rather than hang the test) if the missed messages never come
    again = await trio.run_process([*sub_cmd, "-C", "2", "-W", "20"], capture_stdout=True, check=False)
    assert again.stdout == b"notes/sensors/kitchen 22.0\nnotes/sensors/kitchen 22.5\n"
