"""Forwarding: a request for a document owned by another node is proxied to that node.

An ASGI layer ahead of Quart's routes. For ``/api/v1/db/{db_id}[/...]`` it asks the cluster where
the document is served (:meth:`skald.cluster.service.Cluster.place`, which takes a free document);
if elsewhere, the request (method, path, query, headers, body) goes to the owner over HTTP and the
answer streams back chunk by chunk, so SSE and long polls work through it. A forwarded request
carries ``X-Skald-Forwarded-By``; a node never forwards such a request again (ownership moved
between the two hops): it answers ``503 not_owner`` with ``Retry-After`` and the client retries.
HAProxy's consistent hash sends most requests to the owner directly; this covers the rest (after
a failover, while nodes join or leave).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import structlog
import trio

from skald.cluster.service import Cluster, NotOwner, OwnerUnavailable
from skald.errors import SkaldError
from skald.http.context import request_info
from skald.http.problem import send_error

log = structlog.get_logger("skald.cluster.forward")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_DOCUMENT = re.compile(r"^/api/v1/db/([A-Za-z0-9][A-Za-z0-9._-]{0,127})(/.*)?$")
FORWARDED_BY = "x-skald-forwarded-by"
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length",
}
_ANSWER_SKIP = _HOP_BY_HOP | {"x-request-id"}  # the pipeline sets this node's (the same id: it is forwarded)


class Forwarder:
    """Wraps the whole app (:func:`skald.http.app.create_app` puts it outermost, so the relay's
    document stream routes reach the owner too); :meth:`wrap` sets the app it passes requests to."""

    def __init__(self, cluster: Cluster) -> None:
        self.app: ASGIApp | None = None
        self.cluster = cluster
        # No read timeout: an SSE stream or a blocking stream wait may be quiet for a long time.
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None), follow_redirects=False)

    def wrap(self, app: ASGIApp) -> Forwarder:
        self.app = app
        return self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None, "Forwarder.wrap(app) first"
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        match = _DOCUMENT.match(scope["path"])
        if match is None or ".." in match[1]:
            await self.app(scope, receive, send)
            return
        db_id = match[1]
        info = request_info(scope)
        if info is not None:
            info.db_id = db_id
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        creating = scope["method"] == "PUT" and not match[2]
        via = headers.get(FORWARDED_BY)
        try:
            # A forwarded request never takes the document: the sender believed this node owns it,
            # and if it does not any more the sender's directory is a moment behind (retry).
            owner = await self.cluster.place(db_id, creating=creating, take=via is None)
            if owner is not None and via is not None:
                raise NotOwner(f"document {db_id} moved while this request was forwarded; retry", retry_after=1)
        except SkaldError as error:
            await send_error(self._stamped(send), error, scope["path"], legacy=False, metrics=self.cluster.metrics_root)
            return
        if owner is None:
            self.cluster.arrived(db_id, via)
            await self.app(scope, receive, self._stamped(send))
            return
        await self._forward(scope, receive, send, owner, headers)

    def _stamped(self, send: Send) -> Send:
        """``send`` adding ``X-Skald-Node`` (who served the document) to the response head."""
        node = self.cluster.node_id.encode()

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-skald-node", node)]}
            await send(message)

        return stamped

    async def _forward(self, scope: Scope, receive: Receive, send: Send, owner: str, headers: dict[str, str]) -> None:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        out = {k: v for k, v in headers.items() if k not in _HOP_BY_HOP}
        out[FORWARDED_BY] = self.cluster.node_id
        info = request_info(scope)
        if info is not None:  # the owner logs the same request id
            out["x-request-id"] = info.request_id
            info.route = "/api/v1/db/<db_id>/... (forwarded)"
        query = scope.get("query_string", b"").decode("latin-1")
        url = owner.rstrip("/") + scope["path"] + (f"?{query}" if query else "")
        request = self.client.build_request(scope["method"], url, headers=out, content=bytes(body))
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            self.cluster.metrics.forwarded.labels("unreachable").inc()
            error = OwnerUnavailable(
                f"the owner of this document ({owner}) cannot be reached ({type(exc).__name__}); "
                "if it is gone, another node takes the document once its lease expires: retry",
                retry_after=1,
            )
            await send_error(send, error, scope["path"], legacy=False, metrics=self.cluster.metrics_root)
            return
        self.cluster.metrics.forwarded.labels("forwarded").inc()
        try:
            async with trio.open_nursery() as nursery:
                # The client may leave mid-stream (SSE): stop relaying and close the upstream request.
                nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
                answer = [
                    (k.encode("latin-1"), v.encode("latin-1"))
                    for k, v in response.headers.multi_items()
                    if k.lower() not in _ANSWER_SKIP
                ]
                # Which node the request came in through (X-Skald-Node names the one that served it).
                answer.append((FORWARDED_BY.encode(), self.cluster.node_id.encode()))
                await send({"type": "http.response.start", "status": response.status_code, "headers": answer})
                try:
                    async for chunk in response.aiter_raw():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except httpx.HTTPError as exc:  # the owner went away mid-answer: end what we started
                    log.warning("owner went away mid-answer", owner=owner, error=repr(exc))
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                nursery.cancel_scope.cancel(reason="answer relayed")
        except OSError:
            pass  # the client went away
        finally:
            with trio.CancelScope(shield=True):
                await response.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()


async def _cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel(reason="client disconnected")
            return
