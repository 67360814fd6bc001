"""Persistent sessions: a client that comes back gets every message it missed, from the durable log."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from support.live import ADMIN_TOKEN, LiveServer, make_settings, start_live_server
from support.mqtt import Paho, mqtt_port
from support.sse import follow, message_ids

DB = "/api/v1/db/notes"


@pytest.mark.parametrize("protocol", [4, 5])
async def test_reconnect_gets_exactly_the_missed_messages_in_order(mqtt_server: LiveServer, protocol: int) -> None:
    port = mqtt_port(mqtt_server)
    device = Paho(port, ADMIN_TOKEN, client_id=f"device-{protocol}", protocol=protocol, clean=False,
                  session_expiry=3600)
    assert await device.connect() == (0, False)
    assert await device.subscribe("notes/sensors/+") == [1]
    await device.disconnect()
    session = mqtt_server.state.mqtt.sessions.sessions[f"device-{protocol}"]  # type: ignore[union-attr]
    cursor = session.cursors["notes"]

    # 1,000 publishes it subscribed to while it is away (over MQTT, QoS 1: each acknowledged after its
    # commit), with 200 on a topic its filter does not match in between
    publisher = Paho(port, ADMIN_TOKEN, protocol=protocol)
    await publisher.connect()
    batch = [("notes/other/ignored" if i % 6 == 5 else "notes/sensors/kitchen", str(i).encode()) for i in range(1200)]
    assert await publisher.publish_many(batch) == [0] * 1200
    await publisher.close()
    expected_payloads = [payload for topic, payload in batch if topic == "notes/sensors/kitchen"]
    assert len(expected_payloads) == 1000
    ids_by_payload: dict[bytes, int] = {}
    async with mqtt_server.client() as client:
        sse = await follow(client, f"{DB}/events/stream", lambda ev: len(message_ids(ev)) >= len(expected_payloads),
                           params={"since_id": cursor, "topic": "sensors/+"})
        since = cursor
        while True:
            page = (await client.get(f"{DB}/messages", params={"since_id": since, "limit": 1000})).json()
            if not page["messages"]:
                break
            ids_by_payload.update({m["payload_text"].encode(): m["id"] for m in page["messages"]})
            since = page["next_since_id"]
    expected = [(ids_by_payload[p], p) for p in expected_payloads]

    back = Paho(port, ADMIN_TOKEN, client_id=f"device-{protocol}", protocol=protocol, clean=False,
                session_expiry=3600)
    try:
        assert await back.connect() == (0, True)  # session present: no SUBSCRIBE needed
        got = await back.wait_messages(len(expected))
        assert [m.payload for m in got] == [payload for _id, payload in expected]
        assert all(m.topic == "notes/sensors/kitchen" for m in got)
        # exactly the ids an SSE replay from the session's cursor gives
        assert message_ids(sse) == [message_id for message_id, _ in expected]
        connection = mqtt_server.state.mqtt.connections[f"device-{protocol}"]  # type: ignore[union-attr]
    finally:
        await back.close()
    await connection.finished.wait()  # the server has seen it go and stored the cursor
    # everything was acknowledged: the cursor moved to the last message
    assert session.cursors["notes"] >= expected[-1][0]


async def test_clean_session_forgets(mqtt_server: LiveServer) -> None:
    port = mqtt_port(mqtt_server)
    first = Paho(port, ADMIN_TOKEN, client_id="forgetful", protocol=4, clean=False)
    await first.connect()
    await first.subscribe("notes/a")
    await first.disconnect()
    clean = Paho(port, ADMIN_TOKEN, client_id="forgetful", protocol=4, clean=True)
    try:
        assert await clean.connect() == (0, False)
        connection = mqtt_server.state.mqtt.connections["forgetful"]  # type: ignore[union-attr]
    finally:
        await clean.close()
    await connection.finished.wait()
    assert "forgetful" not in mqtt_server.state.mqtt.sessions.sessions  # type: ignore[union-attr]
    again = Paho(port, ADMIN_TOKEN, client_id="forgetful", protocol=4, clean=False)
    try:
        assert await again.connect() == (0, False)
    finally:
        await again.close()


async def test_session_survives_a_restart(nursery: trio.Nursery, data_dir: Path) -> None:
    """Sessions are stored in the service database: a restart keeps subscriptions and cursor."""
    settings = make_settings(data_dir, mqtt_port=0)
    live = await start_live_server(nursery, settings)
    async with live.client() as client:
        assert (await client.put(DB)).status_code == 201
    device = Paho(mqtt_port(live), ADMIN_TOKEN, client_id="sturdy", protocol=5, clean=False, session_expiry=600)
    await device.connect()
    await device.subscribe("notes/t/#")
    await device.disconnect()
    await live.stop()

    live = await start_live_server(nursery, settings)
    async with live.client() as client:
        r = await client.post(f"{DB}/messages", json={"topic": "t/1", "payload_text": "while away"})
        assert r.status_code == 201
    back = Paho(mqtt_port(live), ADMIN_TOKEN, client_id="sturdy", protocol=5, clean=False, session_expiry=600)
    try:
        assert await back.connect() == (0, True)
        [got] = await back.wait_messages(1)
        assert (got.topic, got.payload) == ("notes/t/1", b"while away")
    finally:
        await back.close()
        await live.stop()


async def test_shutdown_disconnects_with_0x8b_and_keeps_the_session(nursery: trio.Nursery, data_dir: Path) -> None:
    import sqlite3

    live = await start_live_server(nursery, make_settings(data_dir, mqtt_port=0))
    async with live.client() as client:
        assert (await client.put(DB)).status_code == 201
    device = Paho(mqtt_port(live), ADMIN_TOKEN, client_id="stays", protocol=5, clean=False, session_expiry=600)
    await device.connect()
    await device.subscribe("notes/x/#")
    await live.stop()
    try:
        assert await device.wait_disconnected() == 0x8B  # server shutting down
    finally:
        await device.close()
    conn = sqlite3.connect(live.settings.service_db_path)
    try:
        rows = conn.execute("SELECT client_id, state_json FROM mqtt_sessions").fetchall()
    finally:
        conn.close()
    assert [r[0] for r in rows] == ["stays"] and "notes/x/#" in rows[0][1]
