"""Request shapes shared by :class:`~skald.client.Client` and :class:`~skald.client.AsyncClient`.

Each function returns a :class:`Call`; the clients only execute them. Paths
follow docs/*.md of each capability.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import secrets
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from skald.client.errors import ResetRequired, SkaldClientError
from skald.client.types import Event

# Errors after which a stream reconnects: network loss / the stream ending (0) and gateway answers.
RETRYABLE = (0, 502, 503, 504)
CHUNK = 1024 * 1024  # file uploads and downloads move this many bytes at a time


@dataclasses.dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: list[tuple[str, str]] | None = None
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] | None = None


def _db(db_id: str) -> str:
    return f"/api/v1/db/{quote(db_id, safe='')}"


def _seg(value: str) -> str:
    return quote(value, safe="/")


def encode_args(args: Any) -> Any:
    """BLOB arguments (bytes) become ``{"$base64": ...}``."""
    if isinstance(args, bytes | bytearray):
        return {"$base64": base64.b64encode(bytes(args)).decode()}
    if isinstance(args, list | tuple):
        return [encode_args(a) for a in args]
    if isinstance(args, dict):
        return {k: encode_args(v) for k, v in args.items()}
    return args


def decode_value(value: Any) -> Any:
    """``{"$base64": ...}`` back to bytes."""
    if isinstance(value, dict) and set(value) == {"$base64"}:
        return base64.b64decode(value["$base64"])
    return value


def health() -> Call:
    return Call("GET", "/healthz")


# ---- documents ----------------------------------------------------------------------------------
def list_documents() -> Call:
    return Call("GET", "/api/v1/db")


def create_document(db_id: str) -> Call:
    return Call("PUT", _db(db_id))


def get_document(db_id: str) -> Call:
    return Call("GET", _db(db_id))


def delete_document(db_id: str) -> Call:
    return Call("DELETE", _db(db_id))


# ---- query --------------------------------------------------------------------------------------
def fence_body(fence: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``{"resource", "token"}`` for the server; a lease (``{"resource", "fence", ...}``) is accepted too."""
    if fence is None:
        return None
    token = fence["token"] if "token" in fence else fence["fence"]
    return {"resource": fence["resource"], "token": token}


def query(
    db_id: str,
    sql: str,
    args: Any = None,
    options: dict[str, Any] | None = None,
    fence: Mapping[str, Any] | None = None,
) -> Call:
    body: dict[str, Any] = {"sql": sql}
    if args is not None:
        body["args"] = encode_args(args)
    if options:
        body["options"] = options
    if fence is not None:
        body["fence"] = fence_body(fence)
    return Call("POST", f"{_db(db_id)}/query", json=body)


# Each statement is any of the three: one batch may mix them.
Statements = Sequence[tuple[str, Any] | Mapping[str, Any] | str]


def batch(
    db_id: str,
    statements: Statements,
    options: dict[str, Any] | None = None,
    fence: Mapping[str, Any] | None = None,
) -> Call:
    """``statements``: ``(sql, args)`` pairs, ``{"sql", "args"}`` objects or bare SQL strings."""
    items: list[dict[str, Any]] = []
    for s in statements:
        if isinstance(s, str):
            items.append({"sql": s})
        elif isinstance(s, Mapping):
            items.append({"sql": s["sql"], "args": encode_args(s.get("args"))})
        else:
            items.append({"sql": s[0], "args": encode_args(s[1])})
    body: dict[str, Any] = {"statements": items}
    if options:
        body["options"] = options
    if fence is not None:
        body["fence"] = fence_body(fence)
    return Call("POST", f"{_db(db_id)}/query/batch", json=body)


def watch(
    db_id: str,
    sql: str,
    args: Any = None,
    result_hash: str | None = None,
    options: dict[str, Any] | None = None,
) -> Call:
    """``result_hash``: the hash the client already shows; the server then answers ``unchanged``."""
    body: dict[str, Any] = {"sql": sql}
    if args is not None:
        body["args"] = encode_args(args)
    opts = dict(options or {})
    if result_hash:
        opts["result_hash"] = result_hash
    if opts:
        body["options"] = opts
    return Call("POST", f"{_db(db_id)}/query/watch", json=body, headers={"Accept": "text/event-stream"})


# ---- messages -----------------------------------------------------------------------------------
def publish(
    db_id: str,
    topic: str,
    payload: Any = None,
    *,
    text: str | None = None,
    data: bytes | None = None,
    content_type: str | None = None,
    dedupe_key: str | None = None,
) -> Call:
    body: dict[str, Any] = {"topic": topic}
    if data is not None:
        body["payload_base64"] = base64.b64encode(data).decode()
    elif text is not None:
        body["payload_text"] = text
    else:
        body["payload"] = payload
    if content_type:
        body["content_type"] = content_type
    if dedupe_key:
        body["dedupe_key"] = dedupe_key
    return Call("POST", f"{_db(db_id)}/messages", json=body)


def _topics(topics: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """Topic filters (MQTT wildcards ``+`` and ``#``) as repeated ``topic=`` parameters."""
    return [("topic", t) for t in topics]


def poll_messages(
    db_id: str, topics: list[str], since_id: int | None = None, limit: int | None = None
) -> Call:
    params = _topics(topics)
    if since_id is not None:
        params.append(("since_id", str(since_id)))
    if limit is not None:
        params.append(("limit", str(limit)))
    return Call("GET", f"{_db(db_id)}/messages", params=params)


def subscribe(
    db_id: str,
    topics: list[str],
    since_id: int | None,
    tail: int | None,
    last_event_id: str | None,
    heartbeat: float | None = None,
) -> Call:
    """The first connection sends ``since_id``/``tail``; a reconnect sends ``Last-Event-ID`` instead."""
    params = _topics(topics)
    if since_id is not None and last_event_id is None:
        params.append(("since_id", str(since_id)))
    if tail is not None and last_event_id is None:
        params.append(("tail", str(tail)))
    if heartbeat is not None:
        params.append(("heartbeat", str(heartbeat)))
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    return Call("GET", f"{_db(db_id)}/events/stream", params=params, headers=headers)


# ---- webhooks and tokens ------------------------------------------------------------------------
def webhook(db_id: str, endpoint: str, body: bytes, headers: dict[str, str] | None = None) -> Call:
    return Call("POST", f"{_db(db_id)}/webhooks/{_seg(endpoint)}", content=body, headers=headers)


def create_token(scopes: list[str], label: str = "", expires_in: str | None = None) -> Call:
    body: dict[str, Any] = {"scopes": scopes, "label": label}
    if expires_in:
        body["expires_in"] = expires_in
    return Call("POST", "/api/v1/admin/tokens", json=body)


def list_tokens() -> Call:
    return Call("GET", "/api/v1/admin/tokens")


def revoke_token(token_id: str) -> Call:
    return Call("DELETE", f"/api/v1/admin/tokens/{quote(token_id, safe='')}")


# ---- streams ------------------------------------------------------------------------------------
def stream_send(db_id: str, topic: str, data: bytes, *, broadcast: bool = False) -> Call:
    params = [("pubsub", "true")] if broadcast else None
    return Call("POST", f"{_db(db_id)}/streams/queue/{_seg(topic)}", params=params, content=data)


def stream_next(db_id: str, topic: str) -> Call:
    return Call("GET", f"{_db(db_id)}/streams/queue/{_seg(topic)}/next")


def stream_request(db_id: str, path: str, data: bytes) -> Call:
    return Call("POST", f"{_db(db_id)}/streams/req/{_seg(path)}", content=data)


def stream_respond(db_id: str, path: str, data: bytes) -> Call:
    return Call("POST", f"{_db(db_id)}/streams/res/{_seg(path)}", content=data)


# ---- leases -------------------------------------------------------------------------------------
def lease_acquire(db_id: str, resource: str, owner: str, ttl_seconds: float | None = None) -> Call:
    body: dict[str, Any] = {"resource": resource, "owner": owner}
    if ttl_seconds is not None:
        body["ttl_seconds"] = ttl_seconds
    return Call("POST", f"{_db(db_id)}/leases/acquire", json=body)


def lease_renew(db_id: str, resource: str, lease_token: str, ttl_seconds: float | None = None) -> Call:
    body: dict[str, Any] = {"resource": resource, "lease_token": lease_token}
    if ttl_seconds is not None:
        body["ttl_seconds"] = ttl_seconds
    return Call("POST", f"{_db(db_id)}/leases/renew", json=body)


def lease_release(db_id: str, resource: str, lease_token: str) -> Call:
    return Call(
        "POST", f"{_db(db_id)}/leases/release", json={"resource": resource, "lease_token": lease_token}
    )


# ---- blobs --------------------------------------------------------------------------------------
# Blobs are content-addressed: ``sha256`` (64 hex) names the object; ``ref`` names this document's use.
def blob_init(db_id: str, sha256: str, size: int, content_type: str = "application/octet-stream") -> Call:
    """-> ``{"sha256", "size", "exists": true}`` or ``{..., "exists": false, "upload": {method, url, headers}}``."""
    return Call(
        "POST",
        f"{_db(db_id)}/blobs/init-upload",
        json={"sha256": sha256, "size": size, "content_type": content_type},
    )


def blob_complete(db_id: str, sha256: str) -> Call:
    return Call("POST", f"{_db(db_id)}/blobs/complete-upload", json={"sha256": sha256})


def blob_read_url(db_id: str, sha256: str) -> Call:
    return Call("GET", f"{_db(db_id)}/blobs/{_seg(sha256)}/read-url")


def blob_claim(db_id: str, sha256: str, ref: str) -> Call:
    return Call("POST", f"{_db(db_id)}/blobs/claim", json={"sha256": sha256, "ref": ref})


def blob_release(db_id: str, sha256: str, ref: str) -> Call:
    return Call("POST", f"{_db(db_id)}/blobs/release", json={"sha256": sha256, "ref": ref})


def blob_list(db_id: str, sha256: str | None = None, limit: int | None = None) -> Call:
    params: list[tuple[str, str]] = []
    if sha256 is not None:
        params.append(("sha256", sha256))
    if limit is not None:
        params.append(("limit", str(limit)))
    return Call("GET", f"{_db(db_id)}/blobs", params=params or None)


def upload_headers(upload: Mapping[str, Any], size: int) -> dict[str, str]:
    """Headers for the presigned PUT: the server's (``Content-Type``) plus the length."""
    return {**dict(upload.get("headers") or {}), "Content-Length": str(size)}


# ---- sync ---------------------------------------------------------------------------------------
def snapshot(db_id: str) -> Call:
    return Call("GET", f"{_db(db_id)}/snapshot")


def changes(db_id: str, since: int, limit: int | None = None) -> Call:
    params = [("since", str(since))]
    if limit is not None:
        params.append(("limit", str(limit)))
    return Call("GET", f"{_db(db_id)}/changes", params=params)


def changes_stream(db_id: str, since: int) -> Call:
    return Call(
        "GET",
        f"{_db(db_id)}/changes/stream",
        params=[("since", str(since))],
        headers={"Accept": "text/event-stream"},
    )


def parse_data(data: str) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        return data


def check_sha256(data: bytes, sha256: str) -> None:
    """Raise when downloaded bytes do not hash to what was asked for."""
    check_digest(hashlib.sha256(data).hexdigest(), sha256)


def check_digest(actual: str, sha256: str) -> None:
    if actual != sha256:
        raise SkaldClientError(0, "hash_mismatch", f"downloaded bytes hash to {actual}, not {sha256}")


def default_owner() -> str:
    """The lease owner used when none is given: ``host/pid/random``."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"


# ---- blob transfers (the parts of upload/download that do not depend on sync or async I/O) -------
def file_sha256(path: Path) -> tuple[str, int]:
    """SHA-256 (hex) and size of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def upload_failed(status: int, text: str) -> SkaldClientError:
    return SkaldClientError(
        status, "upload_failed", f"object storage refused the upload: {status} {text[:200]}".rstrip()
    )


def download_failed(status: int) -> SkaldClientError:
    return SkaldClientError(status, "download_failed", f"object storage answered {status}")


def upload_result(sha256: str, size: int, uploaded: bool, ref: str | None) -> dict[str, Any]:
    """What ``upload_blob`` returns: ``{"sha256", "size", "uploaded", "ref"?}``."""
    result: dict[str, Any] = {"sha256": sha256, "size": size, "uploaded": uploaded}
    if ref is not None:
        result["ref"] = ref
    return result


def part_path(dest: Path) -> Path:
    """Where a download is written until its hash is checked (``dest`` is never half-written)."""
    return dest.with_name(dest.name + ".part")


def download_result(sha256: str, info: Mapping[str, Any], dest: Path) -> dict[str, Any]:
    return {"sha256": sha256, "size": info.get("size"), "path": str(dest)}


# ---- streams of events --------------------------------------------------------------------------
# Each stream is a cursor: the request for the next connection (resuming where the last one
# stopped) and what to make of each server event. The clients only run the reconnect loop around
# it, with their own I/O, so the blocking and the async client cannot drift apart.
class StreamCursor(Protocol):
    reconnect: bool

    def call(self) -> Call: ...

    def accept(self, event: Event) -> Event | None:
        """The event to yield (or None); raises to end the connection."""


def backoff_delay(attempt: int, delay: float, max_delay: float, max_reconnects: int | None) -> float:
    """Seconds to wait before reconnect ``attempt`` (1, 2, ...): doubling from ``delay`` up to
    ``max_delay``; raises ``reconnects_exhausted`` after ``max_reconnects`` in a row."""
    if max_reconnects is not None and attempt > max_reconnects:
        raise SkaldClientError(0, "reconnects_exhausted", f"gave up after {attempt - 1} reconnects")
    return float(min(max_delay, delay * 2 ** (attempt - 1)))


def stream_ended() -> SkaldClientError:
    """The server closed the stream (shutdown, the document closing): retryable (status 0)."""
    return SkaldClientError(0, "stream_ended", "the server ended the stream")


def should_reconnect(cursor: StreamCursor, exc: SkaldClientError) -> bool:
    return cursor.reconnect and exc.status in RETRYABLE and not isinstance(exc, ResetRequired)


class WatchCursor:
    """``watch``: one ``snapshot``, then ``update`` and ``error`` events; reconnects send the last
    ``result_hash`` so the server answers ``unchanged`` instead of repeating a result."""

    reconnect = True

    def __init__(self, db_id: str, sql: str, args: Any, heartbeat_seconds: float | None) -> None:
        self.db_id, self.sql, self.args = db_id, sql, args
        self.options = {"heartbeat_seconds": heartbeat_seconds} if heartbeat_seconds else None
        self.last_hash: str | None = None
        self.shown = False

    def call(self) -> Call:
        return watch(self.db_id, self.sql, self.args, self.last_hash, self.options)

    def accept(self, event: Event) -> Event | None:
        if event.event == "error":
            self.last_hash = None  # the server sends the next good result as an update
            return event
        if event.event not in ("snapshot", "update"):
            return None  # unchanged, heartbeat
        digest = event.data.get("result_hash") if isinstance(event.data, dict) else None
        if digest is not None and digest == self.last_hash:
            return None
        self.last_hash = digest
        if event.event == "snapshot" and self.shown:  # a reconnect's first result
            event = Event("update", event.id, event.data)
        self.shown = True
        return event


class SubscribeCursor:
    """``subscribe``: ``message`` and ``reset`` events; reconnects send ``Last-Event-ID``.

    ``idle_timeout``: an ``idle`` event (no data) once that many seconds passed without a
    message; the server's heartbeats are what wake the client to notice. ``clock``: seconds
    (``time.monotonic``; the async client passes its event loop's clock, so a test clock applies).
    """

    reconnect = True

    def __init__(
        self,
        db_id: str,
        topics: Sequence[str],
        since_id: int | None,
        tail: int | None,
        heartbeat: float | None,
        idle_timeout: float | None,
        clock: Callable[[], float],
    ) -> None:
        self.db_id, self.topics, self.since_id, self.tail = db_id, list(topics), since_id, tail
        self.heartbeat, self.idle_timeout, self.clock = heartbeat, idle_timeout, clock
        self.last_id: str | None = None
        self.quiet_since: float | None = None  # set by the first connection: iterating starts the clock

    def call(self) -> Call:
        if self.quiet_since is None:
            self.quiet_since = self.clock()
        return subscribe(self.db_id, self.topics, self.since_id, self.tail, self.last_id, self.heartbeat)

    def accept(self, event: Event) -> Event | None:
        now = self.clock()
        if event.id:
            self.last_id = event.id
        if event.event == "error":
            # slow_consumer (its id is the resume point) or the document closing: reconnect
            raise SkaldClientError(0, "stream_interrupted", "the server interrupted the subscription")
        if event.event in ("message", "reset"):
            self.quiet_since = now
            return event
        quiet_since = now if self.quiet_since is None else self.quiet_since
        if self.idle_timeout is not None and now - quiet_since >= self.idle_timeout:
            self.quiet_since = now
            return Event("idle", "", None)
        return None  # heartbeat


class ChangesCursor:
    """``follow_changes``: ``change`` events after ``since``, resuming from the last one yielded;
    ``reset`` raises :class:`ResetRequired`. ``reconnect=False``: connection loss and the server
    ending the stream are raised instead (the caller does its own backoff)."""

    def __init__(self, db_id: str, since: int, reconnect: bool) -> None:
        self.db_id, self.cursor, self.reconnect = db_id, since, reconnect

    def call(self) -> Call:
        return changes_stream(self.db_id, self.cursor)

    def accept(self, event: Event) -> Event | None:
        if event.event == "reset":
            raise ResetRequired(410, "reset", "change feed no longer holds this sequence", event.data)
        if event.event != "change":
            return None  # heartbeat
        self.cursor = int(event.id)
        return event
