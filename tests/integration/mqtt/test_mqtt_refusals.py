"""A token can do over MQTT what its scopes say and nothing else; each refusal is the protocol's own."""

from __future__ import annotations

import pytest
from support.live import ADMIN_TOKEN, LiveServer
from support.mqtt import Paho, mqtt_port

DB = "/api/v1/db/notes"


@pytest.mark.parametrize("protocol", [4, 5])
async def test_bad_token_is_refused_at_connack(mqtt_server: LiveServer, protocol: int) -> None:
    # 3.1.1 return code 4 and 5.0 reason 0x86: bad user name or password (paho reports both as 0x86)
    client = Paho(mqtt_port(mqtt_server), "skd_not_a_real_token", protocol=protocol)
    try:
        reason, present = await client.connect()
    finally:
        await client.close()
    assert (reason, present) == (0x86, False)


async def test_revoked_and_missing_tokens_are_refused(mqtt_server: LiveServer) -> None:
    client = Paho(mqtt_port(mqtt_server), "", protocol=5)
    try:
        assert (await client.connect())[0] == 0x86
    finally:
        await client.close()


@pytest.mark.parametrize("protocol", [4, 5])
async def test_filter_outside_prefixes_gets_a_suback_failure(mqtt_server: LiveServer, protocol: int) -> None:
    token = await mqtt_server.mint_token("notes:pub.subscribe:sensors/", "notes:pub.publish:sensors/")
    client = Paho(mqtt_port(mqtt_server), token, protocol=protocol)
    try:
        assert (await client.connect())[0] == 0
        codes = await client.subscribe("notes/sensors/+", "notes/secret/#", "+/sensors/x", "other/#")
        refused = 0x80 if protocol == 4 else 0x87
        invalid = 0x80 if protocol == 4 else 0x8F
        assert codes == [1, refused, invalid, refused]
        # "notes/#" intersects the prefix: granted, but narrowed to sensors/ as SSE narrows it
        assert await client.subscribe("notes/#") == [1]
        admin = Paho(mqtt_port(mqtt_server), ADMIN_TOKEN, protocol=5)
        await admin.connect()
        await admin.publish("notes/secret/plans", b"hidden")
        await admin.publish("notes/sensors/a", b"visible")
        await admin.close()
        got = await client.wait_messages(1)
        assert [(m.topic, m.payload) for m in got] == [("notes/sensors/a", b"visible")]
    finally:
        await client.close()


async def test_publish_outside_prefixes_puback_reason_v5(mqtt_server: LiveServer) -> None:
    token = await mqtt_server.mint_token("notes:pub.publish:sensors/")
    client = Paho(mqtt_port(mqtt_server), token, protocol=5)
    try:
        await client.connect()
        assert await client.publish("notes/secret/x", b"no") == 0x87  # not authorized
        assert await client.publish("notes/sensors/x", b"yes") == 0
        assert await client.publish("missing/sensors/x", b"no such document") == 0x87  # no scope there
        assert await client.publish("notes", b"no topic after the document") == 0x90
    finally:
        await client.close()
    async with mqtt_server.client() as http:
        polled = (await http.get(f"{DB}/messages")).json()["messages"]
    assert [m["topic"] for m in polled] == ["sensors/x"]


async def test_publish_outside_prefixes_dropped_v311(mqtt_server: LiveServer) -> None:
    token = await mqtt_server.mint_token("notes:pub.publish:sensors/")
    client = Paho(mqtt_port(mqtt_server), token, protocol=4)
    try:
        await client.connect()
        assert await client.publish("notes/secret/x", b"dropped") == 0  # acknowledged, not stored
        assert await client.publish("notes/sensors/x", b"kept") == 0
        assert client.disconnected is None  # the connection stays up
    finally:
        await client.close()
    async with mqtt_server.client() as http:
        polled = (await http.get(f"{DB}/messages")).json()["messages"]
    assert [m["topic"] for m in polled] == ["sensors/x"]
    denied = await mqtt_server.state.supervisor.service.read(
        lambda conn: [r[0] for r in conn.execute("SELECT detail_json FROM audit_log WHERE event = 'access.denied'")]
    )
    assert any("mqtt:publish:notes/secret/x" in detail for detail in denied)  # audited like an HTTP 403


async def test_payload_over_the_limit_v5(mqtt_server: LiveServer) -> None:
    client = Paho(mqtt_port(mqtt_server), ADMIN_TOKEN, protocol=5)
    limit = mqtt_server.settings.message_max_bytes
    try:
        await client.connect()
        assert await client.publish("notes/big", b"x" * (limit + 1)) == 0x97  # quota exceeded
        assert await client.publish("notes/big", b"x" * limit) == 0
    finally:
        await client.close()
