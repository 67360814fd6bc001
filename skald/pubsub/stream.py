"""The SSE event stream of one pub/sub subscriber: replay, then live, with no gap.

Order of work (the reason it cannot lose or double a message):

1. register a live :class:`~skald.pubsub.service.Subscriber` on the document's hub;
2. read history after the cursor from the read pool (every message committed
   before step 1 is in SQLite by then: ``after_commit`` runs after COMMIT);
3. drain the live buffer, skipping ids already sent.

If the live buffer overflows while history is still being read (a long
replay), the subscriber is re-registered and reading simply continues from
the last id sent. Once live, an overflow means the client is too slow: it gets
an ``error`` event with ``resume_from`` and the stream ends. At shutdown the
stream ends with a ``shutdown`` event (:func:`skald.server.shutdown.final_event`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import trio

from skald.db.actor import DocumentActor
from skald.db.supervisor import Supervisor
from skald.errors import SkaldError
from skald.http.sse import json_event
from skald.pubsub.service import Hub, Message, PubSub, Subscriber
from skald.pubsub.topics import TopicFilter
from skald.server.shutdown import final_event

REPLAY_PAGE = 1000


@dataclasses.dataclass(frozen=True)
class StreamRequest:
    db_id: str
    filters: list[TopicFilter]
    prefixes: list[str] | None
    since_id: int | None  # resume after this id (since_id or Last-Event-ID)
    tail: int | None
    heartbeat: float


def _ended(actor: DocumentActor, shutdown: trio.Event | None) -> bool:
    return actor.closing.is_set() or (shutdown is not None and shutdown.is_set())


async def event_stream(
    pubsub: PubSub, supervisor: Supervisor, req: StreamRequest, shutdown: trio.Event | None
) -> AsyncIterator[bytes]:
    """Yield SSE frames until the client leaves, the document closes or the server shuts down.

    One generator for the whole stream (not one wrapping another): every frame of every
    subscriber passes through it, so a second layer was a second resumption per write.
    """
    try:
        async with supervisor.open_document(req.db_id) as actor:
            hub = pubsub.hub(actor)
            sub = _subscribe(pubsub, hub, req)
            try:
                last = -1  # highest id sent; -1: live only, deliver whatever arrives
                cursor: int | None = None
                if req.tail is not None:
                    cursor = await pubsub.tail_start(actor, req.tail, req.filters, req.prefixes)
                elif req.since_id is not None:
                    cursor = req.since_id
                    pruned = await pubsub.pruned_through(actor)
                    if cursor < pruned:
                        yield json_event(
                            "reset",
                            {"requested_since_id": cursor, "oldest_id": pruned + 1, "resume_from": pruned,
                             "detail": "messages after the requested cursor were removed by retention"},
                            event_id=pruned,
                        )
                        cursor = pruned
                if cursor is not None:
                    last = cursor
                    while True:
                        messages, _scanned = await pubsub.read_after(
                            actor, last, req.filters, req.prefixes, REPLAY_PAGE
                        )
                        for old in messages:
                            yield old.sse()
                            last = old.id
                        pubsub.delivered.inc(len(messages))
                        if sub.overflowed:
                            # history outran the live buffer: re-register and keep reading from SQLite
                            hub.remove(sub)
                            sub = _subscribe(pubsub, hub, req)
                            continue
                        if len(messages) < REPLAY_PAGE:
                            break
                yield json_event("heartbeat", {"live": True})
                while not _ended(actor, shutdown):
                    batch: list[Message] | None = None
                    with trio.move_on_after(req.heartbeat):
                        batch = await sub.take()
                    if batch is None:
                        yield json_event("heartbeat", {})
                        continue
                    if not batch:  # closed: overflowed, or the document is closing / the server stopping
                        if sub.overflowed:
                            resume_from = last if last >= 0 else sub.first_lost_id - 1
                            pubsub.slow_dropped.inc()
                            yield json_event(
                                "error",
                                {"code": "slow_consumer", "resume_from": resume_from,
                                 "detail": "the client fell behind; reconnect with since_id or Last-Event-ID"},
                                event_id=resume_from if resume_from >= 0 else None,
                            )
                            return
                        break
                    # Everything queued for this subscriber goes out in one chunk: one trip through the
                    # ASGI send path (and one socket write) instead of one per message. With many
                    # subscribers that path, not the encoding (once per message, shared), is the cost.
                    frames = [message.sse() for message in batch if message.id > last]
                    if frames:
                        last = batch[-1].id
                        yield frames[0] if len(frames) == 1 else b"".join(frames)
                        pubsub.delivered.inc(len(frames))
                if shutdown is not None and shutdown.is_set():
                    yield final_event(**({"resume_from": last} if last >= 0 else {}))
            finally:
                hub.remove(sub)
    except SkaldError as exc:
        yield json_event("error", {"code": exc.code, "detail": exc.detail})


def _subscribe(pubsub: PubSub, hub: Hub, req: StreamRequest) -> Subscriber:
    sub = Subscriber(req.filters, req.prefixes, pubsub.subscriber_buffer)
    hub.add(sub)
    return sub
