"""The MQTT adapter: a listener in skald's trio run speaking to the same pub/sub service as HTTP.

The first topic level is the document (``notes/sensors/kitchen`` is topic
``sensors/kitchen`` of document ``notes``). Publishes go through
:meth:`skald.pubsub.service.PubSub.publish` (group commit; the PUBACK waits for it),
subscriptions through the same :class:`~skald.pubsub.service.Hub`, matcher and
:func:`~skald.pubsub.topics.topic_visible` predicate as SSE, and every check through
:func:`skald.auth.scopes.decide`. This service owns the documents it touches:
it opens them through the supervisor itself. See docs/mqtt.md.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import socket
import sys
from typing import Any

import structlog
import trio
from prometheus_client import Counter, Gauge

from skald.auth.guard import audit_denied, check_scope, check_token
from skald.auth.scopes import Principal, allowed_prefixes
from skald.db.connection import DocConnection
from skald.db.ids import validate_db_id
from skald.errors import DocumentNotFound, PayloadTooLarge, ScopeDenied, SkaldError, TokenInvalid
from skald.http.state import AppState
from skald.mqtt.errors import (
    PayloadFormatInvalid,
    SharedSubscriptionsUnsupported,
    TopicNeedsDocument,
    WildcardDocument,
)
from skald.pubsub.service import Message, Publish, PubSub
from skald.pubsub.topics import TopicFilter, topic_visible, validate_topic

log = structlog.get_logger("skald.mqtt")

# Room for a PUBLISH's topic, packet id and MQTT 5 properties beside a payload of the maximum size.
PACKET_OVERHEAD = 64 * 1024


def listen_sockets(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Bind and listen on ``host:port`` for MQTT, every address ``host`` resolves to.

    What :func:`trio.open_tcp_listeners` does, in plain sockets so that ``skald serve`` can do it
    before anything starts (a busy port is then one line and exit 2, as for HTTP; connections that
    arrive meanwhile wait in the backlog). It listens at once: with ``SO_REUSEADDR`` a second *bind*
    of a port that is bound but not listening (the HTTP port, say) succeeds, only ``listen`` fails.
    Raises :class:`OSError` (or :class:`OverflowError` for a port out of range); nothing stays open then.
    """
    bound: list[socket.socket] = []
    try:
        for family, type_, proto, _name, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            sock = socket.socket(family, type_, proto)
            bound.append(sock)
            if sys.platform != "win32":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            if port == 0:  # the other addresses of host take the port the first one was given
                port = int(sock.getsockname()[1])
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound


def split_topic(full: str) -> tuple[str, str]:
    """``notes/sensors/kitchen`` -> (``notes``, ``sensors/kitchen``); raises InvalidTopic/InvalidDocumentId."""
    db_id, slash, topic = full.partition("/")
    if not slash or not topic:
        raise TopicNeedsDocument(f"topic {full!r}: the first level is the document, a topic must follow it")
    validate_db_id(db_id)
    return db_id, validate_topic(topic)


def split_filter(full: str) -> tuple[str, TopicFilter]:
    """``notes/sensors/+`` -> (``notes``, filter ``sensors/+``); a wildcard document is refused."""
    if full.startswith("$share/"):
        raise SharedSubscriptionsUnsupported(f"topic filter {full!r}: shared subscriptions are not supported")
    db_id, slash, rest = full.partition("/")
    if db_id in ("+", "#"):
        raise WildcardDocument(f"topic filter {full!r}: the first level (the document) cannot be a wildcard")
    if not slash or not rest:
        raise TopicNeedsDocument(f"topic filter {full!r}: the first level is the document, a filter must follow it")
    validate_db_id(db_id)
    return db_id, TopicFilter.parse(rest)


def payload_form(payload: bytes, content_type: str | None, utf8_declared: bool) -> str:
    """How an MQTT payload is stored: ``json`` (declared JSON that parses), ``text`` (UTF-8) or ``base64``."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        if utf8_declared:
            raise PayloadFormatInvalid("payload format indicator is 1 (UTF-8) but the payload is not UTF-8") from None
        return "base64"
    if content_type is not None and content_type.split(";")[0].strip().lower() == "application/json":
        try:
            json.loads(text)
            return "json"
        except ValueError:
            pass
    return "text"


@dataclasses.dataclass(frozen=True)
class PublishRequest:
    """One MQTT PUBLISH (or will) to commit: ``topic`` is the full MQTT topic."""

    topic: str
    payload: bytes
    retain: bool = False
    content_type: str | None = None
    utf8_declared: bool = False


class _Pending:
    """One connection's run of publishes to one document, waiting for its commit."""

    def __init__(self, items: list[tuple[Publish, bool]]) -> None:
        self.items = items  # (message, retain)
        self.done = trio.Event()
        self.refusal: SkaldError | None = None


class MqttMetrics:
    def __init__(self, state: AppState) -> None:
        r = state.metrics.registry
        self.connections = Gauge("skald_mqtt_connections", "Open MQTT connections (after CONNACK)", registry=r)
        self.connects = Counter(
            "skald_mqtt_connects_total", "MQTT CONNECTs by result (accepted or the refusal)", ["result"], registry=r
        )
        self.messages_in = Counter(
            "skald_mqtt_messages_received_total", "PUBLISHes from MQTT clients committed, by QoS", ["qos"],
            registry=r,
        )
        self.messages_out = Counter(
            "skald_mqtt_messages_sent_total", "PUBLISHes sent to MQTT clients, by QoS", ["qos"], registry=r
        )
        self.refused = Counter(
            "skald_mqtt_publishes_refused_total", "MQTT publishes not committed, by problem code", ["code"],
            registry=r,
        )
        self.sessions = Gauge("skald_mqtt_sessions", "MQTT sessions held (connected or persistent)", registry=r)
        self.slow_consumers = Counter(
            "skald_mqtt_slow_consumers_total", "MQTT clients disconnected for falling behind", registry=r
        )


class MqttService:
    """``state.mqtt``: the listener, the live connections and the session store."""

    def __init__(self, state: AppState) -> None:
        from skald.mqtt.sessions import SessionStore

        self.state = state
        self.settings = state.settings
        self.supervisor = state.supervisor
        self.sessions = SessionStore(state.supervisor)
        self.metrics = MqttMetrics(state)
        self.metrics.sessions.set_function(lambda: len(self.sessions.sessions))
        self.connections: dict[str, Any] = {}  # client id -> MqttConnection (typed there; avoids a cycle)
        self.port: int | None = None
        """The bound port once :meth:`serve` started (``mqtt_port = 0`` picks a free one)."""
        self.max_packet_size = self.settings.message_max_bytes + PACKET_OVERHEAD
        self._queued: dict[str, list[_Pending]] = {}
        self._committing: set[str] = set()
        self.bound: list[socket.socket] = []
        """Sockets ``skald serve`` opened before starting (see :func:`listen_sockets`); else serve opens them."""

    @property
    def pubsub(self) -> PubSub:
        return self.state.pubsub

    # ---- lifecycle -------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``host:mqtt_port`` until the server shuts down; reports the bound port.

        At shutdown it stops accepting, ends every connection (MQTT 5 clients get DISCONNECT
        0x8B) and returns once each has saved its session.
        """
        from skald.mqtt.connection import MqttConnection

        settings = self.settings
        assert settings.mqtt_port is not None
        bound = self.bound or listen_sockets(settings.host, settings.mqtt_port, settings.listen_backlog)
        self.bound = []
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in bound]
        self.port = int(listeners[0].socket.getsockname()[1])
        shutdown = self.state.shutdown.event
        try:
            await self.sessions.load()
            async with trio.open_nursery() as connections:
                sweeper = trio.CancelScope()
                connections.start_soon(self._expire_sessions, sweeper)
                task_status.started(self.port)
                log.info("mqtt listening", host=self.settings.host, port=self.port)
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(self._accept, listener, connections, MqttConnection)
                    await shutdown.wait()
                    accepting.cancel_scope.cancel(reason="shutting down")
                # Every connection ends on the shutdown event by itself (saving its session); the
                # nursery waits for them, up to the grace period.
                sweeper.cancel(reason="shutting down")
                connections.cancel_scope.deadline = trio.current_time() + self.settings.grace_seconds
        finally:
            for listener in listeners:
                await listener.aclose()

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery, factory: Any) -> None:
        while True:
            stream = await listener.accept()
            peer = stream.socket.getpeername()
            nursery.start_soon(factory(self, stream, str(peer[0])).run)

    async def _expire_sessions(self, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                await trio.sleep(min(60.0, max(1.0, self.settings.mqtt_session_expiry_seconds)))
                await self.sessions.expire()

    # ---- auth --------------------------------------------------------------------------------------

    async def authenticate(self, password: bytes | None, username: str | None, ip: str) -> Principal:
        """The principal of the token given as the MQTT password; :class:`TokenInvalid` if there is none."""
        if not password:
            raise TokenInvalid("send a skald token as the MQTT password")
        try:
            secret = password.decode("utf-8")
        except UnicodeDecodeError:
            raise TokenInvalid("the password is not a skald token") from None
        return await check_token(self.state, secret, path="mqtt:connect", ip=ip)

    async def authorize_filter(self, principal: Principal, ip: str, full: str) -> tuple[str, TopicFilter]:
        """Parse and authorize one SUBSCRIBE filter exactly as the SSE route authorizes ``topic=``."""
        db_id, topic_filter = split_filter(full)
        path = f"mqtt:subscribe:{full}"
        await check_scope(self.state, principal, db_id, "pub.subscribe", None, path=path, ip=ip)
        if not self.supervisor.exists(db_id):
            raise DocumentNotFound(f"document {db_id} does not exist")
        prefixes = allowed_prefixes(principal, db_id, "pub.subscribe")
        if prefixes is not None and not any(topic_filter.may_intersect(p) for p in prefixes):
            await audit_denied(self.state, principal.id, f"topic filter {full!r} is outside the token's prefixes",
                               path=path, ip=ip)
            raise ScopeDenied(f"topic filter {full!r} is outside this token's prefixes", action="pub.subscribe")
        return db_id, topic_filter

    async def check_publish(self, principal: Principal, ip: str, full_topic: str) -> tuple[str, str]:
        db_id, topic = split_topic(full_topic)
        await check_scope(self.state, principal, db_id, "pub.publish", topic, path=f"mqtt:publish:{full_topic}", ip=ip)
        return db_id, topic

    # ---- publish and retained ----------------------------------------------------------------------

    async def publish(self, principal: Principal, ip: str, request: PublishRequest) -> None:
        """Authorize and commit one MQTT publish (a will); raises the refusal as a SkaldError."""
        [refusal] = await self.publish_batch(principal, ip, [request])
        if refusal is not None:
            raise refusal

    async def publish_batch(
        self, principal: Principal, ip: str, requests: list[PublishRequest]
    ) -> list[SkaldError | None]:
        """Authorize and commit publishes in order; per request None (committed) or its refusal.

        Consecutive publishes to one document share one op of the group commit, so a client that
        streams QoS 1 messages is not limited to one commit per round trip. Returns after COMMIT.
        """
        results: list[SkaldError | None] = [None] * len(requests)
        prepared: list[tuple[int, str, Publish, bool]] = []
        limit = self.settings.message_max_bytes
        for index, req in enumerate(requests):
            try:
                db_id, topic = await self.check_publish(principal, ip, req.topic)
                if len(req.payload) > limit:
                    raise PayloadTooLarge(f"payload is {len(req.payload)} bytes; the limit is {limit}", limit=limit)
                form = payload_form(req.payload, req.content_type, req.utf8_declared)
            except SkaldError as exc:
                results[index] = exc
                continue
            prepared.append((index, db_id, Publish(topic, form, req.payload, req.content_type, None), req.retain))
        for db_id, group in itertools.groupby(prepared, key=lambda item: item[1]):
            run = list(group)
            refusal = await self._commit(db_id, _Pending([(item[2], item[3]) for item in run]))
            if refusal is not None:
                for item in run:
                    results[item[0]] = refusal
        return results

    async def _commit(self, db_id: str, pending: _Pending) -> SkaldError | None:
        """Commit ``pending`` with the other connections' batches for ``db_id`` that queued meanwhile.

        While one ``publish_many`` is in flight, batches of other connections queue up; the
        connection whose batch finds nobody committing commits everything queued, in one op, as
        long as there is any. One op per commit instead of one per connection: each op costs the
        writer thread savepoints and GIL hand-offs. Each connection waits for its own batch, so
        its order is kept. Shielded: the others' batches must not be stranded if it is cancelled
        (the write itself is never abandoned by the actor either).
        """
        queue = self._queued.setdefault(db_id, [])
        queue.append(pending)
        if db_id not in self._committing:
            self._committing.add(db_id)
            with trio.CancelScope(shield=True):
                try:
                    while queue:
                        taken = queue[:]
                        del queue[:]
                        await self._commit_taken(db_id, taken)
                finally:
                    self._committing.discard(db_id)
                    self._queued.pop(db_id, None)
        await pending.done.wait()
        return pending.refusal

    async def _commit_taken(self, db_id: str, taken: list[_Pending]) -> None:
        items = [item for pending in taken for item, _retain in pending.items]
        retains = [retain for pending in taken for _item, retain in pending.items]

        def keep(conn: DocConnection, message: Message, position: int) -> None:
            if retains[position]:
                _keep_retained(conn, message)

        refusal: SkaldError | None = None
        try:
            await self.pubsub.publish_many(db_id, items, keep if any(retains) else None)
        except SkaldError as exc:
            refusal = exc
        for pending in taken:
            pending.refusal = refusal
            pending.done.set()

    async def retained(self, db_id: str, topic_filter: TopicFilter, prefixes: list[str] | None) -> list[Message]:
        """The retained messages a new subscription with ``topic_filter`` receives, by topic."""

        def read(conn: DocConnection) -> list[tuple[Any, ...]]:
            sql = "SELECT message_id, topic, payload_form, payload, content_type, created_at FROM _skald_mqtt_retained"
            if topic_filter.literal:
                return list(conn.execute(sql + " WHERE topic = ?", (topic_filter.text,)))
            return list(conn.execute(sql + " ORDER BY topic"))

        async with self.supervisor.open_document(db_id) as actor:
            rows = await actor.read(read)  # this service owns the retained table, as PubSub owns messages
        found = [Message.from_row(row) for row in rows]
        return [m for m in found if topic_visible(m.topic, [topic_filter], prefixes)]


def _keep_retained(conn: DocConnection, message: Message) -> None:
    """In the publish's transaction: the message becomes its topic's retained one (empty: none)."""
    if not message.payload:
        conn.execute("DELETE FROM _skald_mqtt_retained WHERE topic = ?", (message.topic,))
        return
    conn.execute(
        "INSERT OR REPLACE INTO _skald_mqtt_retained (topic, message_id, payload, payload_form, content_type,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?)",
        (message.topic, message.id, message.payload, message.form, message.content_type, message.created_at),
    )
