"""skald's MQTT codec: round trips over generated packets, and packet-by-packet agreement with
an independent MQTT 5 implementation (the Rust ``mqtt5`` package) in both directions."""

from __future__ import annotations

import contextlib

import mqtt5
import pytest
from hypothesis import given
from hypothesis import strategies as st

from skald.mqtt import codec
from skald.mqtt.codec import PROTOCOL_5, PROTOCOL_311, MalformedPacket, Prop

texts = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40)
topics = texts.filter(lambda t: len(t.encode()) > 0 and "+" not in t and "#" not in t)
packet_ids = st.integers(1, 65535)
protocols = st.sampled_from([PROTOCOL_311, PROTOCOL_5])


@st.composite
def publishes(draw: st.DrawFn, protocol: int) -> codec.Publish:
    qos = draw(st.sampled_from([0, 1]))
    props: codec.Properties = []
    if protocol == PROTOCOL_5:
        if draw(st.booleans()):
            props.append((Prop.PAYLOAD_FORMAT_INDICATOR, 1))
        if draw(st.booleans()):
            props.append((Prop.CONTENT_TYPE, draw(texts)))
        props += [(Prop.USER_PROPERTY, (draw(texts), draw(texts))) for _ in range(draw(st.integers(0, 2)))]
    return codec.Publish(
        draw(topics), draw(st.binary(max_size=300)), qos, draw(st.booleans()), qos == 1 and draw(st.booleans()),
        draw(packet_ids) if qos else None, props,
    )


@given(st.data())
def test_publish_round_trip(data: st.DataObject) -> None:
    protocol = data.draw(protocols)
    packet = data.draw(publishes(protocol))
    assert codec.decode(packet.encode(protocol), protocol) == packet


@given(protocols, packet_ids, st.lists(st.tuples(topics, st.sampled_from([0, 1, 2])), min_size=1, max_size=5))
def test_subscribe_round_trip(protocol: int, packet_id: int, filters: list[tuple[str, int]]) -> None:
    packet = codec.Subscribe(packet_id, [codec.Subscription(f, q) for f, q in filters])
    assert codec.decode(packet.encode(protocol), protocol) == packet


@given(protocols, texts, st.booleans(), st.integers(0, 65535), st.none() | texts, st.none() | st.binary(max_size=60),
       st.booleans())
def test_connect_round_trip(protocol: int, client_id: str, clean: bool, keep_alive: int, username: str | None,
                            password: bytes | None, with_will: bool) -> None:
    if protocol == PROTOCOL_311 and password is not None and username is None:
        username = ""
    will = codec.Will("w/t", b"bye", 1, True) if with_will else None
    props: codec.Properties = [(Prop.SESSION_EXPIRY_INTERVAL, 60)] if protocol == PROTOCOL_5 else []
    packet = codec.Connect(protocol, client_id, clean, keep_alive, username, password, will, props)
    assert codec.decode(packet.encode(), PROTOCOL_5) == packet


@given(st.binary(max_size=200), protocols)
def test_garbage_is_malformed_never_a_crash(data: bytes, protocol: int) -> None:
    framed = bytes([data[0] if data else 0x30]) + codec.encode_varint(max(len(data) - 1, 0)) + data[1:]
    with contextlib.suppress(MalformedPacket):
        codec.decode(framed, protocol)


# ---- agreement with mqtt5 (MQTT 5 only: it has no 3.1.1) ----


@given(st.data())
def test_our_publish_reads_the_same_in_mqtt5(data: st.DataObject) -> None:
    ours = data.draw(publishes(PROTOCOL_5))
    theirs, size = mqtt5.read(memoryview(ours.encode(PROTOCOL_5)))
    assert isinstance(theirs, mqtt5.PublishPacket)
    assert size == len(ours.encode(PROTOCOL_5))
    assert (theirs.topic, theirs.payload, int(theirs.qos), theirs.retain, theirs.packet_id, theirs.duplicate) == (
        ours.topic, ours.payload, ours.qos, ours.retain, ours.packet_id, ours.dup
    )
    assert theirs.payload_format_indicator == codec.prop(ours.properties, Prop.PAYLOAD_FORMAT_INDICATOR, 0)
    assert theirs.content_type == codec.prop(ours.properties, Prop.CONTENT_TYPE)
    assert theirs.user_properties == [v for k, v in ours.properties if k == Prop.USER_PROPERTY]


@given(topics, st.binary(max_size=300), st.sampled_from([0, 1]), packet_ids, st.none() | texts)
def test_mqtt5_publish_reads_the_same_in_ours(topic: str, payload: bytes, qos: int, packet_id: int,
                                               content_type: str | None) -> None:
    theirs = mqtt5.PublishPacket(topic, payload, qos=mqtt5.QoS(qos), packet_id=packet_id if qos else None,
                                 content_type=content_type)
    ours = codec.decode(theirs.write(), PROTOCOL_5)
    assert isinstance(ours, codec.Publish)
    assert (ours.topic, ours.payload, ours.qos, ours.packet_id) == (topic, payload, qos, packet_id if qos else None)
    assert codec.prop(ours.properties, Prop.CONTENT_TYPE) == content_type


@given(texts, st.booleans(), st.integers(0, 65535), st.integers(0, 2**32 - 1), st.integers(1, 65535))
def test_mqtt5_connect_reads_the_same_in_ours(client_id: str, clean: bool, keep_alive: int, expiry: int,
                                               receive_max: int) -> None:
    theirs = mqtt5.ConnectPacket(client_id, username="u", password=b"skd_x", clean_start=clean, keep_alive=keep_alive,
                                 session_expiry_interval=expiry, receive_max=receive_max)
    ours = codec.decode(theirs.write(), PROTOCOL_5)
    assert isinstance(ours, codec.Connect)
    assert (ours.client_id, ours.clean_start, ours.keep_alive, ours.username, ours.password) == (
        client_id, clean, keep_alive, "u", b"skd_x"
    )
    assert codec.int_prop(ours.properties, Prop.SESSION_EXPIRY_INTERVAL, 0) == expiry
    assert codec.int_prop(ours.properties, Prop.RECEIVE_MAXIMUM, 65535) == receive_max


@pytest.mark.parametrize("reason", [codec.Reason.SUCCESS, codec.Reason.NOT_AUTHORIZED, codec.Reason.QUOTA_EXCEEDED])
def test_our_puback_and_connack_read_the_same_in_mqtt5(reason: codec.Reason) -> None:
    ack, _ = mqtt5.read(memoryview(codec.PubAck(7, reason, [(Prop.REASON_STRING, "why")]).encode(PROTOCOL_5)))
    assert isinstance(ack, mqtt5.PubAckPacket) and (ack.packet_id, int(ack.reason_code)) == (7, int(reason))
    connack = codec.ConnAck(True, codec.Reason.SUCCESS, [(Prop.RECEIVE_MAXIMUM, 64), (Prop.MAXIMUM_QOS, 1),
                                                         (Prop.TOPIC_ALIAS_MAXIMUM, 0)])
    theirs, _ = mqtt5.read(memoryview(connack.encode(PROTOCOL_5)))
    assert isinstance(theirs, mqtt5.ConnAckPacket)
    assert (theirs.session_present, theirs.receive_max, int(theirs.max_qos)) == (True, 64, 1)


def test_suback_reads_the_same_in_mqtt5() -> None:
    theirs, _ = mqtt5.read(memoryview(codec.SubAck(9, [1, 0x87, 0x8F]).encode(PROTOCOL_5)))
    assert isinstance(theirs, mqtt5.SubAckPacket)
    assert (theirs.packet_id, [int(c) for c in theirs.reason_codes]) == (9, [1, 0x87, 0x8F])
