"""Legacy patchwork routes (``/p/…``, ``/public/…``, ``/u/{user}/…``, ``/h``, ``/r``) at the ASGI layer.

Why not Quart views: Quart's request ``Body`` collects whatever the server
delivers into one buffer with no backpressure (and its size cap then cuts a
slow transfer). Here ``receive()`` is called only as each chunk is handed on
(:mod:`skald.relay.io`), so a body of any size streams in bounded memory.
Errors are skald's errors, rendered by :func:`skald.http.problem.send_error`: problem+json on the JSON
API's stream routes, the short ``text/plain`` body legacy scripts grep elsewhere.

Request id, shutdown refusal, rate limit, metrics and the access log are the one request pipeline's
(:mod:`skald.http.pipeline`), which runs ahead of this middleware; a waiter not yet paired when the server
stops is woken with a 503 by the channels themselves (:mod:`skald.relay.channels`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, quote

import structlog
import trio
from prometheus_client import Counter, Gauge

from skald.auth.guard import audit_denied, check_scope, check_token, secret_from
from skald.db.ids import DB_ID_PATTERN, validate_db_id
from skald.errors import (
    BadRequest,
    DocumentNotFound,
    MethodNotAllowed,
    NotFound,
    RateLimited,
    SkaldError,
    Unauthenticated,
)
from skald.http.context import name_route, request_info
from skald.http.problem import send_error
from skald.http.ratelimit import RateLimiter
from skald.http.state import AppState
from skald.relay import stream_routes
from skald.relay.channels import RelayHub, RequestChannels, Requester, Responder, Transfer
from skald.relay.headers import answer_headers, body_length, message_headers
from skald.relay.io import (
    BodyReader,
    ProducerGone,
    Receive,
    Send,
    deliver,
    pump,
    text_response,
    wait_unless_gone,
    whole_response,
)

log = structlog.get_logger("skald.legacy")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC_DOCUMENT = "public"
MAX_SWITCH_ID = 256


class ConsumerGone(SkaldError):
    status = 502
    code = "consumer_gone"
    title = "The consumer disconnected before it received the whole message"


class SwitchTimeout(SkaldError):
    status = 504
    code = "switch_timeout"
    title = "Nobody answered the switched request in time"


def _with_allow(error: SkaldError, methods: str) -> SkaldError:
    error.headers["Allow"] = methods
    return error


def _method_not_allowed(methods: str, detail: str = "method not allowed") -> SkaldError:
    return _with_allow(MethodNotAllowed(detail), methods)


def is_legacy_path(path: str) -> bool:
    return path.startswith(("/p/", "/public/", "/u/", "/h/", "/r/")) or path in ("/h", "/r")


def serves(path: str) -> bool:
    """Whether :class:`LegacyRelay` answers ``path`` itself (Quart never sees the request)."""
    return is_legacy_path(path) or _API_STREAMS.match(path) is not None


class RelayMetrics:
    def __init__(self, state: AppState, hub: RelayHub, requests: RequestChannels) -> None:
        registry = state.metrics.registry
        self.waiting = Gauge(
            "skald_stream_channels_waiting", "Relay producers, consumers, requesters and responders waiting",
            registry=registry,
        )
        self.waiting.set_function(lambda: hub.waiting + requests.waiting)
        self.pairs = Counter("skald_stream_pairs_total", "Relay messages paired with a consumer", registry=registry)
        self.bytes = Counter("skald_stream_bytes_relayed_total", "Body bytes relayed", registry=registry)
        self.switch_timeouts = Counter(
            "skald_stream_switch_timeouts_total", "Switched requests nobody answered in time", registry=registry
        )


class _Request:
    """What one legacy request says, parsed once."""

    def __init__(self, scope: Scope, *, legacy: bool = True) -> None:
        self.path: str = scope["path"]
        # Patch-Uri carries the path as the client sent it: still percent-encoded, so an escaped CR, LF or
        # NUL stays text and cannot break (or split) the consumer's response head.
        raw_path = scope.get("raw_path")
        self.raw_path: str = raw_path.decode("latin-1") if raw_path else quote(self.path, safe="/")
        self.method: str = scope["method"]
        self.query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        self.args = dict(self.query)
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        info = request_info(scope)  # the pipeline worked out the client's IP (trusted-proxy aware) once
        peer = scope.get("client")
        self.ip: str = info.ip if info is not None else (peer[0] if peer else "")
        # ``?body=`` makes a legacy GET a producer; the JSON API keeps GET a read (its scope says so).
        self.body_param = self.args.get("body", "") if legacy else ""

    @property
    def produces(self) -> bool:
        return self.method in ("POST", "PUT") or bool(self.body_param)

    @property
    def fixed_body(self) -> bytes | None:
        """The ``body=`` text that replaces the request's body, if any."""
        return self.body_param.encode() if self.body_param else None

    @property
    def length(self) -> int | None:
        """The size of the body this request relays (``None``: chunked); it frames the consumer's response."""
        return body_length(self.headers, self.fixed_body)

    def reader(self, receive: Receive) -> BodyReader:
        return BodyReader(receive, self.fixed_body)

    def message(self, *, strip: bool = True) -> list[tuple[bytes, bytes]]:
        return message_headers(self.raw_path, self.query, self.headers, bool(self.body_param), strip=strip)


class LegacyRelay:
    """ASGI middleware: serves the legacy relay paths, passes everything else to the app."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state
        self.hub: RelayHub = state.relay
        self.requests: RequestChannels = state.relay_requests
        self.metrics = RelayMetrics(state, self.hub, self.requests)
        settings = state.settings
        self.public_limit = RateLimiter(settings.public_rate_per_second, settings.public_rate_burst)
        self._hook_key: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        api = scope["type"] == "http" and _API_STREAMS.match(path)
        if not api and (scope["type"] != "http" or not is_legacy_path(path)):
            await self.app(scope, receive, send)
            return
        try:
            if api:
                await self._serve_api(scope, _Request(scope, legacy=False), api, receive, send)
            else:
                await self._serve(scope, _Request(scope), receive, send)
        except ProducerGone:
            pass  # nobody left to answer
        except SkaldError as error:
            # The JSON API's stream routes answer problem+json; the legacy routes the short text scripts grep.
            await send_error(send, error, path, legacy=not api, metrics=self.state.metrics)

    async def _serve_api(
        self, scope: Scope, req: _Request, match: re.Match[str], receive: Receive, send: Send
    ) -> None:
        db_id, kind, path = validate_db_id(match["db"]), match["kind"], match["path"]
        name_route(scope, f"/api/v1/db/<db_id>/streams/{kind}/<path>", db_id)
        allow = ", ".join(stream_routes.allowed_methods(kind, path))
        if req.method == "OPTIONS":  # as Quart answers its own routes: no token needed to ask
            with contextlib.suppress(OSError):
                await send({"type": "http.response.start", "status": 204, "headers": [(b"allow", allow.encode())]})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        route = stream_routes.route_for(kind, req.method)
        if route is None:
            raise _method_not_allowed(allow)
        name_route(scope, route.template.replace("{", "<").replace("}", ">"), db_id)
        if kind == "queue" and req.method == "GET":
            if not path.endswith("/next"):
                raise _with_allow(NotFound("consumers take the next message from .../queue/{topic}/next"), allow)
            path = path.removesuffix("/next")
        await self._authorize(req, db_id, route.action, path, allow_query_token=False)
        if not self.state.supervisor.exists(db_id):
            raise DocumentNotFound(f"document {db_id} does not exist")
        prefix = f"{db_id}\x00api\x00"
        answers = prefix + "queue/"  # a switched request is answered by a POST to .../streams/queue/{new id}
        async with self.state.supervisor.open_document(db_id):
            if kind == "req":
                await self._request(req, prefix, path, receive, send, answers)
            elif kind == "res":
                await self._respond(req, prefix, path, receive, send, answers)
            elif req.produces:
                await self._produce(req, answers + path, "pubsub" in req.args, receive, send)
            else:
                await deliver(lambda: self.hub.consume(answers + path), receive, send, method=req.method)

    # ---- routing ------------------------------------------------------------------------------------

    async def _serve(self, scope: Scope, req: _Request, receive: Receive, send: Send) -> None:
        if req.path in ("/h", "/r"):
            name_route(scope, req.path)
            if req.method != "GET":  # as legacy: only GET mints a hook
                raise _method_not_allowed("GET")
            await self._mint_hook(req.path[1], send)
            return
        db_id, namespace, sub = self._locate(req)
        name_route(scope, "/u/<user>/<path>" if namespace == "u" else f"/{namespace}/<path>",
                   db_id if namespace == "u" else None)
        if not sub:
            raise BadRequest("missing channel path")
        first, _, rest = sub.partition("/")
        # A requester may use any method (spec and legacy); everyone else is a consumer or a producer.
        requester = first == "req"
        if not requester and req.method not in ("GET", "POST", "PUT"):
            raise _method_not_allowed("GET, POST, PUT")
        if namespace in ("h", "r"):
            await self._check_hook_secret(req, namespace, sub, writes=req.produces or requester)
        action = "stream.write" if req.produces or requester else "stream.read"
        if namespace == "u":
            await self._authorize(req, db_id, action, "/" + sub)
        prefix = f"{db_id}\x00{namespace}\x00"
        async with self._hold_if_exists(db_id):
            if requester:
                await self._request(req, prefix, _channel_id(rest), receive, send, prefix)
            elif first == "res":
                await self._respond(req, prefix, _channel_id(rest), receive, send, prefix)
            elif req.produces:
                await self._produce(req, prefix + sub, first == "pubsub" or "pubsub" in req.args, receive, send)
            else:
                await deliver(lambda: self.hub.consume(prefix + sub), receive, send, method=req.method)

    @contextlib.asynccontextmanager
    async def _hold_if_exists(self, db_id: str) -> AsyncIterator[None]:
        """Keep the namespace's document open (not reaped) while a channel is in use, if it has one.

        The relay stores nothing in SQLite: a user namespace (``/u/alice/...``) and the public
        namespaces exist without a document, and using them must not create one (it would show up in
        the document list, ``doctor`` and ``backup``).
        """
        async with contextlib.AsyncExitStack() as stack:
            if self.state.supervisor.exists(db_id):
                with contextlib.suppress(DocumentNotFound):  # deleted meanwhile: nothing to hold
                    await stack.enter_async_context(self.state.supervisor.open_document(db_id))
            yield

    def _locate(self, req: _Request) -> tuple[str, str, str]:
        """``(db_id, namespace, channel path)``; public namespaces are rate limited per client."""
        if req.path.startswith("/u/"):
            user, _, sub = req.path[3:].partition("/")
            if not DB_ID_PATTERN.match(user) or ".." in user:
                raise BadRequest("invalid user")
            return user, "u", sub
        namespace = req.path[1:].split("/", 1)[0]
        wait = self.public_limit.try_acquire(req.ip)
        if wait > 0:
            raise RateLimited(wait, "too many requests")
        return PUBLIC_DOCUMENT, namespace, req.path[len(namespace) + 2 :]

    # ---- queues and broadcast -----------------------------------------------------------------------

    async def _produce(self, req: _Request, key: str, broadcast: bool, receive: Receive, send: Send) -> None:
        reader = req.reader(receive)
        switched = self.requests.take_switched(key)
        if switched is not None:  # this message answers a switched request
            status, headers = answer_headers(req.headers, bool(req.body_param))
            transfers = [Transfer(status, headers, req.length)]
            switched.give(transfers[0])
        elif broadcast:
            transfers = []
            for waiter in self.hub.take_all_consumers(key):
                transfers.append(Transfer(200, req.message(), req.length))
                self.hub.hand(waiter, transfers[-1])
        else:
            transfer = Transfer(200, req.message(), req.length)
            if not self.hub.try_produce(key, transfer):  # nobody waits yet: wait, watching for a hang-up
                await wait_unless_gone(reader, lambda: self.hub.produce(key, transfer))
            transfers = [transfer]
        await self._send_and_answer(reader, transfers, send)

    async def _send_and_answer(self, reader: BodyReader, transfers: list[Transfer], send: Send) -> None:
        """Stream the body to every transfer; 200 once all consumers have it whole, else 502."""
        self.metrics.pairs.inc(len(transfers))
        await pump(reader, transfers, self.metrics.bytes.inc)
        for transfer in transfers:
            await transfer.finished.wait()
        if not all(t.delivered for t in transfers):
            raise ConsumerGone("the consumer disconnected before it received the whole message")
        await text_response(send, 200, "")

    # ---- request / responder ------------------------------------------------------------------------

    async def _request(
        self, req: _Request, prefix: str, channel: str, receive: Receive, send: Send, answers: str
    ) -> None:
        reader = req.reader(receive)
        requester = Requester(Transfer(200, req.message(), req.length), unstripped_headers=req.message(strip=False))
        responder: Responder = await wait_unless_gone(
            reader, lambda: self.requests.request(prefix + "res/" + channel, requester)
        )
        if responder.answer is not None:
            requester.give(responder.answer)  # a ready answer: the request itself goes nowhere
        else:
            self.metrics.pairs.inc()
            await pump(reader, [requester.request], self.metrics.bytes.inc)
        timeout = self.state.settings.switch_timeout_seconds if responder.switch_to else None

        timed_out = trio.Event()

        async def answer() -> Transfer | None:
            with trio.move_on_after(timeout if timeout else float("inf")):
                # No answer yet when the server stops: none would come in time (a 503, see skald.server.shutdown).
                await self.state.shutdown.unless_stopping(requester.answered.wait)
            if requester.answer is None:
                timed_out.set()
            return requester.answer

        await deliver(answer, receive, send, method=req.method)
        if timed_out.is_set() and responder.switch_to is not None:
            self.requests.unpark_switched(answers + responder.switch_to, requester)
            self.metrics.switch_timeouts.inc()
            raise SwitchTimeout(f"no answer on channel {responder.switch_to} within {timeout:g}s")

    async def _respond(
        self, req: _Request, prefix: str, channel: str, receive: Receive, send: Send, answers: str
    ) -> None:
        key = prefix + "res/" + channel
        if "switch" in req.args:
            if not req.produces:
                raise _method_not_allowed("POST, PUT", "switch needs POST or PUT")
            new_id = await _read_switch_id(req, receive)
            responder = Responder(answer=None, switch_to=new_id)

            async def take_switched() -> Transfer:
                requester = await self.requests.respond(key, responder)
                self.requests.park_switched(answers + new_id, requester)
                requester.request.headers = requester.unstripped_headers
                return requester.request

            await deliver(take_switched, receive, send, method=req.method)
        elif req.produces:
            reader = req.reader(receive)
            status, headers = answer_headers(req.headers, bool(req.body_param))
            answer = Transfer(status, headers, req.length)
            await wait_unless_gone(reader, lambda: self.requests.respond(key, Responder(answer=answer)))
            await self._send_and_answer(reader, [answer], send)
        else:

            async def take_request() -> Transfer:
                requester = await self.requests.respond(key, Responder(answer=None))
                return requester.request

            await deliver(take_request, receive, send, method=req.method)

    # ---- auth and hooks -----------------------------------------------------------------------------

    async def _authorize(
        self, req: _Request, db_id: str, action: str, resource: str, *, allow_query_token: bool = True
    ) -> None:
        # The JSON API's parser: the relay reads a token from the same places in the same order.
        secret = secret_from(req.headers.get("authorization", ""), req.args.get("token"),
                             allow_query_token=allow_query_token)
        if not secret:
            raise Unauthenticated("unauthorized")
        # The JSON API's checks, audit of denials included (the request never reaches Quart's guard).
        where = {"path": req.path, "ip": req.ip}
        principal = await check_token(self.state, secret, **where)
        await check_scope(self.state, principal, db_id, action, resource, **where)

    def _hook_secret(self, kind: str, channel: str) -> str:
        if self._hook_key is None:
            configured = self.state.settings.hook_secret_key
            self._hook_key = configured.encode() if configured else _stored_hook_key(self.state)
        return hmac.new(self._hook_key, f"{kind}:{channel}".encode(), hashlib.sha256).hexdigest()

    async def _mint_hook(self, kind: str, send: Send) -> None:
        channel = str(uuid.uuid4())
        body = json.dumps({"channel": channel, "secret": self._hook_secret(kind, channel)}).encode()
        await whole_response(send, 200, b"application/json", body)

    async def _check_hook_secret(self, req: _Request, kind: str, channel: str, *, writes: bool) -> None:
        guarded = writes if kind == "h" else not writes  # /h guards producers (and requesters), /r consumers
        if guarded and not hmac.compare_digest(req.args.get("secret", ""), self._hook_secret(kind, channel)):
            await audit_denied(self.state, "", "wrong or missing hook secret", path=req.path, ip=req.ip)
            raise Unauthenticated("unauthorized: wrong or missing secret")


_API_STREAMS = re.compile(r"^/api/v1/db/(?P<db>[^/]+)/streams/(?P<kind>queue|req|res)/(?P<path>.+)$")


def _channel_id(rest: str) -> str:
    if not rest:
        raise BadRequest("empty request/responder id")
    return rest


async def _read_switch_id(req: _Request, receive: Receive) -> str:
    """The switch body: a new channel id (non-empty, no '/' or '?', at most 256 bytes); else 400."""
    data = b""
    async with contextlib.aclosing(req.reader(receive).chunks()) as chunks:
        async for chunk in chunks:
            data += chunk
            if len(data) > MAX_SWITCH_ID:
                raise BadRequest(f"switch channel id longer than {MAX_SWITCH_ID} bytes")
    new_id = data.decode("utf-8", "replace").strip()
    if not new_id or "/" in new_id or "?" in new_id:
        raise BadRequest("switch needs a channel id without '/' or '?' as its body")
    return new_id


def _stored_hook_key(state: AppState) -> bytes:
    """A random hook key kept in the data folder, so hook secrets survive restarts."""
    path = state.settings.data_dir / "hook.key"
    if not path.exists():
        path.write_bytes(secrets.token_hex(32).encode())
        path.chmod(0o600)
    return path.read_bytes().strip()
