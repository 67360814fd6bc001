"""Durable pub/sub: publish through group commit, fan out after commit, replay from SQLite.

* :meth:`PubSub.publish` inserts through ``actor.write`` (group commit); its
  ``after_commit`` hands the committed :class:`Message` to the document's
  in-memory :class:`Hub`, so subscribers only ever see committed messages.
* A :class:`Subscriber` has a bounded buffer (``settings.subscriber_buffer``
  messages and :data:`SUBSCRIBER_BUFFER_BYTES`). When it is full the hub drops
  the subscriber (``overflowed``) instead of growing memory: the stream tells
  the client where to resume and disconnects it.
* Replay subscribes to the hub *first*, then reads history from the read pool
  and deduplicates by id, so nothing committed in between is lost or doubled.
* Retention (none by default) is a per-document policy enforced by
  :meth:`PubSub.sweep` in small ``actor.write`` batches.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import structlog
import trio
from prometheus_client import Counter, Gauge

from skald.db.actor import DocumentActor, QueuedWrite
from skald.db.connection import DocConnection
from skald.db.supervisor import Supervisor
from skald.errors import PayloadTooLarge, ValidationFailed
from skald.http.sse import json_event
from skald.metrics import Metrics
from skald.pubsub.retention import Retention, RetentionPolicy, iso_timestamp
from skald.pubsub.topics import TopicFilter, topic_visible, validate_topic

log = structlog.get_logger("skald.pubsub.service")

SUBSCRIBER_BUFFER_BYTES = 8 * 1024 * 1024
"""Payload bytes one subscriber may have buffered before it counts as slow."""
FANOUT_SLICE = 64
"""Subscribers a hub offers a message to per scheduler round (see :class:`Hub`)."""
PAYLOAD_FORMS = ("payload", "payload_text", "payload_base64")
_FORM_OF_KEY = {"payload": "json", "payload_text": "text", "payload_base64": "base64"}
_KEY_OF_FORM = {v: k for k, v in _FORM_OF_KEY.items()}


@dataclasses.dataclass
class Message:
    """One committed message; shared by every subscriber that buffers it (never copied)."""

    id: int
    topic: str
    form: str  # json | text | base64
    payload: bytes
    content_type: str | None
    created_at: str
    _sse: bytes | None = None

    @property
    def size(self) -> int:
        return len(self.payload)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "topic": self.topic}
        if self.form == "json":
            body["payload"] = json.loads(self.payload)
        elif self.form == "text":
            body["payload_text"] = self.payload.decode("utf-8")
        else:
            body["payload_base64"] = base64.b64encode(self.payload).decode("ascii")
        body["content_type"] = self.content_type
        body["created_at"] = self.created_at
        return body

    def sse(self) -> bytes:
        """The SSE frame, encoded once however many subscribers receive it."""
        if self._sse is None:
            self._sse = json_event("message", self.to_json(), self.id)
        return self._sse

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Message:
        payload = row[3]
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        return cls(int(row[0]), str(row[1]), str(row[2]), bytes(payload), row[4], str(row[5]))


_COLUMNS = "id, topic, payload_form, payload, content_type, created_at"


@dataclasses.dataclass(frozen=True)
class Poll:
    messages: list[Message]
    scanned: int  # the last id looked at (a page cut short by its limit ends at its last message)
    pruned: int  # the highest id retention removed: a since_id below it missed messages


def _insert(
    conn: DocConnection, topic: str, form: str, payload: bytes, content_type: str | None,
    dedupe_key: str | None, created_at: str,
) -> Message:
    cursor = conn.execute(
        "INSERT INTO _skald_messages (topic, payload, payload_form, content_type, dedupe_key,"
        " created_at, size) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (topic, payload, form, content_type, dedupe_key, created_at, len(payload)),
    )
    assert cursor.lastrowid is not None
    return Message(cursor.lastrowid, topic, form, payload, content_type, created_at)


@dataclasses.dataclass(frozen=True)
class PublishResult:
    message: Message
    created: bool  # False: an earlier message with the same dedupe_key


@dataclasses.dataclass(frozen=True)
class Publish:
    """One message of a batch or stream publish, as :func:`parse_publish` validated it."""

    topic: str
    form: str  # json | text | base64
    payload: bytes
    content_type: str | None
    dedupe_key: str | None


def _insert_item(conn: DocConnection, item: Publish, created_at: str) -> PublishResult:
    """Insert ``item`` (or find the message its dedupe_key names) inside the caller's transaction."""
    if item.dedupe_key is not None:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM _skald_messages WHERE topic = ? AND dedupe_key = ?",
            (item.topic, item.dedupe_key),
        ).fetchone()
        if row is not None:
            return PublishResult(Message.from_row(row), False)
    message = _insert(conn, item.topic, item.form, item.payload, item.content_type, item.dedupe_key, created_at)
    return PublishResult(message, True)


def parse_publish(body: object, max_bytes: int) -> tuple[str, str, bytes, str | None, str | None]:
    """Validate a publish request body; return (topic, form, payload bytes, content_type, dedupe_key)."""
    if not isinstance(body, dict):
        raise ValidationFailed("body must be a JSON object")
    topic = validate_topic(body.get("topic"))
    given = [key for key in PAYLOAD_FORMS if key in body]
    if len(given) != 1:
        raise ValidationFailed("give exactly one of payload, payload_text, payload_base64")
    key = given[0]
    value = body[key]
    if key == "payload":
        payload = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    elif key == "payload_text":
        if not isinstance(value, str):
            raise ValidationFailed("payload_text must be a string")
        payload = value.encode("utf-8")
    else:
        if not isinstance(value, str):
            raise ValidationFailed("payload_base64 must be a string")
        try:
            payload = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValidationFailed("payload_base64 is not valid base64") from None
    if len(payload) > max_bytes:
        raise PayloadTooLarge(f"payload is {len(payload)} bytes; the limit is {max_bytes}", limit=max_bytes)
    content_type = body.get("content_type")
    if content_type is not None and (not isinstance(content_type, str) or len(content_type) > 255):
        raise ValidationFailed("content_type must be a string of at most 255 characters")
    dedupe_key = body.get("dedupe_key")
    if dedupe_key is not None and (not isinstance(dedupe_key, str) or not 1 <= len(dedupe_key) <= 255):
        raise ValidationFailed("dedupe_key must be a string of 1-255 characters")
    return topic, _FORM_OF_KEY[key], payload, content_type, dedupe_key


# ---- fan-out ----------------------------------------------------------------------------------------


class Subscriber:
    """A bounded buffer of messages for one stream; dropped by the hub when it is full.

    A plain list and the one task that waits on it, not a trio memory channel: with 10,000 idle
    SSE subscribers the channel's state (a deque, two ordered dicts, two endpoint objects: ~2.8 KB)
    was a large part of what each one cost, and the stream takes everything queued at once
    anyway (one write for all of it).
    """

    __slots__ = (
        "_queue",
        "_waiter",
        "buffered_bytes",
        "closed",
        "filters",
        "first_lost_id",
        "limit",
        "overflowed",
        "prefixes",
    )

    def __init__(self, filters: list[TopicFilter], prefixes: list[str] | None, limit: int) -> None:
        self.filters = filters
        self.prefixes = prefixes
        self.limit = limit
        self._queue: list[Message] = []
        self._waiter: trio.lowlevel.Task | None = None  # the task parked in take()
        self.buffered_bytes = 0
        self.overflowed = False
        self.first_lost_id = 0
        self.closed = False

    @property
    def buffered(self) -> int:
        """Messages waiting to be taken."""
        return len(self._queue)

    def wants(self, message: Message) -> bool:
        return topic_visible(message.topic, self.filters, self.prefixes)

    def offer(self, message: Message) -> bool:
        """Buffer ``message``; False (and the subscriber is closed) if the buffer is full.

        On overflow the buffered messages are dropped at once (a stuck client
        must not pin memory); ``first_lost_id`` remembers where the gap starts.
        """
        if self.closed:
            return False
        if len(self._queue) >= self.limit or (
            self.buffered_bytes + message.size > SUBSCRIBER_BUFFER_BYTES and self.buffered_bytes > 0
        ):
            self.overflowed = True
            self.first_lost_id = self._queue[0].id if self._queue else message.id
            self._queue = []
            self.buffered_bytes = 0
            self.close()
            return False
        self._queue.append(message)
        self.buffered_bytes += message.size
        self._wake()
        return True

    def take_nowait(self, limit: int | None = None) -> list[Message]:
        """The buffered messages (at most ``limit``, oldest first), removed from the buffer; [] if none."""
        if limit is None or len(self._queue) <= limit:
            taken, self._queue = self._queue, []
        else:
            taken, self._queue = self._queue[:limit], self._queue[limit:]
        self.buffered_bytes = sum(m.size for m in self._queue) if self._queue else 0
        return taken

    async def take(self, limit: int | None = None) -> list[Message]:
        """Wait until something is buffered, then :meth:`take_nowait`; [] once the subscriber is closed.

        Cancelling the wait (a heartbeat timeout) leaves the buffer as it was.
        """
        if self._queue or self.closed:
            await trio.lowlevel.checkpoint()
        else:
            if self._waiter is not None:
                raise RuntimeError("another task is already waiting on this subscriber")
            self._waiter = trio.lowlevel.current_task()

            def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
                self._waiter = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        return self.take_nowait(limit)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            trio.lowlevel.reschedule(waiter)

    def close(self) -> None:
        self.closed = True
        self._wake()


class Hub:
    """The live subscribers of one document actor, and the fan-out that feeds them.

    :meth:`deliver` runs in the actor's ``after_commit``, before the publisher is answered.
    With few subscribers it offers the message to each at once. With more than one slice
    (``fanout_slice``) it only queues the message for :meth:`serve_fanout`, which offers queued
    messages to a slice of subscribers per scheduler round: every subscriber it wakes then runs
    its own send path on the event loop, and offering to 10,000 in one go made the publisher's
    reply wait behind all of those sends (1.3-3.2 s). Paced, the reply shares each round with at
    most one slice of newly woken subscribers, whatever their number.

    Coalescing: passes start at most ``fanout_interval`` apart. The first message after a pause
    goes out at once; while messages keep coming, those committed during an interval share the
    next pass, so each subscriber gets one write for all of them (one trip through its send path)
    instead of one per message: per-message delivery cost falls as the rate rises, at a latency
    of at most one interval.

    Order: one pass at a time, each pass offers its messages in id order to a snapshot of the
    subscribers, so every subscriber sees ids ascending. A subscriber added during a pass gets
    the next pass; a message it misses that way was committed before it registered, which is
    what the streams' replay from SQLite (deduplicated by id) covers.
    """

    def __init__(self, pubsub: PubSub) -> None:
        self._pubsub = pubsub
        # insertion-ordered: passes reach subscribers oldest first, the same order every time
        self.subscribers: dict[Subscriber, None] = {}
        self._pending: list[Message] = []  # committed, not offered yet (in id order)
        self._pending_bytes = 0
        self._busy = False  # a pass is under way (or queued): deliver() must not overtake it
        self._wake = trio.Event()
        self._paced = False  # serve_fanout runs: deliver() may queue

    def deliver(self, message: Message) -> None:
        if not self._busy and (not self._paced or len(self.subscribers) <= self._pubsub.fanout_slice):
            self._offer([message], list(self.subscribers))
            return
        self._pending.append(message)
        self._pending_bytes += message.size
        self._busy = True
        self._wake.set()

    def _offer(self, messages: list[Message], subs: Sequence[Subscriber]) -> None:
        for sub in subs:
            if sub.closed:
                continue  # removed (or dropped) since the snapshot
            for message in messages:
                if sub.wants(message) and not sub.offer(message):
                    self.subscribers.pop(sub, None)
                    break

    def _behind(self) -> bool:
        # More committed-but-unoffered messages than one subscriber may buffer: pacing would only
        # let the backlog (and its memory) grow, so the pass runs to its end at once, holding the
        # event loop as the unpaced fan-out did (that is the publishers' backpressure).
        return (
            len(self._pending) > self._pubsub.subscriber_buffer
            or self._pending_bytes > SUBSCRIBER_BUFFER_BYTES
        )

    async def serve_fanout(self) -> None:
        """Offer queued messages to every subscriber, a slice per scheduler round, until cancelled."""
        self._paced = True
        next_pass = -math.inf
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                while self._pending:
                    if trio.current_time() < next_pass and not self._behind():
                        await trio.sleep_until(next_pass)  # what commits meanwhile joins this pass
                    next_pass = trio.current_time() + self._pubsub.fanout_interval
                    messages, self._pending, self._pending_bytes = self._pending, [], 0
                    subs = list(self.subscribers)
                    step = self._pubsub.fanout_slice
                    for start in range(0, len(subs), step):
                        if start and not self._behind():
                            await trio.lowlevel.checkpoint()
                        self._offer(messages, subs[start:start + step])
                self._busy = False
        finally:
            self._paced = False
            # cancelled: the document is closing and close_all() ends every subscriber next, so
            # what is still queued is dropped (the streams resume from SQLite, as at any close)
            self._pending, self._pending_bytes, self._busy = [], 0, False

    def add(self, sub: Subscriber) -> None:
        self.subscribers[sub] = None
        self._pubsub.subscribers_gauge.inc()

    def remove(self, sub: Subscriber) -> None:
        self.subscribers.pop(sub, None)
        sub.close()
        self._pubsub.subscribers_gauge.dec()

    def close_all(self) -> None:
        for sub in list(self.subscribers):
            sub.close()
        self.subscribers.clear()


# ---- the service ------------------------------------------------------------------------------------


class PubSub:
    """Per-app pub/sub service (``state.pubsub``)."""

    def __init__(
        self, supervisor: Supervisor, metrics: Metrics, subscriber_buffer: int,
        fanout_slice: int = FANOUT_SLICE, fanout_interval: float = 0.0,
    ) -> None:
        self.supervisor = supervisor
        self.subscriber_buffer = subscriber_buffer
        self.fanout_slice = fanout_slice
        self.fanout_interval = fanout_interval
        self._hubs: dict[int, tuple[DocumentActor, Hub]] = {}
        self.retention = Retention(supervisor)
        self._nursery: trio.Nursery | None = None
        r = metrics.registry
        self.published = Counter("skald_messages_published_total", "Messages committed", registry=r)
        self.delivered = Counter(
            "skald_messages_delivered_total", "Messages written to SSE subscribers", registry=r
        )
        self.subscribers_gauge = Gauge("skald_sse_subscribers", "Open pub/sub SSE streams", registry=r)
        self.slow_dropped = Counter(
            "skald_slow_consumers_dropped_total", "Subscribers cut off for falling behind", registry=r
        )
        self.deduplicated = Counter(
            "skald_messages_deduplicated_total", "Publishes answered with an earlier message (dedupe_key)",
            registry=r,
        )

    # ---- lifecycle -------------------------------------------------------------------------------

    async def serve(
        self, shutdown: trio.Event | None, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the watcher tasks and the retention sweeper until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if shutdown is not None:
                nursery.start_soon(self._close_on, shutdown)
            nursery.start_soon(self.retention.serve_sweeps)
            task_status.started()
            await trio.sleep_forever()

    async def _close_on(self, event: trio.Event) -> None:
        await event.wait()
        for _actor, hub in list(self._hubs.values()):
            hub.close_all()

    async def _serve_hub(self, actor: DocumentActor, hub: Hub) -> None:
        """Run ``hub``'s paced fan-out until ``actor`` closes, then end its subscribers."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.serve_fanout)
            await actor.closing.wait()
            nursery.cancel_scope.cancel(reason="document closing")
        entry = self._hubs.get(id(actor))
        if entry is not None and entry[0] is actor:
            del self._hubs[id(actor)]
            self.retention.forget(actor.db_id)
        hub.close_all()

    def hub(self, actor: DocumentActor) -> Hub:
        entry = self._hubs.get(id(actor))
        if entry is None or entry[0] is not actor:
            hub = Hub(self)
            self._hubs[id(actor)] = (actor, hub)
            if self._nursery is not None:
                self._nursery.start_soon(self._serve_hub, actor, hub)
            return hub
        return entry[1]

    # ---- publish ---------------------------------------------------------------------------------

    async def publish(
        self, db_id: str, topic: str, form: str, payload: bytes,
        content_type: str | None, dedupe_key: str | None,
    ) -> PublishResult:
        """Commit one message on ``db_id``; returns after COMMIT. Dedupe hits return the original (created=False)."""
        async with self.supervisor.open_document(db_id) as actor:
            return await self._publish(actor, topic, form, payload, content_type, dedupe_key)

    async def _publish(
        self, actor: DocumentActor, topic: str, form: str, payload: bytes,
        content_type: str | None, dedupe_key: str | None,
    ) -> PublishResult:
        item = Publish(topic, form, payload, content_type, dedupe_key)
        created_at, hub = iso_timestamp(), self.hub(actor)
        return await actor.write(
            lambda conn: _insert_item(conn, item, created_at), after_commit=lambda r: self._committed(hub, r)
        )

    async def publish_many(
        self, db_id: str, items: Sequence[Publish],
        also: Callable[[DocConnection, Message, int], None] | None = None,
    ) -> list[Message]:
        """Commit several messages on ``db_id`` in one op (one place in a group commit), in order.

        For a connection that streams publishes (MQTT): their order is kept and they share a
        commit; dedupe keys are not looked at (MQTT has none; :meth:`publish_batch` honours them).
        ``also(conn, message, index)`` runs after each insert in the same transaction.
        All commit or none does; returns after COMMIT.
        """
        created_at = iso_timestamp()

        def insert(conn: DocConnection) -> list[Message]:
            # One statement for the whole batch: each execute() hands the GIL back and forth with the
            # event loop, which is what a busy server waits on (not SQLite). Rows of one INSERT are
            # inserted in VALUES order, so their AUTOINCREMENT ids ascend in that order.
            values: list[object] = []
            for item in items:
                values += [item.topic, item.payload, item.form, item.content_type, created_at, len(item.payload)]
            rows = conn.execute(
                "INSERT INTO _skald_messages (topic, payload, payload_form, content_type, created_at, size)"
                " VALUES " + ",".join(["(?, ?, ?, ?, ?, ?)"] * len(items)) + " RETURNING id",
                values,
            ).fetchall()
            ids = sorted(int(row[0]) for row in rows)
            out = [
                Message(message_id, it.topic, it.form, it.payload, it.content_type, created_at)
                for message_id, it in zip(ids, items, strict=True)
            ]
            if also is not None:
                for index, message in enumerate(out):
                    also(conn, message, index)
            return out

        async with self.supervisor.open_document(db_id) as actor:
            hub = self.hub(actor)

            def committed(messages: list[Message]) -> None:
                self.published.inc(len(messages))
                for message in messages:
                    hub.deliver(message)

            return await actor.write(insert, after_commit=committed)

    # ---- reading ---------------------------------------------------------------------------------

    async def publish_batch(self, db_id: str, items: Sequence[Publish]) -> list[PublishResult]:
        """Commit ``items`` on ``db_id`` in one write op (all or nothing), in order; returns after COMMIT.

        One result per item, in order. A ``dedupe_key`` seen before (also earlier in the same
        batch) answers with the original message (``created=False``). Subscribers get the new
        messages in id order once the transaction committed.
        """
        created_at = iso_timestamp()
        async with self.supervisor.open_document(db_id) as actor:
            hub = self.hub(actor)

            def insert(conn: DocConnection) -> list[PublishResult]:
                return [_insert_item(conn, item, created_at) for item in items]

            def committed(results: list[PublishResult]) -> None:
                for result in results:
                    self._committed(hub, result)

            return await actor.write(insert, after_commit=committed)

    async def queue_publish(self, actor: DocumentActor, item: Publish) -> QueuedWrite[PublishResult]:
        """Queue one message for the next group commit (waiting for room: backpressure) and return
        at once; its :meth:`QueuedWrite.result` comes after COMMIT. Streams call this per line, in
        order, so ids follow the input."""
        created_at = iso_timestamp()
        hub = self.hub(actor)
        return await actor.enqueue_write(
            lambda conn: _insert_item(conn, item, created_at), after_commit=lambda r: self._committed(hub, r)
        )

    def _committed(self, hub: Hub, result: PublishResult) -> None:
        if result.created:
            self.published.inc()
            hub.deliver(result.message)
        else:
            self.deduplicated.inc()

    async def poll(
        self, db_id: str, since_id: int, filters: list[TopicFilter], prefixes: list[str] | None, limit: int
    ) -> Poll:
        """One page of visible messages after ``since_id``, starting past what retention has pruned."""
        async with self.supervisor.open_document(db_id) as actor:
            pruned = await self.pruned_through(actor)
            messages, scanned = await self.read_after(actor, max(since_id, pruned), filters, prefixes, limit)
        return Poll(messages, scanned, pruned)

    async def set_retention(self, db_id: str, policy: RetentionPolicy) -> int:
        """Store ``db_id``'s retention policy and sweep at once; returns how many messages it removed."""
        async with self.supervisor.open_document(db_id) as actor:
            return await self.retention.set_policy(actor, policy)

    async def retention_status(self, db_id: str) -> tuple[RetentionPolicy, int]:
        """``db_id``'s retention policy and the highest message id it has pruned."""
        async with self.supervisor.open_document(db_id) as actor:
            return await self.retention.get_policy(actor), await self.pruned_through(actor)

    async def read_after(
        self, actor: DocumentActor, since_id: int, filters: list[TopicFilter], prefixes: list[str] | None,
        limit: int,
    ) -> tuple[list[Message], int]:
        """Up to ``limit`` visible messages with id > since_id, in id order, and the last id scanned."""

        def fetch(conn: DocConnection) -> tuple[list[Message], int]:
            found: list[Message] = []
            cursor_id = since_id
            literal = bool(filters) and all(f.literal for f in filters)
            while len(found) < limit:
                if literal:
                    marks = ",".join("?" * len(filters))
                    rows = conn.execute(
                        f"SELECT {_COLUMNS} FROM _skald_messages WHERE topic IN ({marks}) AND id > ?"
                        " ORDER BY id LIMIT ?",
                        (*[f.text for f in filters], cursor_id, limit - len(found)),
                    ).fetchall()
                else:
                    rows = conn.execute(
                        f"SELECT {_COLUMNS} FROM _skald_messages WHERE id > ? ORDER BY id LIMIT 1000",
                        (cursor_id,),
                    ).fetchall()
                if not rows:
                    break
                for row in rows:
                    cursor_id = int(row[0])
                    message = Message.from_row(row)
                    if topic_visible(message.topic, filters, prefixes):
                        found.append(message)
                        if len(found) >= limit:
                            break
                if literal:
                    break
            return found, cursor_id

        return await actor.read(fetch)

    async def tail_start(
        self, actor: DocumentActor, count: int, filters: list[TopicFilter], prefixes: list[str] | None
    ) -> int:
        """The cursor (an id) after which the last ``count`` visible messages follow."""
        if count <= 0:
            return await self.last_id(actor)

        def fetch(conn: DocConnection) -> int:
            seen = 0
            cursor_id: int | None = None
            while True:
                if cursor_id is None:
                    rows = conn.execute(
                        f"SELECT {_COLUMNS} FROM _skald_messages ORDER BY id DESC LIMIT 1000"
                    ).fetchall()
                else:
                    rows = conn.execute(
                        f"SELECT {_COLUMNS} FROM _skald_messages WHERE id < ? ORDER BY id DESC LIMIT 1000",
                        (cursor_id,),
                    ).fetchall()
                if not rows:
                    return 0
                for row in rows:
                    cursor_id = int(row[0])
                    if topic_visible(str(row[1]), filters, prefixes):  # row[1]: the topic column
                        seen += 1
                        if seen == count:
                            return cursor_id - 1

        return await actor.read(fetch)

    async def last_id(self, actor: DocumentActor) -> int:
        def fetch(conn: DocConnection) -> int:
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = '_skald_messages'").fetchone()
            return int(row[0]) if row else 0

        return await actor.read(fetch)

    async def pruned_through(self, actor: DocumentActor) -> int:
        def fetch(conn: DocConnection) -> int:
            row = conn.execute("SELECT pruned_through FROM _skald_message_retention WHERE id = 1").fetchone()
            return int(row[0]) if row else 0

        return await actor.read(fetch)

__all__ = ["Hub", "Message", "PubSub", "Publish", "Subscriber", "parse_publish"]
