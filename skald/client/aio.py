"""The async client: works under trio and asyncio (httpx + anyio)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import httpx
from httpx_sse import aconnect_sse

from skald.client import _api
from skald.client.errors import SkaldClientError, error_from_response, unreachable
from skald.client.types import ChangesPage, Event, Published, QueryResult

SSE_RETRYABLE = (httpx.TransportError, httpx.RemoteProtocolError)


def _params(call: _api.Call) -> httpx.QueryParams | None:
    return httpx.QueryParams(tuple(call.params)) if call.params else None


class ResetRequired(SkaldClientError):
    """The change feed no longer holds the requested sequence: take a new snapshot."""


class AsyncClient:
    """``async with AsyncClient(url, token) as client: ...``.

    Iterators (:meth:`watch`, :meth:`subscribe`, :meth:`follow_changes`)
    reconnect with exponential backoff (``reconnect_delay`` doubling up to
    ``max_reconnect_delay``) and resume where they left off; errors the server
    reports (4xx) are raised as :class:`SkaldClientError` subclasses.
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
        """One SSE connection; raises typed errors for 4xx/5xx answers."""
        try:
            async with aconnect_sse(
                self._http,
                call.method,
                call.path,
                params=_params(call),
                json=call.json,
                headers=call.headers,
                timeout=httpx.Timeout(self._http.timeout.connect, read=None),
            ) as source:
                if source.response.status_code >= 400:
                    body = await source.response.aread()
                    raise error_from_response(source.response, body)
                async with aclosing(source.aiter_sse()) as events:
                    async for sse in events:
                        yield Event(sse.event, sse.id, _api.parse_data(sse.data))
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc

    async def _backoff(self, attempt: int) -> None:
        if self.max_reconnects is not None and attempt > self.max_reconnects:
            raise SkaldClientError(0, "reconnects_exhausted", f"gave up after {attempt - 1} reconnects")
        await anyio.sleep(min(self.max_reconnect_delay, self.reconnect_delay * 2 ** (attempt - 1)))

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
    async def query(self, db_id: str, sql: str, args: Any = None, **options: Any) -> QueryResult:
        result: QueryResult = await self._json(_api.query(db_id, sql, args, options))
        return result

    async def batch(
        self, db_id: str, statements: list[tuple[str, Any]] | list[dict[str, Any]]
    ) -> list[QueryResult]:
        body = await self._json(_api.batch(db_id, statements))
        results: list[QueryResult] = body["results"] if isinstance(body, dict) else body
        return results

    async def watch(self, db_id: str, sql: str, args: Any = None) -> AsyncGenerator[Event, None]:
        """Yield ``snapshot``/``update`` events whenever the result changes; reconnects transparently.

        After a reconnect the first snapshot is only yielded if its
        ``result_hash`` differs from the last one seen.
        """
        last_hash: str | None = None
        attempt = 0
        while True:
            try:
                async with aclosing(self._events(_api.watch(db_id, sql, args, last_hash))) as events:
                    async for event in events:
                        attempt = 0
                        if event.event == "error":
                            data = event.data if isinstance(event.data, dict) else {}
                            raise SkaldClientError(
                                400,
                                str(data.get("code", "watch_error")),
                                str(data.get("detail", event.data)),
                                data,
                            )
                        if event.event not in ("snapshot", "update"):
                            continue
                        digest = event.data.get("result_hash") if isinstance(event.data, dict) else None
                        if digest is not None and digest == last_hash:
                            continue
                        last_hash = digest
                        yield event
            except SkaldClientError as exc:
                if exc.status not in (0, 502, 503, 504):
                    raise
            attempt += 1
            await self._backoff(attempt)

    # ---- messages -----------------------------------------------------------------------------------
    async def publish(self, db_id: str, topic: str, payload: Any = None, **kwargs: Any) -> Published:
        """Publish JSON ``payload`` (or ``text=``, ``data=`` bytes, ``content_type=``, ``dedupe_key=``)."""
        published: Published = await self._json(_api.publish(db_id, topic, payload, **kwargs))
        return published

    async def poll_messages(
        self, db_id: str, *topics: str, since_id: int | None = None, limit: int | None = None
    ) -> Any:
        return await self._json(_api.poll_messages(db_id, list(topics), since_id, limit))

    async def subscribe(
        self, db_id: str, *topics: str, since_id: int | None = None, tail: int | None = None
    ) -> AsyncGenerator[Event, None]:
        """Yield message events forever, resuming with ``Last-Event-ID`` after a disconnect."""
        last_id: str | None = None
        attempt = 0
        while True:
            try:
                call = _api.subscribe(db_id, list(topics), since_id, tail, last_id)
                async with aclosing(self._events(call)) as events:
                    async for event in events:
                        attempt = 0
                        if event.id:
                            last_id = event.id
                        if event.event in ("heartbeat", "ping"):
                            continue
                        yield event
            except SkaldClientError as exc:
                if exc.status not in (0, 502, 503, 504):
                    raise
            attempt += 1
            await self._backoff(attempt)

    # ---- streams ------------------------------------------------------------------------------------
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
        self, db_id: str, resource: str, ttl: float, holder: str | None = None
    ) -> dict[str, Any]:
        return dict(await self._json(_api.lease_acquire(db_id, resource, ttl, holder)))

    async def renew_lease(
        self, db_id: str, lease: dict[str, Any], ttl: float | None = None
    ) -> dict[str, Any]:
        return dict(await self._json(_api.lease_renew(db_id, lease, ttl)))

    async def release_lease(self, db_id: str, lease: dict[str, Any]) -> None:
        await self._send(_api.lease_release(db_id, lease))

    @asynccontextmanager
    async def lease(
        self, db_id: str, resource: str, ttl: float = 30.0, holder: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Hold a lease for the block: renewed every ``ttl/3`` seconds, released on exit (also on error)."""
        lease = await self.acquire_lease(db_id, resource, ttl, holder)
        try:
            async with anyio.create_task_group() as tg:

                async def renew() -> None:
                    while True:
                        await anyio.sleep(ttl / 3)
                        lease.update(await self.renew_lease(db_id, lease, ttl))

                tg.start_soon(renew)
                try:
                    yield lease
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.release_lease(db_id, lease)

    # ---- blobs --------------------------------------------------------------------------------------
    async def upload_blob(
        self, db_id: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> dict[str, Any]:
        """Init an upload, PUT ``data`` to the presigned URL, then complete (the server verifies the hash)."""
        digest = hashlib.sha256(data).hexdigest()
        init = dict(await self._json(_api.blob_init(db_id, digest, len(data), content_type)))
        if init.get("exists"):
            return dict(await self._json(_api.blob_complete(db_id, digest)))
        async with httpx.AsyncClient(timeout=self._http.timeout) as raw:
            upload = init["upload"]
            put = await raw.put(upload["url"], content=data, headers=upload.get("headers") or {})
            if put.status_code >= 400:
                raise SkaldClientError(
                    put.status_code, "upload_failed", f"object storage refused the upload: {put.status_code}"
                )
        return dict(await self._json(_api.blob_complete(db_id, digest)))

    async def blob_url(self, db_id: str, sha256: str) -> str:
        return str((await self._json(_api.blob_read_url(db_id, sha256)))["url"])

    async def claim_blob(self, db_id: str, sha256: str, ref: str) -> Any:
        return await self._json(_api.blob_claim(db_id, sha256, ref))

    async def release_blob(self, db_id: str, sha256: str, ref: str) -> Any:
        return await self._json(_api.blob_release(db_id, sha256, ref))

    # ---- sync ---------------------------------------------------------------------------------------
    async def snapshot(self, db_id: str, dest: str | Path) -> int:
        """Download a consistent copy of ``db_id`` to ``dest``; return the change sequence it includes."""
        call = _api.snapshot(db_id)
        try:
            async with self._http.stream(call.method, call.path) as response:
                if response.status_code >= 400:
                    raise error_from_response(response, await response.aread())
                seq = int(response.headers["Skald-Change-Seq"])
                with open(dest, "wb") as fh:  # noqa: ASYNC230 - local file, small chunks
                    async for chunk in response.aiter_bytes():
                        fh.write(chunk)
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from None
        return seq

    async def changes(self, db_id: str, since: int = 0, limit: int | None = None) -> ChangesPage:
        page: ChangesPage = await self._json(_api.changes(db_id, since, limit))
        return page

    async def follow_changes(self, db_id: str, since: int = 0) -> AsyncGenerator[Event, None]:
        """Yield ``change`` events after ``since`` forever (reconnecting).

        Raises :class:`ResetRequired` when the feed no longer holds ``since``.
        """
        cursor = since
        attempt = 0
        while True:
            try:
                async with aclosing(self._events(_api.changes_stream(db_id, cursor))) as events:
                    async for event in events:
                        attempt = 0
                        if event.event == "reset":
                            raise ResetRequired(
                                410, "reset", "change feed no longer holds this sequence", event.data
                            )
                        if event.event == "change":
                            cursor = int(event.id)
                            yield event
            except ResetRequired:
                raise
            except SkaldClientError as exc:
                if exc.status not in (0, 502, 503, 504):
                    raise
            attempt += 1
            await self._backoff(attempt)
