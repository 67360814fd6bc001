"""Pub/sub routes: publish, follow over SSE, poll, retention policy, and a diagnostic ping.

Routes stay thin: they parse and authorize, then call :mod:`skald.pubsub.service` /
:mod:`skald.pubsub.stream`. See ``docs/pubsub.md``.
"""

from __future__ import annotations

import functools
from typing import Any

from quart import Response, jsonify, request
from quart_trio import QuartTrio

from skald.auth.guard import authorize, current_principal, requires
from skald.auth.scopes import allowed_prefixes
from skald.db.ids import validate_db_id
from skald.errors import BadRequest, DocumentNotFound, PayloadTooLarge, ScopeDenied, SkaldError, ValidationFailed
from skald.http.context import request_ip
from skald.http.ndjson import AckStream, ndjson_response
from skald.http.params import heartbeat_param, int_param
from skald.http.sse import sse_response
from skald.http.state import AppState, get_state
from skald.pubsub.ingest import open_publish_stream
from skald.pubsub.retention import RetentionPolicy
from skald.pubsub.service import Publish, PubSub, parse_publish
from skald.pubsub.stream import StreamRequest, event_stream
from skald.pubsub.topics import TopicFilter

MAX_TAIL = 1000
MAX_POLL_LIMIT = 1000
MAX_BATCH = 1000
"""Messages one batch publish may carry."""
STREAM_WINDOW = 1000
"""Lines of one NDJSON stream in flight (queued or committing) before reading waits."""
BATCH_MAX_BODY_BYTES = 8 * 1024 * 1024
"""A batch's request body (each message still within ``message_max_bytes``)."""


def install(app: QuartTrio, state: AppState) -> None:
    settings = state.settings
    pubsub = PubSub(
        state.supervisor, state.metrics, settings.subscriber_buffer, fanout_interval=settings.fanout_interval_seconds
    )
    state.pubsub = pubsub
    base = "/api/v1/db/<db_id>"
    app.add_url_rule(f"{base}/messages", view_func=publish_view, methods=["POST"])
    app.add_url_rule(f"{base}/messages", view_func=poll_view, methods=["GET"])
    app.add_url_rule(f"{base}/events/stream", view_func=stream_view, methods=["GET"])
    app.add_url_rule(f"{base}/messages/retention", view_func=get_retention_view, methods=["GET"])
    app.add_url_rule(f"{base}/messages/retention", view_func=put_retention_view, methods=["PUT"])
    app.add_url_rule(f"{base}/ping", view_func=ping_view, methods=["POST"])
    app.add_url_rule(f"{base}/messages/stream", view_func=publish_stream_view, methods=["POST"])

    @app.before_serving
    async def start_pubsub() -> None:
        await app.nursery.start(pubsub.serve, state.shutdown.event)


def _pubsub() -> PubSub:
    service: PubSub = get_state().pubsub
    return service


async def _visible_filters(db_id: str) -> tuple[list[TopicFilter], list[str] | None]:
    """Parse repeated ``topic=`` filters and intersect them with the token's resource prefixes."""
    filters = [TopicFilter.parse(text) for text in request.args.getlist("topic")]
    prefixes = allowed_prefixes(current_principal(), db_id, "pub.subscribe")
    if prefixes is not None:
        for f in filters:
            if not any(f.may_intersect(p) for p in prefixes):
                await authorize(current_principal(), db_id, "pub.subscribe", f.text)  # audited 403
                raise ScopeDenied(f"topic filter {f.text!r} is outside this token's prefixes")
    return filters, prefixes


@requires("pub.publish")
async def publish_view(db_id: str) -> tuple[Response, int]:
    """Publish one message, or a batch (``{"messages": [...]}``, all or nothing); 2xx after commit.

    One message: 201 ``{id, topic, created_at}``, or 200 with the original for a repeated
    dedupe_key. A batch: 201 ``{"ids": [...]}`` in order (``deduplicated``: the indexes answered
    with an earlier message; 200 when every one was).
    """
    settings = get_state().settings
    # base64 costs 4/3 of the payload; anything beyond that plus a margin is refused unread
    body_cap = max(settings.message_max_bytes * 4 // 3 + 64 * 1024, BATCH_MAX_BODY_BYTES)
    if request.content_length is not None and request.content_length > body_cap:
        raise PayloadTooLarge(f"request body is over {body_cap} bytes", limit=body_cap)
    body = await request.get_json(force=True, silent=False)
    if isinstance(body, dict) and "messages" in body:
        return await _publish_batch(db_id, body)
    single_cap = settings.message_max_bytes * 4 // 3 + 64 * 1024
    if request.content_length is not None and request.content_length > single_cap:
        raise PayloadTooLarge(f"request body is over {single_cap} bytes", limit=settings.message_max_bytes)
    topic, form, payload, content_type, dedupe_key = parse_publish(body, settings.message_max_bytes)
    await authorize(current_principal(), db_id, "pub.publish", topic)
    result = await _pubsub().publish(db_id, topic, form, payload, content_type, dedupe_key)
    message = result.message
    reply = {"id": message.id, "topic": message.topic, "created_at": message.created_at}
    if not result.created:
        reply["deduplicated"] = True
    return jsonify(reply), (201 if result.created else 200)


def parse_batch(body: dict[str, Any], max_bytes: int) -> list[Publish]:
    """The messages of a batch body; a bad one raises its error with ``message_index``."""
    if set(body) != {"messages"}:
        raise ValidationFailed("a batch body holds only messages (one message: topic and payload, no messages)")
    items = body["messages"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        raise ValidationFailed(f"messages must be a list of 1 to {MAX_BATCH} messages")
    parsed: list[Publish] = []
    for index, item in enumerate(items):
        try:
            parsed.append(Publish(*parse_publish(item, max_bytes)))
        except SkaldError as exc:
            exc.extra["message_index"] = index
            exc.detail = f"message {index}: {exc.detail}"
            raise
    return parsed


async def _publish_batch(db_id: str, body: dict[str, Any]) -> tuple[Response, int]:
    items = parse_batch(body, get_state().settings.message_max_bytes)
    principal = current_principal()
    for topic in dict.fromkeys(item.topic for item in items):  # each topic once, in order
        await authorize(principal, db_id, "pub.publish", topic)
    results = await _pubsub().publish_batch(db_id, items)
    reply: dict[str, Any] = {"ids": [r.message.id for r in results]}
    deduplicated = [index for index, r in enumerate(results) if not r.created]
    if deduplicated:
        reply["deduplicated"] = deduplicated
    return jsonify(reply), (200 if len(deduplicated) == len(results) else 201)


@requires("pub.publish")
async def publish_stream_view(db_id: str) -> Response:
    """NDJSON in, NDJSON out: one message per line, one acknowledgement per line after its commit."""
    state = get_state()
    validate_db_id(db_id)
    if not state.supervisor.exists(db_id):
        raise DocumentNotFound(f"document {db_id} does not exist")
    path, ip = request.path, request_ip()
    opened = functools.partial(open_publish_stream, state, _pubsub(), db_id, current_principal(), path=path, ip=ip)
    max_line = state.settings.message_max_bytes * 4 // 3 + 64 * 1024
    return ndjson_response(AckStream(request.body, opened, window=STREAM_WINDOW, max_line=max_line))


@requires("pub.subscribe")
async def stream_view(db_id: str) -> Response:
    """SSE: ``message``, ``heartbeat``, ``reset`` and ``error`` events (see docs/pubsub.md)."""
    state = get_state()
    validate_db_id(db_id)
    if not state.supervisor.exists(db_id):
        raise DocumentNotFound(f"document {db_id} does not exist")
    args = request.args
    since_id = int_param("since_id", args.get("since_id"))
    tail = int_param("tail", args.get("tail"))
    if since_id is not None and tail is not None:
        raise BadRequest("give since_id or tail, not both")
    if tail is not None and tail > MAX_TAIL:
        raise ValidationFailed(f"tail must be at most {MAX_TAIL}")
    last_event_id = int_param("Last-Event-ID", request.headers.get("Last-Event-ID"))
    if last_event_id is not None:  # a reconnect: the header wins over the URL's original cursor
        since_id, tail = last_event_id, None
    heartbeat = heartbeat_param(args.get("heartbeat"), state.settings.sse_heartbeat_seconds)
    filters, prefixes = await _visible_filters(db_id)
    stream = StreamRequest(db_id, filters, prefixes, since_id, tail, heartbeat)
    generator = event_stream(_pubsub(), state.supervisor, stream, state.shutdown.event)
    return sse_response(generator)


@requires("pub.subscribe")
async def poll_view(db_id: str) -> dict[str, Any]:
    """JSON poll: messages with id > since_id matching the filters, oldest first."""
    since_id = int_param("since_id", request.args.get("since_id"), 0)
    limit = int_param("limit", request.args.get("limit"), 100, minimum=1)
    if limit > MAX_POLL_LIMIT:
        raise ValidationFailed(f"limit must be at most {MAX_POLL_LIMIT}")
    filters, prefixes = await _visible_filters(db_id)
    page = await _pubsub().poll(db_id, since_id, filters, prefixes, limit)
    messages = page.messages
    next_since = messages[-1].id if len(messages) >= limit else max(page.scanned, since_id)
    body: dict[str, Any] = {"messages": [m.to_json() for m in messages], "next_since_id": next_since}
    if since_id < page.pruned:
        body["reset"] = {"requested_since_id": since_id, "oldest_id": page.pruned + 1}
    return body


# The largest limits a policy can hold: counts are stored as SQLite integers (int64), and an age is
# subtracted from today's date (a century is far past any retention and far from the calendar's end).
MAX_RETENTION_AGE_SECONDS = 100 * 365 * 86400
MAX_RETENTION_COUNT = 2**63 - 1


def _policy_value(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValidationFailed(f"{name} must be a positive number or null")
    maximum = MAX_RETENTION_AGE_SECONDS if kind is float else MAX_RETENTION_COUNT
    if value > maximum:
        raise ValidationFailed(f"{name} must be at most {maximum}")
    if kind is int and int(value) != value:
        raise ValidationFailed(f"{name} must be an integer")
    return kind(value)


@requires("db.admin")
async def put_retention_view(db_id: str) -> dict[str, Any]:
    """Set the retention policy (null fields = no limit) and sweep at once."""
    body = await request.get_json(force=True)
    if not isinstance(body, dict):
        raise ValidationFailed("body must be a JSON object")
    unknown = set(body) - {"max_age_seconds", "max_count", "max_bytes"}
    if unknown:
        raise ValidationFailed(f"unknown fields: {', '.join(sorted(unknown))}")
    policy = RetentionPolicy(
        _policy_value(body, "max_age_seconds", float),
        _policy_value(body, "max_count", int),
        _policy_value(body, "max_bytes", int),
    )
    removed = await _pubsub().set_retention(db_id, policy)
    return {**policy.to_json(), "removed": removed}


@requires("db.admin")
async def get_retention_view(db_id: str) -> dict[str, Any]:
    policy, pruned = await _pubsub().retention_status(db_id)
    return {**policy.to_json(), "pruned_through": pruned}


@requires("pub.publish")
async def ping_view(db_id: str) -> dict[str, Any]:
    """Diagnostic: an authenticated no-op POST (parses the JSON body, touches no document).

    The benchmark uses it as the framework ceiling for publish throughput.
    """
    validate_db_id(db_id)  # as every document route does: a bad id is 400 even where nothing is opened
    await request.get_json(force=True, silent=True)
    return {"ok": True}
