"""MQTT 3.1.1 and 5.0 packets: parse what a client sends, encode what the server answers.

Sans-I/O: :func:`decode` takes the bytes of one whole packet (fixed header
included) and the connection's protocol level; ``encode`` methods return
bytes. :class:`PacketReader` frames packets off a trio stream. Why a codec of
our own: see docs/mqtt.md ("Codec") - no maintained library decodes both
protocol levels on the server side without an asyncio stream underneath.

Only what a QoS 0/1 server needs is modelled: QoS 2 publishes, AUTH and topic
aliases are parsed far enough to be refused. Every decoding error raises
:class:`MalformedPacket` with the MQTT 5 reason code the server answers with.
"""

from __future__ import annotations

import dataclasses
import enum
import struct

import trio

PROTOCOL_311 = 4
PROTOCOL_5 = 5


class PacketType(enum.IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


class Reason(enum.IntEnum):
    """MQTT 5 reason codes the server sends (3.1.1 maps them, see :func:`connack_code_311`)."""

    SUCCESS = 0x00
    GRANTED_QOS_1 = 0x01
    DISCONNECT_WITH_WILL = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USER_NAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    SERVER_SHUTTING_DOWN = 0x8B
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_IN_USE = 0x91
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    QUOTA_EXCEEDED = 0x97
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2


SUBACK_FAILURE_311 = 0x80


def connack_code_311(reason: Reason) -> int:
    """The 3.1.1 CONNACK return code closest to an MQTT 5 reason."""
    return {
        Reason.SUCCESS: 0,
        Reason.UNSUPPORTED_PROTOCOL_VERSION: 1,
        Reason.CLIENT_IDENTIFIER_NOT_VALID: 2,
        Reason.SERVER_UNAVAILABLE: 3,
        Reason.SERVER_BUSY: 3,
        Reason.SERVER_SHUTTING_DOWN: 3,
        Reason.BAD_USER_NAME_OR_PASSWORD: 4,
        Reason.NOT_AUTHORIZED: 5,
    }.get(reason, 3)


class MalformedPacket(Exception):
    """The client sent something the protocol forbids; the connection ends with ``reason``."""

    def __init__(self, detail: str, reason: Reason = Reason.MALFORMED_PACKET) -> None:
        super().__init__(detail)
        self.reason = reason


# ---- properties (MQTT 5) ----------------------------------------------------------------------------


class Prop(enum.IntEnum):
    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


# The wire type of each property: b byte, h two-byte int, i four-byte int, v varint, s UTF-8 string,
# d binary data, p string pair.
_PROP_KIND: dict[int, str] = {
    0x01: "b", 0x02: "i", 0x03: "s", 0x08: "s", 0x09: "d", 0x0B: "v", 0x11: "i", 0x12: "s", 0x13: "h",
    0x15: "s", 0x16: "d", 0x17: "b", 0x18: "i", 0x19: "b", 0x1A: "s", 0x1C: "s", 0x1F: "s", 0x21: "h",
    0x22: "h", 0x23: "h", 0x24: "b", 0x25: "b", 0x26: "p", 0x27: "i", 0x28: "b", 0x29: "b", 0x2A: "b",
}

PropValue = int | str | bytes | tuple[str, str]
Properties = list[tuple[int, PropValue]]


def prop(props: Properties, key: Prop, default: PropValue | None = None) -> PropValue | None:
    """The first value of property ``key`` in ``props`` (properties other than user ones occur once)."""
    for found, value in props:
        if found == key:
            return value
    return default


def int_prop(props: Properties, key: Prop, default: int) -> int:
    value = prop(props, key)
    return value if isinstance(value, int) else default


# ---- primitive readers / writers ------------------------------------------------------------------


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = bytes(data)
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise MalformedPacket("packet ends early")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("!H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("!I", self.take(4))[0])

    def varint(self) -> int:
        value, shift = 0, 0
        for _ in range(4):
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise MalformedPacket("variable byte integer longer than 4 bytes")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        raw = self.binary()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedPacket("string is not valid UTF-8") from None
        if "\x00" in text:
            raise MalformedPacket("string contains U+0000")
        return text

    def properties(self) -> Properties:
        length = self.varint()
        end = self.pos + length
        if end > len(self.data):
            raise MalformedPacket("properties run past the packet")
        props: Properties = []
        while self.pos < end:
            key = self.varint()
            kind = _PROP_KIND.get(key)
            if kind is None:
                raise MalformedPacket(f"unknown property 0x{key:02X}")
            value: PropValue
            if kind == "b":
                value = self.byte()
            elif kind == "h":
                value = self.u16()
            elif kind == "i":
                value = self.u32()
            elif kind == "v":
                value = self.varint()
            elif kind == "s":
                value = self.string()
            elif kind == "d":
                value = self.binary()
            else:
                value = (self.string(), self.string())
            props.append((key, value))
        if self.pos != end:
            raise MalformedPacket("a property runs past the property length")
        return props


def encode_varint(value: int) -> bytes:
    if not 0 <= value <= 268_435_455:
        raise ValueError(f"variable byte integer out of range: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _binary(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def _string(text: str) -> bytes:
    return _binary(text.encode("utf-8"))


def encode_properties(props: Properties) -> bytes:
    body = bytearray()
    for key, value in props:
        kind = _PROP_KIND[key]
        body += encode_varint(key)
        if kind == "b":
            assert isinstance(value, int)
            body.append(value)
        elif kind == "h":
            assert isinstance(value, int)
            body += struct.pack("!H", value)
        elif kind == "i":
            assert isinstance(value, int)
            body += struct.pack("!I", value)
        elif kind == "v":
            assert isinstance(value, int)
            body += encode_varint(value)
        elif kind == "s":
            assert isinstance(value, str)
            body += _string(value)
        elif kind == "d":
            assert isinstance(value, bytes)
            body += _binary(value)
        else:
            assert isinstance(value, tuple)
            body += _string(value[0]) + _string(value[1])
    return encode_varint(len(body)) + bytes(body)


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + encode_varint(len(body)) + body


# ---- packets ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Connect:
    protocol: int
    client_id: str
    clean_start: bool
    keep_alive: int
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    properties: Properties = dataclasses.field(default_factory=list)

    def encode(self) -> bytes:
        flags = 0x02 if self.clean_start else 0
        if self.will is not None:
            flags |= 0x04 | (self.will.qos << 3) | (0x20 if self.will.retain else 0)
        if self.password is not None:
            flags |= 0x40
        if self.username is not None:
            flags |= 0x80
        body = _string("MQTT") + bytes([self.protocol, flags]) + struct.pack("!H", self.keep_alive)
        if self.protocol == PROTOCOL_5:
            body += encode_properties(self.properties)
        body += _string(self.client_id)
        if self.will is not None:
            if self.protocol == PROTOCOL_5:
                body += encode_properties(self.will.properties)
            body += _string(self.will.topic) + _binary(self.will.payload)
        if self.username is not None:
            body += _string(self.username)
        if self.password is not None:
            body += _binary(self.password)
        return _packet(PacketType.CONNECT << 4, body)


@dataclasses.dataclass
class ConnAck:
    session_present: bool
    reason: Reason
    properties: Properties = dataclasses.field(default_factory=list)

    def encode(self, protocol: int) -> bytes:
        flags = 1 if self.session_present and self.reason == Reason.SUCCESS else 0
        if protocol == PROTOCOL_5:
            body = bytes([flags, self.reason]) + encode_properties(self.properties)
        else:
            body = bytes([flags, connack_code_311(self.reason)])
        return _packet(PacketType.CONNACK << 4, body)


@dataclasses.dataclass
class Publish:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: Properties = dataclasses.field(default_factory=list)

    def encode(self, protocol: int) -> bytes:
        first = (PacketType.PUBLISH << 4) | (0x08 if self.dup else 0) | (self.qos << 1) | (1 if self.retain else 0)
        body = _string(self.topic)
        if self.qos:
            assert self.packet_id is not None
            body += struct.pack("!H", self.packet_id)
        if protocol == PROTOCOL_5:
            body += encode_properties(self.properties)
        return _packet(first, body + self.payload)


@dataclasses.dataclass
class PubAck:
    packet_id: int
    reason: Reason = Reason.SUCCESS
    properties: Properties = dataclasses.field(default_factory=list)

    def encode(self, protocol: int) -> bytes:
        body = struct.pack("!H", self.packet_id)
        if protocol == PROTOCOL_5 and (self.reason != Reason.SUCCESS or self.properties):
            body += bytes([self.reason]) + encode_properties(self.properties)
        return _packet(PacketType.PUBACK << 4, body)


@dataclasses.dataclass
class Subscription:
    filter: str
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@dataclasses.dataclass
class Subscribe:
    packet_id: int
    subscriptions: list[Subscription]
    properties: Properties = dataclasses.field(default_factory=list)

    def encode(self, protocol: int) -> bytes:
        body = struct.pack("!H", self.packet_id)
        if protocol == PROTOCOL_5:
            body += encode_properties(self.properties)
        for sub in self.subscriptions:
            options = sub.qos
            if protocol == PROTOCOL_5:
                options |= (0x04 if sub.no_local else 0) | (0x08 if sub.retain_as_published else 0)
                options |= sub.retain_handling << 4
            body += _string(sub.filter) + bytes([options])
        return _packet((PacketType.SUBSCRIBE << 4) | 0x02, body)


@dataclasses.dataclass
class SubAck:
    packet_id: int
    codes: list[int]
    properties: Properties = dataclasses.field(default_factory=list)

    def encode(self, protocol: int) -> bytes:
        body = struct.pack("!H", self.packet_id)
        if protocol == PROTOCOL_5:
            body += encode_properties(self.properties)
        return _packet(PacketType.SUBACK << 4, body + bytes(self.codes))


@dataclasses.dataclass
class Unsubscribe:
    packet_id: int
    filters: list[str]
    properties: Properties = dataclasses.field(default_factory=list)

    def encode(self, protocol: int) -> bytes:
        body = struct.pack("!H", self.packet_id)
        if protocol == PROTOCOL_5:
            body += encode_properties(self.properties)
        for text in self.filters:
            body += _string(text)
        return _packet((PacketType.UNSUBSCRIBE << 4) | 0x02, body)


@dataclasses.dataclass
class UnsubAck:
    packet_id: int
    codes: list[int]

    def encode(self, protocol: int) -> bytes:
        body = struct.pack("!H", self.packet_id)
        if protocol == PROTOCOL_5:
            body += encode_properties([]) + bytes(self.codes)
        return _packet(PacketType.UNSUBACK << 4, body)


@dataclasses.dataclass
class PingReq:
    def encode(self, protocol: int) -> bytes:
        return _packet(PacketType.PINGREQ << 4, b"")


@dataclasses.dataclass
class PingResp:
    def encode(self, protocol: int) -> bytes:
        return _packet(PacketType.PINGRESP << 4, b"")


@dataclasses.dataclass
class Disconnect:
    reason: Reason = Reason.SUCCESS
    properties: Properties = dataclasses.field(default_factory=list)

    def encode(self, protocol: int) -> bytes:
        if protocol != PROTOCOL_5 or (self.reason == Reason.SUCCESS and not self.properties):
            return _packet(PacketType.DISCONNECT << 4, b"")
        return _packet(PacketType.DISCONNECT << 4, bytes([self.reason]) + encode_properties(self.properties))


@dataclasses.dataclass
class Other:
    """A packet the server does not act on (PUBREC, PUBREL, PUBCOMP, AUTH); refused by the connection."""

    type: PacketType


Packet = (
    Connect | ConnAck | Publish | PubAck | Subscribe | SubAck | Unsubscribe | UnsubAck | PingReq | PingResp
    | Disconnect | Other
)


# ---- decoding ---------------------------------------------------------------------------------------

# The flags each packet type must carry in the low nibble of its first byte (PUBLISH's vary).
_FIXED_FLAGS = {
    PacketType.PUBREL: 0x02, PacketType.SUBSCRIBE: 0x02, PacketType.UNSUBSCRIBE: 0x02,
}


def decode(data: bytes | memoryview, protocol: int) -> Packet:
    """Decode one whole packet (first byte, remaining length, body).

    ``protocol`` is the connection's level (:data:`PROTOCOL_311` or :data:`PROTOCOL_5`);
    for a CONNECT it is read from the packet itself. Raises :class:`MalformedPacket`.
    """
    reader = _Reader(data)
    first = reader.byte()
    length = reader.varint()
    if length != reader.remaining():
        raise MalformedPacket("remaining length does not match the packet")
    try:
        kind = PacketType(first >> 4)
    except ValueError:
        raise MalformedPacket(f"reserved packet type {first >> 4}") from None
    flags = first & 0x0F
    if kind != PacketType.PUBLISH and flags != _FIXED_FLAGS.get(kind, 0):
        raise MalformedPacket(f"{kind.name} with reserved flags 0x{flags:X}")
    packet = _DECODERS.get(kind, _decode_other)(reader, flags, protocol, kind)
    if reader.remaining():
        raise MalformedPacket(f"{kind.name} has {reader.remaining()} bytes too many")
    return packet


def _decode_connect(r: _Reader, flags: int, protocol: int, kind: PacketType) -> Packet:
    name = r.string()
    level = r.byte()
    if name != "MQTT" or level not in (PROTOCOL_311, PROTOCOL_5):
        raise MalformedPacket(f"unsupported protocol {name!r} level {level}", Reason.UNSUPPORTED_PROTOCOL_VERSION)
    connect_flags = r.byte()
    if connect_flags & 0x01:
        raise MalformedPacket("CONNECT reserved flag is set")
    keep_alive = r.u16()
    props = r.properties() if level == PROTOCOL_5 else []
    client_id = r.string()
    will = None
    will_qos = (connect_flags >> 3) & 0x03
    if connect_flags & 0x04:
        if will_qos > 2:
            raise MalformedPacket("will QoS 3")
        will_props = r.properties() if level == PROTOCOL_5 else []
        will = Will(r.string(), r.binary(), will_qos, bool(connect_flags & 0x20), will_props)
    elif will_qos or connect_flags & 0x20:
        raise MalformedPacket("will QoS or retain set without a will")
    username = r.string() if connect_flags & 0x80 else None
    password = r.binary() if connect_flags & 0x40 else None
    if level == PROTOCOL_311 and password is not None and username is None:
        raise MalformedPacket("3.1.1 CONNECT has a password without a user name")
    return Connect(level, client_id, bool(connect_flags & 0x02), keep_alive, username, password, will, props)


def _decode_publish(r: _Reader, flags: int, protocol: int, kind: PacketType) -> Packet:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    dup = bool(flags & 0x08)
    if dup and qos == 0:
        raise MalformedPacket("PUBLISH QoS 0 with DUP set", Reason.PROTOCOL_ERROR)
    topic = r.string()
    packet_id = r.u16() if qos else None
    if packet_id == 0:
        raise MalformedPacket("PUBLISH with packet identifier 0", Reason.PROTOCOL_ERROR)
    props = r.properties() if protocol == PROTOCOL_5 else []
    payload = r.take(r.remaining())
    return Publish(topic, payload, qos, bool(flags & 0x01), dup, packet_id, props)


def _decode_puback(r: _Reader, flags: int, protocol: int, kind: PacketType) -> Packet:
    packet_id = r.u16()
    reason, props = Reason.SUCCESS, []
    if protocol == PROTOCOL_5 and r.remaining():
        code = r.byte()
        reason = Reason(code) if code in Reason._value2member_map_ else Reason.UNSPECIFIED_ERROR
        if r.remaining():
            props = r.properties()
    return PubAck(packet_id, reason, props)


def _decode_subscribe(r: _Reader, flags: int, protocol: int, kind: PacketType) -> Packet:
    packet_id = r.u16()
    props = r.properties() if protocol == PROTOCOL_5 else []
    subs: list[Subscription] = []
    while r.remaining():
        text = r.string()
        options = r.byte()
        reserved = 0xC0 if protocol == PROTOCOL_5 else 0xFC
        if options & reserved or options & 0x03 == 3 or (options >> 4) & 0x03 == 3:
            raise MalformedPacket("SUBSCRIBE options with reserved bits")
        subs.append(Subscription(
            text, options & 0x03, bool(options & 0x04), bool(options & 0x08), (options >> 4) & 0x03
        ))
    if not subs:
        raise MalformedPacket("SUBSCRIBE without a topic filter", Reason.PROTOCOL_ERROR)
    return Subscribe(packet_id, subs, props)


def _decode_unsubscribe(r: _Reader, flags: int, protocol: int, kind: PacketType) -> Packet:
    packet_id = r.u16()
    props = r.properties() if protocol == PROTOCOL_5 else []
    filters: list[str] = []
    while r.remaining():
        filters.append(r.string())
    if not filters:
        raise MalformedPacket("UNSUBSCRIBE without a topic filter", Reason.PROTOCOL_ERROR)
    return Unsubscribe(packet_id, filters, props)


def _decode_disconnect(r: _Reader, flags: int, protocol: int, kind: PacketType) -> Packet:
    if protocol != PROTOCOL_5 or not r.remaining():
        return Disconnect()
    code = r.byte()
    reason = Reason(code) if code in Reason._value2member_map_ else Reason.UNSPECIFIED_ERROR
    props = r.properties() if r.remaining() else []
    return Disconnect(reason, props)


def _decode_empty(r: _Reader, flags: int, protocol: int, kind: PacketType) -> Packet:
    return PingReq() if kind == PacketType.PINGREQ else PingResp()


def _decode_other(r: _Reader, flags: int, protocol: int, kind: PacketType) -> Packet:
    r.take(r.remaining())
    return Other(kind)


def _decode_connack(r: _Reader, flags: int, protocol: int, kind: PacketType) -> Packet:
    session_present = bool(r.byte() & 1)
    code = r.byte()
    props = r.properties() if protocol == PROTOCOL_5 else []
    reason = Reason(code) if protocol == PROTOCOL_5 and code in Reason._value2member_map_ else Reason.SUCCESS
    if protocol != PROTOCOL_5 and code:
        reason = {1: Reason.UNSUPPORTED_PROTOCOL_VERSION, 2: Reason.CLIENT_IDENTIFIER_NOT_VALID,
                  4: Reason.BAD_USER_NAME_OR_PASSWORD, 5: Reason.NOT_AUTHORIZED}.get(code, Reason.SERVER_UNAVAILABLE)
    return ConnAck(session_present, reason, props)


def _decode_suback(r: _Reader, flags: int, protocol: int, kind: PacketType) -> Packet:
    packet_id = r.u16()
    props = r.properties() if protocol == PROTOCOL_5 else []
    return SubAck(packet_id, list(r.take(r.remaining())), props)


_DECODERS = {
    PacketType.CONNECT: _decode_connect,
    PacketType.CONNACK: _decode_connack,
    PacketType.PUBLISH: _decode_publish,
    PacketType.PUBACK: _decode_puback,
    PacketType.SUBSCRIBE: _decode_subscribe,
    PacketType.SUBACK: _decode_suback,
    PacketType.UNSUBSCRIBE: _decode_unsubscribe,
    PacketType.PINGREQ: _decode_empty,
    PacketType.PINGRESP: _decode_empty,
    PacketType.DISCONNECT: _decode_disconnect,
}


# ---- framing ----------------------------------------------------------------------------------------


class PacketTooLarge(MalformedPacket):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"packet of {size} bytes is over the {limit}-byte limit", Reason.PACKET_TOO_LARGE)


class PacketReader:
    """Frames whole packets off a byte stream; a packet over ``max_size`` raises :class:`PacketTooLarge`."""

    def __init__(self, stream: trio.abc.ReceiveStream, max_size: int) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self.max_size = max_size

    async def _fill(self, wanted: int) -> bool:
        while len(self._buffer) < wanted:
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                return False
            self._buffer += chunk
        return True

    async def next_frame(self) -> bytes | None:
        """The next whole packet's bytes, or None at a clean end of stream (between packets)."""
        if not await self._fill(2):
            if self._buffer:
                raise MalformedPacket("connection ended inside a packet header")
            return None
        length, shift, index = 0, 0, 1
        while True:
            if not await self._fill(index + 1):
                raise MalformedPacket("connection ended inside a packet header")
            byte = self._buffer[index]
            length |= (byte & 0x7F) << shift
            index += 1
            if not byte & 0x80:
                break
            shift += 7
            if index > 4:
                raise MalformedPacket("remaining length longer than 4 bytes")
        total = index + length
        if total > self.max_size:
            raise PacketTooLarge(total, self.max_size)
        if not await self._fill(total):
            raise MalformedPacket("connection ended inside a packet")
        frame = bytes(self._buffer[:total])
        del self._buffer[:total]
        return frame
