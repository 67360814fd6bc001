"""Legacy patchwork relay routes (``/p/…``, ``/public/…``, ``/u/{user}/…``) at the ASGI layer.

Why not a Quart view: Quart's request ``Body`` collects whatever the server
delivers into one buffer with no backpressure (and its size cap then cuts a
slow transfer). Here ``receive()`` is called only as the consumer takes each
chunk, so hypercorn stops reading the producer's socket while the consumer
is slow: a body of any size streams in bounded memory.

This module covers blocking queues and broadcast with the spec's header
carriage, ``body=``, ``pubsub``, 405s, the public rate limit and token auth
for ``/u``. Request/responder, switch and hooks are not built yet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

import structlog
import trio
from prometheus_client import Counter, Gauge

from skald.auth.guard import token_record
from skald.auth.scopes import decide
from skald.client_ip import client_ip
from skald.errors import SkaldError
from skald.ids import DB_ID_PATTERN
from skald.ratelimit import RateLimiter
from skald.relay import RelayHub, Transfer
from skald.state import AppState

log = structlog.get_logger("skald.legacy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC_DOCUMENT = "public"
CARRIED = ("user-agent", "accept", "accept-language", "accept-encoding", "referer", "origin",
           "x-forwarded-for", "x-real-ip", "content-length")
_PREFIXES = ("/p/", "/public/", "/u/")


class RelayMetrics:
    def __init__(self, state: AppState, hub: RelayHub) -> None:
        registry = state.metrics.registry
        self.waiting = Gauge(
            "skald_stream_channels_waiting", "Relay producers and consumers waiting", registry=registry
        )
        self.waiting.set_function(lambda: hub.waiting)
        self.pairs = Counter("skald_stream_pairs_total", "Relay messages paired with a consumer", registry=registry)
        self.bytes = Counter("skald_stream_bytes_relayed_total", "Body bytes relayed", registry=registry)
        self.switch_timeouts = Counter(
            "skald_stream_switch_timeouts_total", "Switched requests nobody answered in time", registry=registry
        )


class _Refused(Exception):
    def __init__(self, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(text)
        self.status, self.text, self.headers = status, text, headers or []


def is_legacy_path(path: str) -> bool:
    return path.startswith(_PREFIXES)


class LegacyRelay:
    """ASGI middleware: serves the legacy relay paths, passes everything else to the app."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state
        self.hub: RelayHub = state.services.setdefault("relay", RelayHub())
        self.metrics = RelayMetrics(state, self.hub)
        settings = state.settings
        self.public_limit = RateLimiter(settings.public_rate_per_second, settings.public_rate_burst)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_legacy_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        try:
            await self._serve(scope, receive, send)
        except _Refused as refused:
            await _text(send, refused.status, refused.text, refused.headers)
        except SkaldError as error:
            await _text(send, error.status, error.detail, [(k.encode(), v.encode()) for k, v in error.headers.items()])

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        args = dict(query)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope["method"]
        if method not in ("GET", "POST", "PUT"):
            raise _Refused(405, "method not allowed", [(b"allow", b"GET, POST, PUT")])
        if path.startswith("/u/"):
            user, _, sub = path[3:].partition("/")
            if not DB_ID_PATTERN.match(user) or ".." in user:
                raise _Refused(400, "invalid user")
            db_id, namespace = user, "u"
        else:
            namespace = "p" if path.startswith("/p/") else "public"
            sub = path[len(namespace) + 2 :]
            db_id = PUBLIC_DOCUMENT
            peer = scope.get("client")
            ip = client_ip(peer[0] if peer else None, headers.get("x-forwarded-for"), headers.get("x-real-ip"),
                           self.state.settings.trusted_proxies)
            wait = self.public_limit.try_acquire(ip)
            if wait > 0:
                raise _Refused(429, "too many requests", [(b"retry-after", str(max(1, round(wait + 0.5))).encode())])
        if not sub:
            raise _Refused(400, "missing channel path")
        first = sub.split("/", 1)[0]
        if first in ("req", "res"):
            raise _Refused(501, "request/responder channels are not supported by this server yet")
        body_text = args.get("body", "")
        producer = method in ("POST", "PUT") or bool(body_text)
        if namespace == "u":
            await self._authorize(headers, args, db_id, "stream.write" if producer else "stream.read", "/" + sub)
        key = f"{db_id}\x00{namespace}\x00{sub}"
        broadcast = first == "pubsub" or "pubsub" in args
        async with self.state.supervisor.open_document(db_id, create=True):
            if producer:
                transfer = Transfer(200, _carried_headers(scope, headers, query, body_text))
                await self._produce(key, transfer, broadcast, receive, send, body_text.encode() if body_text else None)
            else:
                await self._consume(key, receive, send)

    async def _authorize(
        self, headers: dict[str, str], args: dict[str, str], db_id: str, action: str, resource: str
    ) -> None:
        raw = headers.get("authorization", "").strip()
        scheme, _, value = raw.partition(" ")
        secret = value.strip() if scheme.lower() in ("bearer", "token") else raw
        secret = secret or args.get("token", "")
        if not secret:
            raise _Refused(401, "unauthorized", [(b"www-authenticate", b'Bearer realm="skald"')])
        record = await token_record(self.state, secret)
        if record is None or record.state() != "active":
            raise _Refused(401, "unauthorized", [(b"www-authenticate", b'Bearer realm="skald"')])
        decision = decide(record.principal(), db_id, action, resource)
        if not decision.allowed:
            raise _Refused(403, "forbidden")

    async def _produce(
        self, key: str, transfer: Transfer, broadcast: bool, receive: Receive, send: Send, body: bytes | None
    ) -> None:
        if broadcast:
            transfers = []
            for waiter in self.hub.take_all_consumers(key):
                copy = Transfer(transfer.status, transfer.headers)
                self.hub.hand(waiter, copy)
                transfers.append(copy)
        else:
            await self.hub.produce(key, transfer)
            transfers = [transfer]
        self.metrics.pairs.inc(len(transfers))
        aborted = await self._pump(transfers, receive, body)
        for t in transfers:
            await t.finished.wait()
        if aborted:
            return  # the producer is gone: nobody to answer
        if all(t.delivered for t in transfers):
            await _text(send, 200, "")
        else:
            await _text(send, 502, "the consumer disconnected before it received the whole message")

    async def _pump(self, transfers: list[Transfer], receive: Receive, body: bytes | None) -> bool:
        """Stream the producer's body to every transfer; return True if the producer went away."""
        live = list(transfers)

        async def deliver(chunk: bytes) -> None:
            for t in list(live):
                try:
                    await t.send.send(chunk)
                    self.metrics.bytes.inc(len(chunk))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    live.remove(t)

        aborted = False
        try:
            if body is not None:
                await deliver(body)
            else:
                while live:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        aborted = True
                        break
                    chunk = message.get("body", b"")
                    if chunk:
                        await deliver(chunk)
                    if not message.get("more_body", False):
                        break
        finally:
            for t in transfers:
                t.producer_aborted = aborted
                t.send.close()
        return aborted

    async def _consume(self, key: str, receive: Receive, send: Send) -> None:
        async with trio.open_nursery() as nursery:
            gone = trio.Event()

            async def watch_disconnect() -> None:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        gone.set()
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(watch_disconnect)
            transfer = await self.hub.consume(key)
            delivered = False
            try:
                await send({"type": "http.response.start", "status": transfer.status, "headers": transfer.headers})
                async for chunk in transfer.receive:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if transfer.producer_aborted:
                    raise _ProducerVanished
                if not gone.is_set():
                    # Shielded: completing the response makes hypercorn report a disconnect at once,
                    # which must not cancel the very send that completed it.
                    with trio.CancelScope(shield=True):
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                    delivered = True
            finally:
                transfer.finish(delivered)
            nursery.cancel_scope.cancel()


class _ProducerVanished(Exception):
    """Ends the consumer's response without its last chunk, so the client sees an incomplete body."""


def _carried_headers(
    scope: Scope, headers: dict[str, str], query: list[tuple[str, str]], body_text: str
) -> list[tuple[bytes, bytes]]:
    content_type = "text/plain" if body_text else headers.get("content-type") or "text/plain"
    kept = [(k, v) for k, v in query if k not in ("token", "secret")]
    uri = scope["path"] + ("?" + urlencode(kept) if kept else "")
    carried: dict[str, str] = {}
    for name in CARRIED:
        if name in headers and not (name == "content-length" and body_text):
            carried[name] = headers[name]
    for name, value in headers.items():
        if name.startswith("patch-h-") and len(name) > 8:
            carried[name[8:]] = value  # an explicit Patch-H-* wins over the automatic one
    # On delivery Patch-H-<Name> becomes <Name>; headers that frame the connection never pass.
    out = [(b"content-type", content_type.encode("latin-1")), (b"patch-uri", uri.encode("latin-1"))]
    out += [
        (name.encode("latin-1"), value.encode("latin-1"))
        for name, value in carried.items()
        if name not in _HOP_BY_HOP and name not in ("content-type", "patch-uri", "patch-status")
    ]
    return out


_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"})


async def _text(send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = (text + "\n").encode() if text else b""
    start_headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    with contextlib.suppress(OSError):
        await send({"type": "http.response.start", "status": status, "headers": start_headers + (headers or [])})
        await send({"type": "http.response.body", "body": body, "more_body": False})
