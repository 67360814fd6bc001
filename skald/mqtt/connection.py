"""One MQTT client connection: CONNECT, then packets in, publishes out, until it ends.

Tasks, all in the connection's nursery (ended together):

* the read loop (this task): frames packets, enforces keep-alive, handles
  SUBSCRIBE/UNSUBSCRIBE/PUBACK/PINGREQ/DISCONNECT inline;
* the publish worker: commits the client's PUBLISHes one after another, in the
  order they arrived, and sends each PUBACK after its commit;
* one follower per subscribed document (:mod:`skald.mqtt.follow`): replay from
  the session cursor, then live, through the same hub as SSE.

At the end (client gone, keep-alive expired, slow consumer, takeover, server
stopping) the cursors go into the session, the session is saved or dropped,
and the will is published unless the client said DISCONNECT.
"""

from __future__ import annotations

import contextlib
import secrets

import structlog
import trio

from skald.auth.scopes import Principal
from skald.errors import SkaldError
from skald.mqtt import codec
from skald.mqtt.codec import PROTOCOL_5, MalformedPacket, Prop, Reason
from skald.mqtt.errors import connect_reason, publish_reason, subscribe_reason
from skald.mqtt.follow import DocState, follow
from skald.mqtt.service import MqttService, PublishRequest, split_topic
from skald.mqtt.sessions import Session, SessionSubscription
from skald.pubsub.service import Message

log = structlog.get_logger("skald.mqtt")

CONNECT_TIMEOUT = 10.0  # seconds from TCP accept to a whole CONNECT
END_WRITE_TIMEOUT = 1.0  # how long a final DISCONNECT may wait for a client that is not reading
MAX_PACKET_ID = 65535
WRITE_CHUNK = 256 * 1024  # bytes of PUBLISHes gathered into one write
MAX_PUBLISH_BATCH = 256  # PUBLISHes committed as one op (the actor's max_batch counts ops)


class MqttConnection:
    def __init__(self, service: MqttService, stream: trio.SocketStream, ip: str) -> None:
        self.service = service
        self.stream = stream
        self.ip = ip
        self.protocol = codec.PROTOCOL_311
        self.principal: Principal | None = None
        self.session: Session | None = None
        self.client_id = ""
        self.docs: dict[str, DocState] = {}
        self.finished = trio.Event()
        self._send_lock = trio.Lock()
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._will: codec.Will | None = None
        self._clean_disconnect = False
        self._stopping_server = False
        self._end_reason: tuple[Reason, str] | None = None
        # outbound QoS 1: packet id -> (db_id or None for a retained copy, message id)
        self._inflight: dict[int, tuple[str | None, int]] = {}
        self._inflight_slots = trio.Semaphore(1)
        self._next_packet_id = 1
        self._client_max_packet = 268_435_460
        self._inbound_unacked = 0
        self._write_cut = False
        self.keep_alive = 0

    # ---- the whole connection ----------------------------------------------------------------------

    async def run(self) -> None:
        try:
            reader = codec.PacketReader(self.stream, self.service.max_packet_size)
            if not await self._handshake(reader):
                return
            try:
                await self._serve(reader)
            finally:
                with trio.CancelScope(shield=True):
                    await self._finish()
        except (trio.BrokenResourceError, trio.ClosedResourceError, MalformedPacket) as exc:
            log.debug("mqtt connection ended before CONNACK", ip=self.ip, error=str(exc))
        finally:
            self.finished.set()
            await self.stream.aclose()

    async def _handshake(self, reader: codec.PacketReader) -> bool:
        """Read CONNECT, authenticate, take the session over, send CONNACK; False if refused."""
        metrics = self.service.metrics
        with trio.move_on_after(CONNECT_TIMEOUT):
            frame = await reader.next_frame()
            if frame is None:
                return False
            try:
                packet = codec.decode(frame, PROTOCOL_5)
            except MalformedPacket as exc:
                if exc.reason == Reason.UNSUPPORTED_PROTOCOL_VERSION:
                    await self._write(codec.ConnAck(False, exc.reason).encode(codec.PROTOCOL_311))
                metrics.connects.labels("malformed").inc()
                return False
            if not isinstance(packet, codec.Connect):
                metrics.connects.labels("protocol_error").inc()
                return False
            return await self._accept(packet)
        metrics.connects.labels("timeout").inc()
        return False

    async def _accept(self, connect: codec.Connect) -> bool:
        service, settings = self.service, self.service.settings
        self.protocol = connect.protocol
        props: codec.Properties = []
        try:
            principal = await service.authenticate(connect.password, connect.username, self.ip)
            if connect.will is not None:
                await service.check_publish(principal, self.ip, connect.will.topic)
                if connect.will.qos > 1:
                    raise MalformedPacket("will QoS 2 is not supported", Reason.QOS_NOT_SUPPORTED)
        except SkaldError as exc:
            return await self._refuse(connect_reason(exc), exc.code, connect.username)
        except MalformedPacket as exc:
            return await self._refuse(exc.reason, "will_qos", connect.username)
        client_id = connect.client_id
        if not client_id:
            if not connect.clean_start and connect.protocol != PROTOCOL_5:
                return await self._refuse(Reason.CLIENT_IDENTIFIER_NOT_VALID, "empty_client_id", connect.username)
            client_id = "skald-" + secrets.token_hex(8)
            props.append((Prop.ASSIGNED_CLIENT_IDENTIFIER, client_id))
        expiry = self._session_expiry(connect)
        if connect.protocol == PROTOCOL_5:
            asked = codec.int_prop(connect.properties, Prop.SESSION_EXPIRY_INTERVAL, 0)
            if asked != int(expiry):
                props.append((Prop.SESSION_EXPIRY_INTERVAL, int(expiry)))
            if codec.prop(connect.properties, Prop.AUTHENTICATION_METHOD) is not None:
                return await self._refuse(Reason.BAD_USER_NAME_OR_PASSWORD, "auth_method", connect.username)
        self.principal = principal
        self.client_id = client_id
        self._will = connect.will
        previous = service.connections.get(client_id)
        service.connections[client_id] = self
        if previous is not None:
            previous.end(Reason.SESSION_TAKEN_OVER, "another connection took this session over")
            await previous.finished.wait()
        session, present = service.sessions.take(client_id, principal.id, connect.clean_start, expiry)
        if connect.clean_start and session.stored:
            await service.sessions.save(session)  # the old session's row goes now, not at the end
        self.session = session
        receive_max = codec.int_prop(connect.properties, Prop.RECEIVE_MAXIMUM, 65535) or 65535
        self._inflight_slots = trio.Semaphore(min(receive_max, settings.mqtt_max_inflight))
        self._client_max_packet = codec.int_prop(connect.properties, Prop.MAXIMUM_PACKET_SIZE, self._client_max_packet)
        if connect.protocol == PROTOCOL_5:
            props += [
                (Prop.RECEIVE_MAXIMUM, settings.mqtt_max_inflight),
                (Prop.MAXIMUM_QOS, 1),
                (Prop.RETAIN_AVAILABLE, 1),
                (Prop.MAXIMUM_PACKET_SIZE, service.max_packet_size),
                (Prop.TOPIC_ALIAS_MAXIMUM, 0),
                (Prop.WILDCARD_SUBSCRIPTION_AVAILABLE, 1),
                (Prop.SUBSCRIPTION_IDENTIFIER_AVAILABLE, 0),
                (Prop.SHARED_SUBSCRIPTION_AVAILABLE, 0),
            ]
        self.keep_alive = connect.keep_alive
        await self._write(codec.ConnAck(present, Reason.SUCCESS, props).encode(self.protocol))
        service.metrics.connects.labels("accepted").inc()
        service.metrics.connections.inc()
        log.info("mqtt connected", client_id=client_id, username=connect.username, token=principal.id,
                 protocol="5.0" if self.protocol == PROTOCOL_5 else "3.1.1", session_present=present, ip=self.ip)
        return True

    def _session_expiry(self, connect: codec.Connect) -> float:
        limit = self.service.settings.mqtt_session_expiry_seconds
        if connect.protocol == PROTOCOL_5:
            asked = codec.int_prop(connect.properties, Prop.SESSION_EXPIRY_INTERVAL, 0)
            return float(min(asked, limit))  # 0xFFFFFFFF ("never") is capped too
        return 0.0 if connect.clean_start else float(limit)

    async def _refuse(self, reason: Reason, code: str, username: str | None) -> bool:
        self.service.metrics.connects.labels(code).inc()
        log.info("mqtt connect refused", reason=reason.name, code=code, username=username, ip=self.ip)
        await self._write(codec.ConnAck(False, reason).encode(self.protocol))
        return False

    async def _serve(self, reader: codec.PacketReader) -> None:
        assert self.session is not None
        settings = self.service.settings
        send, receive = trio.open_memory_channel[codec.Publish](settings.mqtt_max_inflight)
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            self._nursery = nursery
            nursery.start_soon(self._publish_worker, receive)
            nursery.start_soon(self._watch_shutdown)
            for db_id in sorted({split_topic_db(f) for f in self.session.subscriptions}):
                await self._ensure_doc(db_id)
            try:
                await self._read_loop(reader, send)
            except MalformedPacket as exc:
                self.end(exc.reason, str(exc))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            nursery.cancel_scope.cancel(reason="connection ended")
        if self._end_reason is not None and self.protocol == PROTOCOL_5 and not self._clean_disconnect \
                and not self._write_cut:
            reason, detail = self._end_reason
            with trio.move_on_after(END_WRITE_TIMEOUT):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._write(codec.Disconnect(reason, [(Prop.REASON_STRING, detail)]).encode(self.protocol))

    async def _watch_shutdown(self) -> None:
        await self.service.state.shutdown.event.wait()
        self.stop_for_shutdown()

    def stop_for_shutdown(self) -> None:
        self._stopping_server = True
        self.end(Reason.SERVER_SHUTTING_DOWN, "server is shutting down; reconnect to resume")

    def end(self, reason: Reason, detail: str) -> None:
        """End the connection (the first reason given is the one sent to an MQTT 5 client)."""
        if self._end_reason is None:
            self._end_reason = (reason, detail)
        if self._scope is not None:
            self._scope.cancel(reason=detail)

    async def _finish(self) -> None:
        service, session = self.service, self.session
        assert session is not None
        if service.connections.get(self.client_id) is self:
            del service.connections[self.client_id]
        for db_id, doc in self.docs.items():
            session.cursors[db_id] = doc.cursor()
        service.metrics.connections.dec()
        reason = self._end_reason[0].name if self._end_reason else "client_closed"
        log.info("mqtt disconnected", client_id=self.client_id, reason=reason, clean=self._clean_disconnect)
        try:
            await service.sessions.end(session)
        except SkaldError as exc:
            log.warning("mqtt session not saved", client_id=self.client_id, error=exc.detail)
        if self._will is not None and not self._clean_disconnect and not self._stopping_server:
            await self._publish_will(self._will)

    async def _publish_will(self, will: codec.Will) -> None:
        assert self.principal is not None
        request = PublishRequest(will.topic, will.payload, will.retain, _content_type(will.properties),
                                 codec.prop(will.properties, Prop.PAYLOAD_FORMAT_INDICATOR) == 1)
        with trio.move_on_after(5):
            try:
                await self.service.publish(self.principal, self.ip, request)
                log.info("mqtt will published", client_id=self.client_id, topic=will.topic)
            except SkaldError as exc:
                log.warning("mqtt will not published", client_id=self.client_id, error=exc.detail)

    # ---- packets in --------------------------------------------------------------------------------

    async def _read_loop(
        self, reader: codec.PacketReader, publishes: trio.MemorySendChannel[codec.Publish]
    ) -> None:
        # A client that sends nothing for 1.5 keep-alive periods is gone (MQTT 3.1.1 section 3.1.2.10).
        idle = self.keep_alive * 1.5 if self.keep_alive else None
        while True:
            frame: bytes | None = None
            with trio.move_on_after(idle if idle is not None else float("inf")) as waited:
                frame = await reader.next_frame()
            if waited.cancelled_caught:
                self.end(Reason.KEEP_ALIVE_TIMEOUT, "no packet within 1.5 times the keep-alive")
                return
            if frame is None:
                return
            packet = codec.decode(frame, self.protocol)
            if isinstance(packet, codec.Publish):
                await self._received_publish(packet, publishes)
            elif isinstance(packet, codec.PubAck):
                self._acked(packet.packet_id)
            elif isinstance(packet, codec.Subscribe):
                await self._subscribe(packet)
            elif isinstance(packet, codec.Unsubscribe):
                await self._unsubscribe(packet)
            elif isinstance(packet, codec.PingReq):
                await self._write(codec.PingResp().encode(self.protocol))
            elif isinstance(packet, codec.Disconnect):
                self._clean_disconnect = packet.reason != Reason.DISCONNECT_WITH_WILL
                self._update_expiry(packet)
                return
            else:
                name = type(packet).__name__ if not isinstance(packet, codec.Other) else packet.type.name
                raise MalformedPacket(f"unexpected {name} packet", Reason.PROTOCOL_ERROR)

    def _update_expiry(self, packet: codec.Disconnect) -> None:
        assert self.session is not None
        asked = codec.prop(packet.properties, Prop.SESSION_EXPIRY_INTERVAL)
        if isinstance(asked, int) and self.session.expiry_seconds > 0:
            self.session.expiry_seconds = float(min(asked, self.service.settings.mqtt_session_expiry_seconds))

    async def _received_publish(
        self, packet: codec.Publish, publishes: trio.MemorySendChannel[codec.Publish]
    ) -> None:
        if packet.qos > 1:
            raise MalformedPacket("QoS 2 is not supported (CONNACK said maximum QoS 1)", Reason.QOS_NOT_SUPPORTED)
        if codec.prop(packet.properties, Prop.TOPIC_ALIAS) is not None:
            raise MalformedPacket("topic aliases are not supported (topic alias maximum 0)", Reason.TOPIC_ALIAS_INVALID)
        if packet.qos == 1:
            self._inbound_unacked += 1
            if self.protocol == PROTOCOL_5 and self._inbound_unacked > self.service.settings.mqtt_max_inflight:
                raise MalformedPacket("more QoS 1 publishes in flight than receive maximum",
                                      Reason.RECEIVE_MAXIMUM_EXCEEDED)
        await publishes.send(packet)  # bounded: a 3.1.1 client that outruns the commits waits here

    async def _publish_worker(self, publishes: trio.MemoryReceiveChannel[codec.Publish]) -> None:
        """Commit the PUBLISHes in arrival order; each PUBACK goes after its commit (persist before ack).

        Takes whatever has queued up as one batch (one op in the document's group commit), so a
        client streaming QoS 1 messages gets more than one commit per round trip.
        """
        assert self.principal is not None
        metrics = self.service.metrics
        async for first in publishes:
            batch = [first]
            while len(batch) < MAX_PUBLISH_BATCH:
                try:
                    batch.append(publishes.receive_nowait())
                except trio.WouldBlock:
                    break
            refusals = await self.service.publish_batch(self.principal, self.ip, [_request(p) for p in batch])
            acks = bytearray()  # one write for the batch's PUBACKs
            for packet, refusal in zip(batch, refusals, strict=True):
                reason, detail = Reason.SUCCESS, ""
                if refusal is None:
                    metrics.messages_in.labels(str(packet.qos)).inc()
                else:
                    metrics.refused.labels(refusal.code).inc()
                    reason, detail = publish_reason(refusal), refusal.detail
                    log.info("mqtt publish refused", client_id=self.client_id, topic=packet.topic,
                             code=refusal.code, detail=refusal.detail)
                    if self.protocol != PROTOCOL_5 and reason != Reason.NOT_AUTHORIZED:
                        # 3.1.1 cannot say no: close without the PUBACK, so a QoS 1 message is sent
                        # again after reconnecting (right for an overload; documented for the rest).
                        if acks:
                            await self._write(bytes(acks))  # those before it were committed
                        self.end(reason, detail)
                        return
                if packet.qos == 1:
                    assert packet.packet_id is not None
                    props: codec.Properties = [(Prop.REASON_STRING, detail)] if detail else []
                    # 3.1.1: a publish outside the token's scopes is dropped but acknowledged, or the
                    # client would send it again forever.
                    ack_reason = reason if self.protocol == PROTOCOL_5 else Reason.SUCCESS
                    acks += codec.PubAck(packet.packet_id, ack_reason, props).encode(self.protocol)
                    self._inbound_unacked -= 1
            if acks:
                await self._write(bytes(acks))

    async def _subscribe(self, packet: codec.Subscribe) -> None:
        assert self.principal is not None and self.session is not None
        codes: list[int] = []
        retained: list[tuple[str, codec.Subscription, int]] = []
        for wanted in packet.subscriptions:
            try:
                db_id, _topic_filter = await self.service.authorize_filter(self.principal, self.ip, wanted.filter)
            except SkaldError as exc:
                log.info("mqtt subscribe refused", client_id=self.client_id, filter=wanted.filter, code=exc.code)
                codes.append(subscribe_reason(exc) if self.protocol == PROTOCOL_5 else codec.SUBACK_FAILURE_311)
                continue
            qos = min(wanted.qos, 1)
            previous = self.session.subscriptions.get(wanted.filter)
            existed = previous is not None
            # The same filter again (mosquitto_sub -c does it on every connect) replaces the QoS but
            # must not interrupt the flow (MQTT 3.1.1 3.8.4): it keeps its replay start, so a resumed
            # session still gets what it missed.
            subscription = SessionSubscription(wanted.filter, qos, None if previous is None else previous.start)
            self.session.subscriptions[wanted.filter] = subscription
            doc = await self._ensure_doc(db_id)
            doc.rebuild(self.session)
            if previous is None or previous.start is None:
                # Live delivery for the new filter began with rebuild(); replay covers ids after this one.
                subscription.start = await doc.last_id(self.service.pubsub)
            codes.append(qos)
            if wanted.retain_handling == 0 or (wanted.retain_handling == 1 and not existed):
                retained.append((db_id, wanted, qos))
        if self.session.persistent:
            self._store_cursors()
            await self.service.sessions.save(self.session)  # persist before the SUBACK
        await self._write(codec.SubAck(packet.packet_id, codes).encode(self.protocol))
        if retained:
            # Not in the read loop: QoS 1 retained messages beyond the in-flight window wait for
            # PUBACKs, which only the read loop can take in.
            assert self._nursery is not None
            self._nursery.start_soon(self._send_retained, retained)

    async def _send_retained(self, retained: list[tuple[str, codec.Subscription, int]]) -> None:
        assert self.principal is not None
        for db_id, wanted, qos in retained:
            doc = self.docs[db_id]
            try:
                _db, topic_filter = await self.service.authorize_filter(self.principal, self.ip, wanted.filter)
                messages = await self.service.retained(db_id, topic_filter, doc.prefixes)
            except SkaldError as exc:
                log.info("mqtt retained not sent", client_id=self.client_id, filter=wanted.filter, code=exc.code)
                continue
            await self.send_messages(db_id, [(m, qos) for m in messages], retain=True, doc=None)

    async def _unsubscribe(self, packet: codec.Unsubscribe) -> None:
        assert self.session is not None
        codes: list[int] = []
        touched: set[str] = set()
        for text in packet.filters:
            if self.session.subscriptions.pop(text, None) is None:
                codes.append(Reason.NO_SUBSCRIPTION_EXISTED)
                continue
            codes.append(Reason.SUCCESS)
            touched.add(split_topic_db(text))
        for db_id in touched:
            doc = self.docs.get(db_id)
            if doc is None:
                continue
            doc.rebuild(self.session)
            if not doc.subscriptions:
                doc.stop()
                del self.docs[db_id]
                self.session.cursors.pop(db_id, None)
        if self.session.persistent:
            self._store_cursors()
            await self.service.sessions.save(self.session)
        await self._write(codec.UnsubAck(packet.packet_id, codes).encode(self.protocol))

    def _store_cursors(self) -> None:
        assert self.session is not None
        for db_id, doc in self.docs.items():
            self.session.cursors[db_id] = doc.cursor()

    async def _ensure_doc(self, db_id: str) -> DocState:
        """The document's delivery state, its follower started (subscribed to the hub) if new."""
        assert self.session is not None and self.principal is not None and self._nursery is not None
        doc = self.docs.get(db_id)
        if doc is not None:
            return doc
        doc = DocState(db_id, self.principal, self.session.cursors.get(db_id))
        doc.rebuild(self.session)
        self.docs[db_id] = doc
        try:
            await self._nursery.start(follow, self, doc)
        except SkaldError as exc:
            # The document went away (deleted) or is unavailable: keep the subscription in the session.
            log.info("mqtt document not followed", client_id=self.client_id, db_id=db_id, code=exc.code)
        return doc

    # ---- packets out -------------------------------------------------------------------------------

    async def send_message(self, db_id: str, message: Message, qos: int, *, retain: bool, doc: DocState | None) -> None:
        """Send one message as PUBLISH; QoS 1 waits for a free in-flight slot (bounded)."""
        await self.send_messages(db_id, [(message, qos)], retain=retain, doc=doc)

    async def send_messages(
        self, db_id: str, items: list[tuple[Message, int]], *, retain: bool, doc: DocState | None
    ) -> None:
        """Send messages as PUBLISHes in as few writes as possible (a commit's worth is one syscall,
        not one per message); QoS 1 waits for free in-flight slots, writing what it has first."""
        out = bytearray()
        through = 0  # the highest id in ``out``: the cursor may pass it only once it is written
        counts = [0, 0]

        async def flush() -> None:
            nonlocal through
            if out:
                await self._write(bytes(out))
                out.clear()
            if doc is not None and through:
                doc.last_sent = max(doc.last_sent or 0, through)

        for message, qos in items:
            props: codec.Properties = []
            if self.protocol == PROTOCOL_5:
                if message.form != "base64":
                    props.append((Prop.PAYLOAD_FORMAT_INDICATOR, 1))
                if message.content_type:
                    props.append((Prop.CONTENT_TYPE, message.content_type))
            packet_id: int | None = None
            if qos:
                if self._inflight_slots.value == 0:
                    await flush()  # the window is full: the client must see these to acknowledge them
                await self._inflight_slots.acquire()
                packet_id = self._allocate_packet_id()
                self._inflight[packet_id] = (None if doc is None else db_id, message.id)
                if doc is not None:
                    doc.pending[message.id] = None
            data = codec.Publish(f"{db_id}/{message.topic}", message.payload, qos, retain, False, packet_id, props)
            encoded = data.encode(self.protocol)
            if len(encoded) > self._client_max_packet:
                # MQTT 5 section 3.1.2.11.4: a packet over the client's maximum is discarded, as if sent.
                if packet_id is not None:
                    self._acked(packet_id)
            else:
                out += encoded
                counts[qos] += 1
            through = message.id
            if len(out) >= WRITE_CHUNK:
                await flush()
        await flush()
        for qos, count in enumerate(counts):
            if count:
                self.service.metrics.messages_out.labels(str(qos)).inc(count)

    def _allocate_packet_id(self) -> int:
        while True:
            packet_id = self._next_packet_id
            self._next_packet_id = packet_id % MAX_PACKET_ID + 1
            if packet_id not in self._inflight:
                return packet_id

    def _acked(self, packet_id: int) -> None:
        entry = self._inflight.pop(packet_id, None)
        if entry is None:
            return  # an unknown id (or a second PUBACK): nothing was waiting for it
        db_id, message_id = entry
        if db_id is not None and db_id in self.docs:
            self.docs[db_id].pending.pop(message_id, None)
        self._inflight_slots.release()

    async def _write(self, data: bytes) -> None:
        async with self._send_lock:
            if self._write_cut:
                raise trio.BrokenResourceError("a write was cut off mid-packet")
            done = False
            try:
                await self.stream.send_all(data)
                done = True
            finally:
                # Cancelled part way (slow consumer, shutdown): the client may hold half a packet, so
                # nothing more may follow it on this connection, not even a DISCONNECT.
                self._write_cut = not done


def _content_type(props: codec.Properties) -> str | None:
    value = codec.prop(props, Prop.CONTENT_TYPE)
    return value if isinstance(value, str) else None


def _request(packet: codec.Publish) -> PublishRequest:
    utf8 = codec.prop(packet.properties, Prop.PAYLOAD_FORMAT_INDICATOR) == 1
    return PublishRequest(packet.topic, packet.payload, packet.retain, _content_type(packet.properties), utf8)


def split_topic_db(full_filter: str) -> str:
    return full_filter.partition("/")[0]


__all__ = ["MqttConnection", "split_topic"]
