"""The blocking client for plain synchronous code (same methods as :class:`AsyncClient`)."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from httpx_sse import connect_sse

from skald.client import _api
from skald.client.aio import ResetRequired
from skald.client.errors import SkaldClientError, error_from_response, unreachable
from skald.client.types import ChangesPage, Event, Published, QueryResult

RETRYABLE = (0, 502, 503, 504)


def _params(call: _api.Call) -> httpx.QueryParams | None:
    return httpx.QueryParams(tuple(call.params)) if call.params else None


class Client:
    """``with Client(url, token) as client: client.query("notes", "SELECT 1")``."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        reconnect_delay: float = 0.2,
        max_reconnect_delay: float = 30.0,
        max_reconnects: int | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)
        self.reconnect_delay = reconnect_delay
        self.max_reconnect_delay = max_reconnect_delay
        self.max_reconnects = max_reconnects

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---- plumbing -----------------------------------------------------------------------------------
    def _send(self, call: _api.Call) -> httpx.Response:
        try:
            response = self._http.request(
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

    def _json(self, call: _api.Call) -> Any:
        response = self._send(call)
        return response.json() if response.content else None

    def _events(self, call: _api.Call) -> Generator[Event, None, None]:
        try:
            with connect_sse(
                self._http,
                call.method,
                call.path,
                params=_params(call),
                json=call.json,
                headers=call.headers,
                timeout=httpx.Timeout(self._http.timeout.connect, read=None),
            ) as source:
                if source.response.status_code >= 400:
                    raise error_from_response(source.response, source.response.read())
                for sse in source.iter_sse():
                    yield Event(sse.event, sse.id, _api.parse_data(sse.data))
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc

    def _backoff(self, attempt: int) -> None:
        if self.max_reconnects is not None and attempt > self.max_reconnects:
            raise SkaldClientError(0, "reconnects_exhausted", f"gave up after {attempt - 1} reconnects")
        time.sleep(min(self.max_reconnect_delay, self.reconnect_delay * 2 ** (attempt - 1)))

    # ---- documents ----------------------------------------------------------------------------------
    def list_documents(self) -> list[dict[str, Any]]:
        return list(self._json(_api.list_documents())["documents"])

    def create_document(self, db_id: str) -> dict[str, Any]:
        return dict(self._json(_api.create_document(db_id)))

    def get_document(self, db_id: str) -> dict[str, Any]:
        return dict(self._json(_api.get_document(db_id)))

    def delete_document(self, db_id: str) -> None:
        self._send(_api.delete_document(db_id))

    # ---- query --------------------------------------------------------------------------------------
    def query(self, db_id: str, sql: str, args: Any = None, **options: Any) -> QueryResult:
        result: QueryResult = self._json(_api.query(db_id, sql, args, options))
        return result

    def batch(
        self, db_id: str, statements: list[tuple[str, Any]] | list[dict[str, Any]]
    ) -> list[QueryResult]:
        body = self._json(_api.batch(db_id, statements))
        results: list[QueryResult] = body["results"] if isinstance(body, dict) else body
        return results

    def watch(self, db_id: str, sql: str, args: Any = None) -> Iterator[Event]:
        """Yield ``snapshot``/``update`` events when the result changes.

        Reconnects on network loss; a snapshot with an unchanged hash is skipped.
        """
        last_hash: str | None = None
        attempt = 0
        while True:
            try:
                with contextlib.closing(self._events(_api.watch(db_id, sql, args, last_hash))) as events:
                    for event in events:
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
                if exc.status not in RETRYABLE:
                    raise
            attempt += 1
            self._backoff(attempt)

    # ---- messages -----------------------------------------------------------------------------------
    def publish(self, db_id: str, topic: str, payload: Any = None, **kwargs: Any) -> Published:
        published: Published = self._json(_api.publish(db_id, topic, payload, **kwargs))
        return published

    def poll_messages(
        self, db_id: str, *topics: str, since_id: int | None = None, limit: int | None = None
    ) -> Any:
        return self._json(_api.poll_messages(db_id, list(topics), since_id, limit))

    def subscribe(
        self, db_id: str, *topics: str, since_id: int | None = None, tail: int | None = None
    ) -> Iterator[Event]:
        """Yield message events forever, resuming with ``Last-Event-ID`` after a disconnect."""
        last_id: str | None = None
        attempt = 0
        while True:
            try:
                call = _api.subscribe(db_id, list(topics), since_id, tail, last_id)
                with contextlib.closing(self._events(call)) as events:
                    for event in events:
                        attempt = 0
                        if event.id:
                            last_id = event.id
                        if event.event in ("heartbeat", "ping"):
                            continue
                        yield event
            except SkaldClientError as exc:
                if exc.status not in RETRYABLE:
                    raise
            attempt += 1
            self._backoff(attempt)

    # ---- streams ------------------------------------------------------------------------------------
    def ingest_webhook(
        self, db_id: str, endpoint: str, body: bytes, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Deliver a webhook to the document's inbox; returns the stored id (``duplicate`` on a retry)."""
        return dict(self._json(_api.webhook(db_id, endpoint, body, headers)))

    def create_token(
        self, scopes: list[str], label: str = "", expires_in: str | None = None
    ) -> dict[str, Any]:
        """Mint a token (``DB:ACTION[:PREFIX]`` scopes); the secret is in ``["token"]``, shown this once."""
        return dict(self._json(_api.create_token(scopes, label, expires_in)))

    def list_tokens(self) -> list[dict[str, Any]]:
        body = self._json(_api.list_tokens())
        tokens: list[dict[str, Any]] = body["tokens"] if isinstance(body, dict) else body
        return tokens

    def revoke_token(self, token_id: str) -> None:
        self._send(_api.revoke_token(token_id))

    def stream_send(self, db_id: str, topic: str, data: bytes, *, broadcast: bool = False) -> None:
        self._send(_api.stream_send(db_id, topic, data, broadcast=broadcast))

    def stream_next(self, db_id: str, topic: str) -> bytes:
        return self._send(_api.stream_next(db_id, topic)).content

    def stream_request(self, db_id: str, path: str, data: bytes) -> bytes:
        return self._send(_api.stream_request(db_id, path, data)).content

    def stream_respond(self, db_id: str, path: str, data: bytes) -> None:
        self._send(_api.stream_respond(db_id, path, data))

    # ---- leases -------------------------------------------------------------------------------------
    def acquire_lease(
        self, db_id: str, resource: str, ttl: float, holder: str | None = None
    ) -> dict[str, Any]:
        return dict(self._json(_api.lease_acquire(db_id, resource, ttl, holder)))

    def renew_lease(self, db_id: str, lease: dict[str, Any], ttl: float | None = None) -> dict[str, Any]:
        return dict(self._json(_api.lease_renew(db_id, lease, ttl)))

    def release_lease(self, db_id: str, lease: dict[str, Any]) -> None:
        self._send(_api.lease_release(db_id, lease))

    @contextlib.contextmanager
    def lease(
        self, db_id: str, resource: str, ttl: float = 30.0, holder: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Hold a lease for the block; a thread renews it every ``ttl/3`` s; released on exit."""
        lease = self.acquire_lease(db_id, resource, ttl, holder)
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(ttl / 3):
                with contextlib.suppress(SkaldClientError):
                    lease.update(self.renew_lease(db_id, lease, ttl))

        thread = threading.Thread(target=renew, name="skald-lease-renew", daemon=True)
        thread.start()
        try:
            yield lease
        finally:
            stop.set()
            thread.join()
            self.release_lease(db_id, lease)

    # ---- blobs --------------------------------------------------------------------------------------
    def upload_blob(
        self, db_id: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        init = dict(self._json(_api.blob_init(db_id, digest, len(data), content_type)))
        if init.get("exists"):
            return dict(self._json(_api.blob_complete(db_id, digest)))
        put = httpx.put(
            init["upload"]["url"],
            content=data,
            headers=init["upload"].get("headers") or {},
            timeout=self._http.timeout,
        )
        if put.status_code >= 400:
            raise SkaldClientError(
                put.status_code, "upload_failed", f"object storage refused the upload: {put.status_code}"
            )
        return dict(self._json(_api.blob_complete(db_id, digest)))

    def blob_url(self, db_id: str, sha256: str) -> str:
        return str(self._json(_api.blob_read_url(db_id, sha256))["url"])

    def claim_blob(self, db_id: str, sha256: str, ref: str) -> Any:
        return self._json(_api.blob_claim(db_id, sha256, ref))

    def release_blob(self, db_id: str, sha256: str, ref: str) -> Any:
        return self._json(_api.blob_release(db_id, sha256, ref))

    # ---- sync ---------------------------------------------------------------------------------------
    def snapshot(self, db_id: str, dest: str | Path) -> int:
        """Download a consistent copy to ``dest``; return the change sequence it includes."""
        call = _api.snapshot(db_id)
        try:
            with self._http.stream(call.method, call.path) as response:
                if response.status_code >= 400:
                    raise error_from_response(response, response.read())
                seq = int(response.headers["Skald-Change-Seq"])
                with open(dest, "wb") as fh:
                    for chunk in response.iter_bytes():
                        fh.write(chunk)
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from None
        return seq

    def changes(self, db_id: str, since: int = 0, limit: int | None = None) -> ChangesPage:
        page: ChangesPage = self._json(_api.changes(db_id, since, limit))
        return page

    def follow_changes(self, db_id: str, since: int = 0, *, reconnect: bool = True) -> Iterator[Event]:
        """Yield ``change`` events after ``since``; raise :class:`ResetRequired` on ``reset``.

        With ``reconnect=False`` connection errors are raised (the replica does its own backoff).
        """
        cursor = since
        attempt = 0
        while True:
            try:
                with contextlib.closing(self._events(_api.changes_stream(db_id, cursor))) as events:
                    for event in events:
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
                if exc.status not in RETRYABLE or not reconnect:
                    raise
            if not reconnect:
                raise SkaldClientError(0, "stream_ended", "change stream ended")
            attempt += 1
            self._backoff(attempt)
