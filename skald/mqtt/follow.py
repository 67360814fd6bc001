"""Deliver one document's messages to one MQTT connection: replay from the cursor, then live.

The same order of work as the SSE stream (:mod:`skald.pubsub.stream`), for the
same reason: register a live :class:`~skald.pubsub.service.Subscriber` on the hub
first, then read history after the cursor with
:meth:`~skald.pubsub.service.PubSub.read_after` (the same :func:`~skald.pubsub.topics.topic_visible`
predicate), then drain the live buffer skipping ids already sent. So the ids a
reconnecting client receives are exactly those an SSE replay from its cursor
returns. A replay that outruns the live buffer re-registers and goes on from
SQLite; once live, an overflow means the client is too slow: the connection
ends (MQTT 5: DISCONNECT 0x97) with the cursor kept in the session.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from skald.auth.scopes import Principal, allowed_prefixes
from skald.mqtt.codec import Reason
from skald.mqtt.sessions import Session, SessionSubscription
from skald.pubsub.service import Message, PubSub, Subscriber
from skald.pubsub.topics import TopicFilter

if TYPE_CHECKING:
    from skald.db.actor import DocumentActor
    from skald.mqtt.connection import MqttConnection

REPLAY_PAGE = 1000
LIVE_BATCH = 256  # buffered messages sent in one write


class DocState:
    """One document's delivery state within one connection (kept across follower restarts)."""

    def __init__(self, db_id: str, principal: Principal, cursor: int | None) -> None:
        self.db_id = db_id
        self.prefixes = allowed_prefixes(principal, db_id, "pub.subscribe")
        self.filters: list[TopicFilter] = []  # shared with the live Subscriber: rebuild() edits it in place
        self.subscriptions: list[tuple[TopicFilter, SessionSubscription]] = []
        self.last_sent = cursor  # None: not started; the follower takes the newest id
        self.pending: dict[int, None] = {}  # QoS 1 ids sent and not acknowledged, in id order
        self.actor: DocumentActor | None = None
        self.live = False
        self._scope: trio.CancelScope | None = None

    def rebuild(self, session: Session) -> None:
        prefix = self.db_id + "/"
        self.subscriptions = [
            (TopicFilter.parse(text[len(prefix):]), sub)
            for text, sub in sorted(session.subscriptions.items()) if text.startswith(prefix)
        ]
        self.filters[:] = [f for f, _sub in self.subscriptions]

    def cursor(self) -> int:
        """Every id up to this one was delivered (QoS 0) or acknowledged (QoS 1)."""
        if self.pending:
            return next(iter(self.pending)) - 1
        return self.last_sent or 0

    def qos_for(self, message: Message, replay: bool) -> int | None:
        """The QoS to send ``message`` with (the highest of the matching subscriptions), None: not sent.

        In replay a subscription only covers ids after the one current when it was made.
        """
        best: int | None = None
        for topic_filter, sub in self.subscriptions:
            if replay and (sub.start is None or message.id <= sub.start):
                continue
            if topic_filter.matches(message.topic) and (best is None or sub.qos > best):
                best = sub.qos
        return best

    async def last_id(self, pubsub: PubSub) -> int:
        """The newest message id of the document (the start of a subscription made now)."""
        if self.actor is None:
            return self.last_sent or 0
        return await pubsub.last_id(self.actor)

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel(reason="unsubscribed")


class _MqttSubscriber(Subscriber):
    """A hub subscriber that tells the connection at once when it overflows while live.

    A follower blocked in ``send_all`` (the client stopped reading) would otherwise never see it.
    """

    def __init__(self, doc: DocState, limit: int, on_slow: Callable[[], None]) -> None:
        super().__init__(doc.filters, doc.prefixes, limit)
        self._doc = doc
        self._on_slow = on_slow

    def close(self) -> None:
        super().close()
        if self.overflowed and self._doc.live:
            self._on_slow()


async def follow(
    connection: MqttConnection, doc: DocState, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Deliver ``doc``'s messages to ``connection`` until cancelled or the document closes.

    Reports started once the live subscriber is registered and the cursor is known.
    Raises :class:`~skald.errors.SkaldError` before started if the document cannot be opened.
    """
    service = connection.service
    pubsub = service.pubsub

    def slow() -> None:
        service.metrics.slow_consumers.inc()
        pubsub.slow_dropped.inc()
        connection.end(Reason.QUOTA_EXCEEDED, "slow consumer: the client fell behind; reconnect to resume")

    with trio.CancelScope() as scope:
        doc._scope = scope
        async with service.supervisor.open_document(doc.db_id) as actor:
            hub = pubsub.hub(actor)
            sub = _MqttSubscriber(doc, pubsub.subscriber_buffer, slow)
            hub.add(sub)
            try:
                doc.actor = actor
                if doc.last_sent is None:
                    doc.last_sent = await pubsub.last_id(actor)
                task_status.started()
                pruned = await pubsub.pruned_through(actor)
                if doc.last_sent < pruned:
                    # Retention removed messages after the cursor: MQTT has no reset event, so go on
                    # from the oldest kept one (logged; SSE would send `reset`).
                    doc.last_sent = pruned
                while True:
                    messages, _scanned = await pubsub.read_after(
                        actor, doc.last_sent, doc.filters, doc.prefixes, REPLAY_PAGE
                    )
                    await _deliver(connection, doc, messages, replay=True)
                    pubsub.delivered.inc(len(messages))
                    if sub.overflowed:
                        hub.remove(sub)  # history outran the live buffer: re-register, go on from SQLite
                        sub = _MqttSubscriber(doc, pubsub.subscriber_buffer, slow)
                        hub.add(sub)
                        continue
                    if len(messages) < REPLAY_PAGE:
                        break
                doc.live = True
                while True:
                    batch = await sub.take(LIVE_BATCH)  # all that is buffered (up to a batch): one write
                    if not batch:
                        return  # overflow (handled by slow()) or the document is closing
                    fresh = [m for m in batch if m.id > (doc.last_sent or 0)]
                    await _deliver(connection, doc, fresh, replay=False)
                    pubsub.delivered.inc(len(fresh))
            finally:
                doc.live = False
                doc.actor = None
                with contextlib.suppress(Exception):
                    hub.remove(sub)


async def _deliver(connection: MqttConnection, doc: DocState, messages: list[Message], *, replay: bool) -> None:
    items: list[tuple[Message, int]] = []
    for message in messages:
        qos = doc.qos_for(message, replay)
        if qos is not None:
            items.append((message, qos))
    if items:
        await connection.send_messages(doc.db_id, items, retain=False, doc=doc)
    if messages:  # written (or taken by no subscription, e.g. before a newer one's start): passed
        doc.last_sent = max(doc.last_sent or 0, messages[-1].id)
