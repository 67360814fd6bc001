"""``POST …/messages/stream``: publish one message per NDJSON line, each acknowledged after its commit.

Each line is what ``POST …/messages`` takes for one message. It is validated and authorized
(the token's ``pub.publish`` prefixes, per topic, denials audited), then queued on the
document in line order, so ids follow the input; its acknowledgement is
``{"line": n, "id": …, "topic": …, "created_at": …}`` (``"deduplicated": true`` for a repeated
dedupe_key) once committed, or ``{"line": n, "problem": {…}}``. See :mod:`skald.http.ndjson`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from skald.auth.guard import check_scope
from skald.auth.scopes import Principal
from skald.http.ndjson import Ack, Start, Started
from skald.http.state import AppState
from skald.pubsub.service import Publish, PubSub, parse_publish


@asynccontextmanager
async def open_publish_stream(
    state: AppState, pubsub: PubSub, db_id: str, principal: Principal, *, path: str, ip: str
) -> AsyncIterator[Start]:
    """Hold ``db_id`` open for the stream; yield the per-line ``start``."""
    max_bytes = state.settings.message_max_bytes
    async with state.supervisor.open_document(db_id) as actor:

        async def start(value: Any) -> Started:
            item = Publish(*parse_publish(value, max_bytes))
            await check_scope(state, principal, db_id, "pub.publish", item.topic, path=path, ip=ip)
            queued = await pubsub.queue_publish(actor, item)

            async def wait() -> Ack:
                result = await queued.result()
                message = result.message
                ack: Ack = {"id": message.id, "topic": message.topic, "created_at": message.created_at}
                if not result.created:
                    ack["deduplicated"] = True
                return ack

            return Started(wait, lambda: queued.done)

        yield start
