"""The async client: works under trio and asyncio (httpx + anyio)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import httpx
from httpx_sse import aconnect_sse

from skald.client import _api
from skald.client.errors import (
    Conflict,
    Forbidden,
    LeaseLost,
    NotFound,
    ResetRequired,
    SkaldClientError,
    error_from_response,
    unreachable,
)
from skald.client.jobs import AsyncJobsMethods
from skald.client.types import (
    ChangesPage,
    DownloadProgress,
    Event,
    Lease,
    MessagesPage,
    Published,
    QueryResult,
    UploadProgress,
)

__all__ = ["AsyncClient", "EventStream", "ResetRequired", "default_owner"]

RETRYABLE = _api.RETRYABLE
default_owner = _api.default_owner


def _params(call: _api.Call) -> httpx.QueryParams | None:
    return httpx.QueryParams(tuple(call.params)) if call.params else None


async def finish(agen: AsyncIterator[Any]) -> None:
    """Run ``agen`` to its end under a cancelled scope.

    The cancellation is raised at the innermost ``await`` (httpcore's socket
    read) and unwinds every nested generator of httpx/httpcore. ``aclose()``
    alone would only close the outermost one and leave the others suspended
    for the garbage collector, which trio reports as a ``ResourceWarning``.
    """
    with anyio.CancelScope() as scope:
        scope.cancel(reason="closing stream")
        with contextlib.suppress(StopAsyncIteration, Exception):
            while True:
                await agen.__anext__()


@contextlib.contextmanager
def _unwrap_single() -> Iterator[None]:
    """Re-raise the lone exception of a task group's ExceptionGroup (the caller's own error)."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        exc = group.exceptions[0]
        cause, context, suppress = exc.__cause__, exc.__context__, exc.__suppress_context__
        try:
            raise exc
        finally:
            exc.__cause__, exc.__context__, exc.__suppress_context__ = cause, context, suppress
            del exc


class EventStream:
    """Events of one SSE subscription (watch, subscribe, follow_changes), reconnecting as documented.

    Use it as ``async with client.watch(...) as events: async for event in events: ...``
    (or ``contextlib.aclosing``): leaving the block closes the HTTP stream at once.
    """

    def __init__(self, events: AsyncGenerator[Event, None]) -> None:
        self._events = events

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        await self._events.aclose()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class AsyncClient(AsyncJobsMethods):
    """``async with AsyncClient(url, token) as client: ...``.

    Iterators (:meth:`watch`, :meth:`subscribe`, :meth:`follow_changes`)
    reconnect with exponential backoff (``reconnect_delay`` doubling up to
    ``max_reconnect_delay``; at most ``max_reconnects`` times in a row, None:
    forever) after network loss, 502/503/504 or the server ending the stream,
    and resume where they left off; other errors the server reports are
    raised as :class:`SkaldClientError` subclasses.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        reconnect_delay: float = 0.2,
        max_reconnect_delay: float = 30.0,
        max_reconnects: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )
        self.reconnect_delay = reconnect_delay
        self.max_reconnect_delay = max_reconnect_delay
        self.max_reconnects = max_reconnects

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---- plumbing -----------------------------------------------------------------------------------
    async def _send(self, call: _api.Call) -> httpx.Response:
        try:
            response = await self._http.request(
                call.method,
                call.path,
                params=_params(call),
                json=call.json,
                content=call.content,
                headers=call.headers,
            )
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from None
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    async def _json(self, call: _api.Call) -> Any:
        response = await self._send(call)
        return response.json() if response.content else None

    async def _events(self, call: _api.Call) -> AsyncGenerator[Event, None]:
        """One SSE connection; raises typed errors for 4xx/5xx answers; closes everything it opens."""
        try:
            async with aconnect_sse(
                self._http,
                call.method,
                call.path,
                params=_params(call),
                json=call.json,
                headers=dict(call.headers or {}),
                timeout=httpx.Timeout(self._http.timeout.connect, read=None),
            ) as source:
                response = source.response
                try:
                    if response.status_code >= 400:
                        raise error_from_response(response, await response.aread())
                    sse_events = source.aiter_sse()
                    try:
                        async for sse in sse_events:
                            yield Event(sse.event, sse.id, _api.parse_data(sse.data))
                    finally:
                        await finish(sse_events)
                finally:
                    await response.aclose()
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc

    async def _backoff(self, attempt: int) -> None:
        await anyio.sleep(
            _api.backoff_delay(attempt, self.reconnect_delay, self.max_reconnect_delay, self.max_reconnects)
        )

    async def _stream(self, cursor: _api.StreamCursor) -> AsyncGenerator[Event, None]:
        """Run ``cursor`` over SSE connections, reconnecting with backoff (see :mod:`_api`)."""
        attempt = 0
        while True:
            try:
                async with aclosing(self._events(cursor.call())) as events:
                    async for event in events:
                        attempt = 0
                        shown = cursor.accept(event)
                        if shown is not None:
                            yield shown
                raise _api.stream_ended()
            except SkaldClientError as exc:
                if not _api.should_reconnect(cursor, exc):
                    raise
            attempt += 1
            await self._backoff(attempt)

    async def health(self) -> dict[str, Any]:
        """``GET /healthz`` (no token needed): raises :class:`ServerUnreachable` when nothing answers."""
        body: dict[str, Any] = await self._json(_api.health())
        return body

    # ---- documents ----------------------------------------------------------------------------------
    async def list_documents(self) -> list[dict[str, Any]]:
        body = await self._json(_api.list_documents())
        return list(body["documents"])

    async def create_document(self, db_id: str) -> dict[str, Any]:
        return dict(await self._json(_api.create_document(db_id)))

    async def get_document(self, db_id: str) -> dict[str, Any]:
        return dict(await self._json(_api.get_document(db_id)))

    async def delete_document(self, db_id: str) -> None:
        await self._send(_api.delete_document(db_id))

    # ---- query --------------------------------------------------------------------------------------
    async def query(
        self,
        db_id: str,
        sql: str,
        args: Any = None,
        *,
        fence: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> QueryResult:
        """One statement. ``options``: ``max_rows``, ``timeout_ms``; ``fence``: a lease (or
        ``{"resource", "token"}``) the write must still hold (409 ``stale_fence`` otherwise)."""
        result: QueryResult = await self._json(_api.query(db_id, sql, args, options, fence))
        return result

    async def batch(
        self,
        db_id: str,
        statements: _api.Statements,
        *,
        fence: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> list[QueryResult]:
        """Several statements in one transaction (all or nothing); one result per statement."""
        body = await self._json(_api.batch(db_id, statements, options, fence))
        results: list[QueryResult] = body["results"]
        return results

    def watch(
        self, db_id: str, sql: str, args: Any = None, *, heartbeat_seconds: float | None = None
    ) -> EventStream:
        """One ``snapshot``, then ``update`` events (data: columns, rows, row_count, truncated, result_hash).

        A re-run that fails on the server comes as an ``error`` event (data: the
        problem+json) and the watch goes on. Reconnects send the last
        ``result_hash``, so an unchanged result is not repeated.
        """
        return EventStream(self._stream(_api.WatchCursor(db_id, sql, args, heartbeat_seconds)))

    # ---- messages -----------------------------------------------------------------------------------
    async def publish(
        self,
        db_id: str,
        topic: str,
        payload: Any = None,
        *,
        text: str | None = None,
        data: bytes | None = None,
        content_type: str | None = None,
        dedupe_key: str | None = None,
    ) -> Published:
        """Publish JSON ``payload``, or ``text=`` (UTF-8 text) or ``data=`` (bytes)."""
        call = _api.publish(
            db_id, topic, payload, text=text, data=data, content_type=content_type, dedupe_key=dedupe_key
        )
        published: Published = await self._json(call)
        return published

    async def poll_messages(
        self, db_id: str, *topics: str, since_id: int | None = None, limit: int | None = None
    ) -> MessagesPage:
        page: MessagesPage = await self._json(_api.poll_messages(db_id, list(topics), since_id, limit))
        return page

    def subscribe(
        self,
        db_id: str,
        *topics: str,
        since_id: int | None = None,
        tail: int | None = None,
        heartbeat: float | None = None,
        idle_timeout: float | None = None,
    ) -> EventStream:
        """``message`` events (data: the message; ``id``: its id) and ``reset`` events (retention
        removed messages after the cursor). Reconnects send ``Last-Event-ID``; a ``slow_consumer``
        error from the server is resumed the same way. Heartbeats are not yielded.

        ``idle_timeout``: also yield an ``idle`` event (no data) when that many seconds pass
        without a message (needs ``heartbeat`` below it; the server's heartbeats drive the clock).
        """
        cursor = _api.SubscribeCursor(db_id, topics, since_id, tail, heartbeat, idle_timeout, anyio.current_time)
        return EventStream(self._stream(cursor))

    # ---- webhooks and tokens ----------------------------------------------------------------------
    async def ingest_webhook(
        self, db_id: str, endpoint: str, body: bytes, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Deliver a webhook to the document's inbox; returns the stored id (``duplicate`` on a retry)."""
        return dict(await self._json(_api.webhook(db_id, endpoint, body, headers)))

    async def create_token(
        self, scopes: list[str], label: str = "", expires_in: str | None = None
    ) -> dict[str, Any]:
        """Mint a token (``DB:ACTION[:PREFIX]`` scopes); the secret is in ``["token"]``, shown this once."""
        return dict(await self._json(_api.create_token(scopes, label, expires_in)))

    async def list_tokens(self) -> list[dict[str, Any]]:
        body = await self._json(_api.list_tokens())
        tokens: list[dict[str, Any]] = body["tokens"] if isinstance(body, dict) else body
        return tokens

    async def revoke_token(self, token_id: str) -> None:
        await self._send(_api.revoke_token(token_id))

    # ---- streams (relay: queues, broadcast, request/response) ---------------------------------------
    async def stream_send(self, db_id: str, topic: str, data: bytes, *, broadcast: bool = False) -> None:
        await self._send(_api.stream_send(db_id, topic, data, broadcast=broadcast))

    async def stream_next(self, db_id: str, topic: str) -> bytes:
        return (await self._send(_api.stream_next(db_id, topic))).content

    async def stream_request(self, db_id: str, path: str, data: bytes) -> bytes:
        return (await self._send(_api.stream_request(db_id, path, data))).content

    async def stream_respond(self, db_id: str, path: str, data: bytes) -> None:
        await self._send(_api.stream_respond(db_id, path, data))

    # ---- leases -------------------------------------------------------------------------------------
    async def acquire_lease(
        self, db_id: str, resource: str, ttl_seconds: float | None = None, owner: str | None = None
    ) -> Lease:
        """Take ``resource``; the answer carries ``fence`` and (only here) ``lease_token``."""
        call = _api.lease_acquire(db_id, resource, owner or default_owner(), ttl_seconds)
        lease: Lease = await self._json(call)
        return lease

    async def renew_lease(self, db_id: str, lease: Lease, ttl_seconds: float | None = None) -> Lease:
        """Extend ``lease`` (same fence); returns the new state (without the token)."""
        call = _api.lease_renew(db_id, lease["resource"], lease["lease_token"], ttl_seconds)
        renewed: Lease = await self._json(call)
        return renewed

    async def release_lease(self, db_id: str, lease: Lease) -> Lease:
        """Give ``lease`` up; the next acquisition of the resource gets a higher fence."""
        released: Lease = await self._json(_api.lease_release(db_id, lease["resource"], lease["lease_token"]))
        return released

    @asynccontextmanager
    async def lease(
        self,
        db_id: str,
        resource: str,
        ttl_seconds: float = 30.0,
        owner: str | None = None,
        *,
        renew_every: float | None = None,
    ) -> AsyncIterator[Lease]:
        """Hold a lease for the block: renewed every ``renew_every`` (default ``ttl_seconds/3``)
        seconds, released on exit (also on error). If a renewal fails the block is cancelled and
        :class:`LeaseLost` raised. Pass the lease as ``fence=`` to :meth:`query` to guard writes."""
        lease = await self.acquire_lease(db_id, resource, ttl_seconds, owner)
        lost: SkaldClientError | None = None
        try:
            with _unwrap_single():
                async with anyio.create_task_group() as tg:

                    async def renew() -> None:
                        nonlocal lost
                        while True:
                            await anyio.sleep(renew_every or ttl_seconds / 3)
                            try:
                                renewed = await self.renew_lease(db_id, lease, ttl_seconds)
                            except SkaldClientError as exc:
                                lost = exc
                                tg.cancel_scope.cancel(reason="lease lost")
                                return
                            lease.update(renewed)

                    tg.start_soon(renew)
                    try:
                        yield lease
                    finally:
                        tg.cancel_scope.cancel(reason="lease released")
        finally:
            if lost is None:
                with anyio.CancelScope(shield=True), contextlib.suppress(Conflict, Forbidden, NotFound):
                    lease.update(await self.release_lease(db_id, lease))
        if lost is not None:
            raise LeaseLost(lost.status, lost.code, f"lease on {resource} lost: {lost.detail}", lost.problem)

    # ---- blobs --------------------------------------------------------------------------------------
    async def upload_blob(
        self,
        db_id: str,
        source: bytes | str | Path,
        content_type: str = "application/octet-stream",
        *,
        ref: str | None = None,
        progress: UploadProgress | None = None,
    ) -> dict[str, Any]:
        """init-upload, PUT the bytes to the presigned URL (skipped if the server already has them),
        complete-upload (the server verifies the hash), then claim it under ``ref`` if given.

        ``source``: bytes, or a file path (hashed in a worker thread, then streamed in chunks);
        ``progress(n_bytes)`` is called per chunk sent. Returns ``{"sha256", "size", "uploaded": bool,
        "ref"?}``.
        """
        if isinstance(source, bytes):
            digest, size = hashlib.sha256(source).hexdigest(), len(source)
        else:
            digest, size = await anyio.to_thread.run_sync(_api.file_sha256, Path(source))
        init = await self._json(_api.blob_init(db_id, digest, size, content_type))
        uploaded = not init["exists"]
        if uploaded:
            spec = init["upload"]
            async with contextlib.AsyncExitStack() as stack:
                if isinstance(source, bytes):
                    body: bytes | AsyncIterator[bytes] = source
                    if progress is not None:
                        progress(size)
                else:
                    fh = await stack.enter_async_context(await anyio.open_file(source, "rb"))
                    body = await stack.enter_async_context(aclosing(_achunks(fh, progress)))
                raw = await stack.enter_async_context(httpx.AsyncClient(timeout=self._http.timeout))
                try:
                    put = await raw.request(
                        spec["method"], spec["url"], content=body, headers=_api.upload_headers(spec, size)
                    )
                except httpx.TransportError as exc:
                    raise unreachable(spec["url"].split("?")[0], exc) from None
            if put.status_code >= 300:
                raise _api.upload_failed(put.status_code, put.text)
            await self._json(_api.blob_complete(db_id, digest))
        if ref is not None:
            await self.claim_blob(db_id, digest, ref)
        return _api.upload_result(digest, size, uploaded, ref)

    async def blob_info(self, db_id: str, sha256: str) -> dict[str, Any]:
        """``{"sha256", "size", "content_type", "url", "expires_in", "expires_at"}`` (presigned GET)."""
        return dict(await self._json(_api.blob_read_url(db_id, sha256)))

    async def blob_url(self, db_id: str, sha256: str) -> str:
        return str((await self.blob_info(db_id, sha256))["url"])

    async def read_blob(self, db_id: str, sha256: str) -> bytes:
        """Download the blob through its presigned URL; raises if the bytes do not hash to ``sha256``."""
        url = await self.blob_url(db_id, sha256)
        async with httpx.AsyncClient(timeout=self._http.timeout) as raw:
            try:
                response = await raw.get(url)
            except httpx.TransportError as exc:
                raise unreachable(url.split("?")[0], exc) from None
        if response.status_code != 200:
            raise _api.download_failed(response.status_code)
        _api.check_sha256(response.content, sha256)
        return response.content

    async def download_blob(
        self,
        db_id: str,
        sha256: str,
        dest: str | Path,
        *,
        progress: DownloadProgress | None = None,
    ) -> dict[str, Any]:
        """Stream the blob to ``dest`` (through ``dest.part``; replaced only if the hash matches).

        ``progress(n_bytes, total)`` per chunk. Returns ``{"sha256", "size", "path"}``.
        """
        info = await self.blob_info(db_id, sha256)
        out = Path(dest)
        partial = _api.part_path(out)
        digest = hashlib.sha256()
        try:
            async with (
                httpx.AsyncClient(timeout=httpx.Timeout(self._http.timeout.connect, read=None)) as raw,
                raw.stream("GET", info["url"]) as response,
            ):
                if response.status_code != 200:
                    raise _api.download_failed(response.status_code)
                chunks = response.aiter_bytes(_api.CHUNK)
                try:
                    async with await anyio.open_file(partial, "wb") as fh:
                        async for chunk in chunks:
                            digest.update(chunk)
                            await fh.write(chunk)
                            if progress is not None:
                                progress(len(chunk), info.get("size"))
                finally:
                    await finish(chunks)
            _api.check_digest(digest.hexdigest(), sha256)
        except httpx.TransportError as exc:
            partial.unlink(missing_ok=True)
            raise unreachable(str(info["url"]).split("?")[0], exc) from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        await anyio.Path(partial).replace(out)
        return _api.download_result(sha256, info, out)

    async def claim_blob(self, db_id: str, sha256: str, ref: str) -> dict[str, Any]:
        """Record that the document references the blob under ``ref`` (keeps it from GC)."""
        return dict(await self._json(_api.blob_claim(db_id, sha256, ref)))

    async def release_blob(self, db_id: str, sha256: str, ref: str) -> dict[str, Any]:
        return dict(await self._json(_api.blob_release(db_id, sha256, ref)))

    async def list_blobs(
        self, db_id: str, sha256: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """The document's claims: ``[{"sha256", "ref", ...}]``."""
        return list((await self._json(_api.blob_list(db_id, sha256, limit)))["blobs"])

    # ---- sync ---------------------------------------------------------------------------------------
    async def snapshot(self, db_id: str, dest: str | Path) -> int:
        """Download a consistent copy of ``db_id`` to ``dest``; return the change sequence it includes."""
        call = _api.snapshot(db_id)
        try:
            async with self._http.stream(call.method, call.path) as response:
                if response.status_code >= 400:
                    raise error_from_response(response, await response.aread())
                seq = int(response.headers["Skald-Change-Seq"])
                chunks = response.aiter_bytes()
                try:
                    with open(dest, "wb") as fh:  # noqa: ASYNC230 - local file, small chunks
                        async for chunk in chunks:
                            fh.write(chunk)
                finally:
                    await finish(chunks)
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from None
        return seq

    async def changes(self, db_id: str, since: int = 0, limit: int | None = None) -> ChangesPage:
        page: ChangesPage = await self._json(_api.changes(db_id, since, limit))
        return page

    def follow_changes(self, db_id: str, since: int = 0, *, reconnect: bool = True) -> EventStream:
        """``change`` events after ``since`` (``id``: the sequence; data: the change), reconnecting.

        Raises :class:`ResetRequired` when the feed no longer holds ``since``. With
        ``reconnect=False`` connection errors and the end of the stream are raised instead.
        """
        return EventStream(self._stream(_api.ChangesCursor(db_id, since, reconnect)))


async def _achunks(fh: anyio.AsyncFile[bytes], progress: UploadProgress | None) -> AsyncGenerator[bytes, None]:
    while chunk := await fh.read(_api.CHUNK):
        if progress is not None:
            progress(len(chunk))
        yield chunk
