"""Real MQTT clients for tests: paho-mqtt (threaded loop) behind a small trio-friendly wrapper.

Every wait runs in a worker thread (``trio.to_thread``) on a condition the paho callbacks
notify: no sleeps, and the limits are only safety nets for a hung test.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from support.live import LiveServer

T = TypeVar("T")
WAIT = 30.0  # seconds; a safety net, never an assertion


def mqtt_port(live: LiveServer) -> int:
    """The port a live server's MQTT listener bound (settings ``mqtt_port=0``)."""
    assert live.state.mqtt is not None and live.state.mqtt.port is not None
    return live.state.mqtt.port


@dataclasses.dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: dict[str, Any]


class Paho:
    """One paho client connected to ``127.0.0.1:port`` with a skald token as its password."""

    def __init__(
        self, port: int, token: str, *, client_id: str = "", protocol: int = 5, clean: bool = True,
        session_expiry: int | None = None, keepalive: int = 60, will: tuple[str, bytes] | None = None,
        auto_ack: bool = True,
    ) -> None:
        self.port = port
        self.protocol = protocol
        version = MQTTProtocolVersion.MQTTv5 if protocol == 5 else MQTTProtocolVersion.MQTTv311
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version,
            clean_session=None if protocol == 5 else clean, reconnect_on_failure=False, manual_ack=not auto_ack,
        )
        self.client.username_pw_set("test-device", token)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1)
        self.clean = clean
        self.session_expiry = session_expiry
        self.keepalive = keepalive
        self._cond = threading.Condition()
        self.connack: tuple[int, bool] | None = None
        self.disconnected: int | None = None
        self.messages: list[Received] = []
        self._acks: dict[int, Any] = {}
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish

    # ---- callbacks (paho's thread) ----
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._cond:
            self.connack = (int(reason.value), bool(flags.session_present))
            self._cond.notify_all()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._cond:
            self.disconnected = int(reason.value)
            if self.connack is None:
                self.connack = (int(reason.value), False)
            self._cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        props: dict[str, Any] = {}
        if message.properties is not None:
            props = {k: getattr(message.properties, k) for k in ("PayloadFormatIndicator", "ContentType")
                     if hasattr(message.properties, k)}
        with self._cond:
            self.messages.append(Received(message.topic, bytes(message.payload), message.qos, bool(message.retain),
                                          props))
            self._cond.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        with self._cond:
            self._acks[mid] = [int(r.value) for r in reasons]
            self._cond.notify_all()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._cond:
            self._acks[mid] = int(reason.value)
            self._cond.notify_all()

    # ---- waiting ----
    async def _wait(self, ready: Callable[[], T | None], limit: float = WAIT) -> T:
        def block() -> T:
            with self._cond:
                if not self._cond.wait_for(lambda: ready() is not None, timeout=limit):
                    raise AssertionError("MQTT test client: nothing arrived within the safety limit")
                found = ready()
                assert found is not None
                return found

        return await trio.to_thread.run_sync(block, abandon_on_cancel=True)

    # ---- actions ----
    async def connect(self) -> tuple[int, bool]:
        """Connect; returns (CONNACK reason/return code, session present)."""
        props = None
        if self.protocol == 5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if self.session_expiry is not None:
                props.SessionExpiryInterval = self.session_expiry
        clean: Any = self.clean if self.protocol == 5 else 3
        await trio.to_thread.run_sync(
            lambda: self.client.connect("127.0.0.1", self.port, keepalive=self.keepalive, clean_start=clean,
                                        properties=props)
        )
        self.client.loop_start()
        return await self._wait(lambda: self.connack)

    async def subscribe(self, *filters: str, qos: int = 1) -> list[int]:
        result, mid = self.client.subscribe([(f, qos) for f in filters])
        assert result == paho.MQTT_ERR_SUCCESS and mid is not None
        codes: list[int] = await self._wait(lambda: self._acks.get(mid))
        return codes

    async def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False,
                      content_type: str | None = None) -> int | None:
        """Publish; for QoS 1 returns the PUBACK reason code (0 = committed)."""
        props = None
        if self.protocol == 5 and content_type is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ContentType = content_type
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if qos == 0:
            return None
        # -1: the connection ended before the PUBACK came
        code: int = await self._wait(lambda: self._acks.get(info.mid, -1 if self.disconnected is not None else None))
        return code

    async def publish_many(self, messages: list[tuple[str, bytes]], *, qos: int = 1) -> list[int]:
        """Publish all (paho keeps its own in-flight window), then wait for every PUBACK; their codes."""
        infos = [self.client.publish(topic, payload, qos=qos) for topic, payload in messages]
        mids = [info.mid for info in infos]
        await self._wait(lambda: True if all(m in self._acks for m in mids) else None)
        return [int(self._acks[m]) for m in mids]

    async def wait_messages(self, count: int, limit: float = WAIT) -> list[Received]:
        await self._wait(lambda: True if len(self.messages) >= count else None, limit)
        return list(self.messages)

    async def wait_until(self, ready: Callable[[list[Received]], bool]) -> list[Received]:
        await self._wait(lambda: True if ready(self.messages) else None)
        return list(self.messages)

    async def wait_disconnected(self) -> int:
        return await self._wait(lambda: self.disconnected)

    async def disconnect(self) -> None:
        self.client.disconnect()
        await self.wait_disconnected()
        await self._release()

    async def _release(self) -> None:
        await trio.to_thread.run_sync(self.client.loop_stop)
        # paho keeps its wake-up socket pair (and a socket the server dropped) until garbage collection
        self.client._reset_sockets()

    async def drop(self) -> None:
        """End the TCP connection without DISCONNECT (as a device losing power would)."""
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            sock.shutdown(socket.SHUT_RDWR)
        await self.wait_disconnected()
        await self._release()

    async def close(self) -> None:
        if self.client.is_connected():
            await self.disconnect()
        else:
            await self._release()


class RawClient:
    """A byte-level MQTT client on a trio socket (skald's codec client-side), for protocol edges
    paho hides: keep-alive silence, a client that stops reading, exact in-flight windows."""

    def __init__(self, stream: trio.SocketStream, protocol: int) -> None:
        from skald.mqtt import codec

        self.codec = codec
        self.stream = stream
        self.protocol = protocol
        self.reader = codec.PacketReader(stream, 16 * 1024 * 1024)

    @classmethod
    async def connect(cls, port: int, token: str, *, protocol: int = 5, client_id: str = "raw", clean: bool = True,
                      keep_alive: int = 60, properties: Sequence[tuple[int, Any]] | None = None,
                      will: Any = None) -> tuple[RawClient, Any]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = cls(stream, protocol)
        c = client.codec
        connect = c.Connect(protocol, client_id, clean, keep_alive, "raw", token.encode(), will, list(properties or []))
        await stream.send_all(connect.encode())
        connack = await client.next_packet()
        return client, connack

    async def send(self, packet: Any) -> None:
        await self.stream.send_all(packet.encode(self.protocol))

    async def next_packet(self) -> Any:
        """The next packet, or None once the server closed the connection."""
        with trio.fail_after(WAIT):
            try:
                frame = await self.reader.next_frame()
            except (trio.BrokenResourceError, self.codec.MalformedPacket):
                return None  # closed, possibly after half a packet (the server cut a write off)
        return None if frame is None else self.codec.decode(frame, self.protocol)

    async def aclose(self) -> None:
        await self.stream.aclose()
