"""The blocking client for plain synchronous code (same methods as :class:`AsyncClient`)."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from httpx_sse import connect_sse

from skald.client import _api
from skald.client.errors import (
    Conflict,
    Forbidden,
    LeaseLost,
    NotFound,
    SkaldClientError,
    error_from_response,
    unreachable,
)
from skald.client.jobs import JobsMethods
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


def _params(call: _api.Call) -> httpx.QueryParams | None:
    return httpx.QueryParams(tuple(call.params)) if call.params else None


class Client(JobsMethods):
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
        time.sleep(
            _api.backoff_delay(attempt, self.reconnect_delay, self.max_reconnect_delay, self.max_reconnects)
        )

    def health(self) -> dict[str, Any]:
        """``GET /healthz`` (no token needed): raises :class:`ServerUnreachable` when nothing answers."""
        body: dict[str, Any] = self._json(_api.health())
        return body

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
    def query(
        self,
        db_id: str,
        sql: str,
        args: Any = None,
        *,
        fence: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> QueryResult:
        """One statement (see :meth:`AsyncClient.query <skald.client.AsyncClient.query>`)."""
        result: QueryResult = self._json(_api.query(db_id, sql, args, options, fence))
        return result

    def batch(
        self,
        db_id: str,
        statements: _api.Statements,
        *,
        fence: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> list[QueryResult]:
        body = self._json(_api.batch(db_id, statements, options, fence))
        results: list[QueryResult] = body["results"]
        return results

    def watch(
        self, db_id: str, sql: str, args: Any = None, *, heartbeat_seconds: float | None = None
    ) -> Generator[Event, None, None]:
        """``snapshot``/``update`` (and ``error``) events; reconnects with the last ``result_hash``."""
        return self._stream(_api.WatchCursor(db_id, sql, args, heartbeat_seconds))

    def _stream(self, cursor: _api.StreamCursor) -> Generator[Event, None, None]:
        """Run ``cursor`` over SSE connections, reconnecting with backoff (see :mod:`_api`)."""
        attempt = 0
        while True:
            try:
                with contextlib.closing(self._events(cursor.call())) as events:
                    for event in events:
                        attempt = 0
                        shown = cursor.accept(event)
                        if shown is not None:
                            yield shown
                raise _api.stream_ended()
            except SkaldClientError as exc:
                if not _api.should_reconnect(cursor, exc):
                    raise
            attempt += 1
            self._backoff(attempt)

    # ---- messages -----------------------------------------------------------------------------------
    def publish(
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
        call = _api.publish(
            db_id, topic, payload, text=text, data=data, content_type=content_type, dedupe_key=dedupe_key
        )
        published: Published = self._json(call)
        return published

    def poll_messages(
        self, db_id: str, *topics: str, since_id: int | None = None, limit: int | None = None
    ) -> MessagesPage:
        page: MessagesPage = self._json(_api.poll_messages(db_id, list(topics), since_id, limit))
        return page

    def subscribe(
        self,
        db_id: str,
        *topics: str,
        since_id: int | None = None,
        tail: int | None = None,
        heartbeat: float | None = None,
        idle_timeout: float | None = None,
    ) -> Generator[Event, None, None]:
        """``message``/``reset`` events forever, resuming with ``Last-Event-ID`` after a disconnect.

        ``idle_timeout``: also yield an ``idle`` event (no data) when that many seconds pass
        without a message (needs ``heartbeat`` below it; the server's heartbeats drive the clock).
        """
        cursor = _api.SubscribeCursor(db_id, topics, since_id, tail, heartbeat, idle_timeout, time.monotonic)
        return self._stream(cursor)

    # ---- webhooks and tokens ----------------------------------------------------------------------
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

    # ---- streams (relay: queues, broadcast, request/response) ---------------------------------------
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
        self, db_id: str, resource: str, ttl_seconds: float | None = None, owner: str | None = None
    ) -> Lease:
        lease: Lease = self._json(_api.lease_acquire(db_id, resource, owner or _api.default_owner(), ttl_seconds))
        return lease

    def renew_lease(self, db_id: str, lease: Lease, ttl_seconds: float | None = None) -> Lease:
        renewed: Lease = self._json(
            _api.lease_renew(db_id, lease["resource"], lease["lease_token"], ttl_seconds)
        )
        return renewed

    def release_lease(self, db_id: str, lease: Lease) -> Lease:
        released: Lease = self._json(_api.lease_release(db_id, lease["resource"], lease["lease_token"]))
        return released

    @contextlib.contextmanager
    def lease(
        self,
        db_id: str,
        resource: str,
        ttl_seconds: float = 30.0,
        owner: str | None = None,
        *,
        renew_every: float | None = None,
    ) -> Iterator[Lease]:
        """Hold a lease for the block; a thread renews it every ``renew_every`` (default ttl/3) s.

        Released on exit. A failed renewal stops the renewing and raises :class:`LeaseLost` when
        the block ends (a thread cannot interrupt it: check ``lease["fence"]`` with ``fence=``).
        """
        lease = self.acquire_lease(db_id, resource, ttl_seconds, owner)
        stop = threading.Event()
        lost: list[SkaldClientError] = []

        def renew() -> None:
            while not stop.wait(renew_every or ttl_seconds / 3):
                try:
                    lease.update(self.renew_lease(db_id, lease, ttl_seconds))
                except SkaldClientError as exc:
                    lost.append(exc)
                    return

        thread = threading.Thread(target=renew, name="skald-lease-renew", daemon=True)
        thread.start()
        try:
            yield lease
        finally:
            stop.set()
            thread.join()
            if not lost:
                with contextlib.suppress(Conflict, Forbidden, NotFound):
                    lease.update(self.release_lease(db_id, lease))
        if lost:
            exc = lost[0]
            raise LeaseLost(exc.status, exc.code, f"lease on {resource} lost: {exc.detail}", exc.problem)

    # ---- blobs --------------------------------------------------------------------------------------
    def upload_blob(
        self,
        db_id: str,
        source: bytes | str | Path,
        content_type: str = "application/octet-stream",
        *,
        ref: str | None = None,
        progress: UploadProgress | None = None,
    ) -> dict[str, Any]:
        """Like :meth:`AsyncClient.upload_blob`; ``source`` may be a file path (streamed in chunks,
        ``progress(n_bytes)`` called per chunk)."""
        if isinstance(source, bytes):
            digest, size = hashlib.sha256(source).hexdigest(), len(source)
        else:
            digest, size = _api.file_sha256(Path(source))
        init = self._json(_api.blob_init(db_id, digest, size, content_type))
        uploaded = not init["exists"]
        if uploaded:
            spec = init["upload"]
            with contextlib.ExitStack() as stack:
                if isinstance(source, bytes):
                    body: bytes | Iterator[bytes] = source
                    if progress is not None:
                        progress(size)
                else:
                    body = _chunks(stack.enter_context(Path(source).open("rb")), progress)
                try:
                    put = httpx.request(
                        spec["method"],
                        spec["url"],
                        content=body,
                        headers=_api.upload_headers(spec, size),
                        timeout=None,
                    )
                except httpx.TransportError as exc:
                    raise unreachable(spec["url"].split("?")[0], exc) from None
            if put.status_code >= 300:
                raise _api.upload_failed(put.status_code, put.text)
            self._json(_api.blob_complete(db_id, digest))
        if ref is not None:
            self.claim_blob(db_id, digest, ref)
        return _api.upload_result(digest, size, uploaded, ref)

    def blob_info(self, db_id: str, sha256: str) -> dict[str, Any]:
        """``{"sha256", "size", "content_type", "url", "expires_in", "expires_at"}`` (presigned GET)."""
        return dict(self._json(_api.blob_read_url(db_id, sha256)))

    def blob_url(self, db_id: str, sha256: str) -> str:
        return str(self.blob_info(db_id, sha256)["url"])

    def read_blob(self, db_id: str, sha256: str) -> bytes:
        """The blob's bytes (verified against ``sha256``)."""
        url = self.blob_url(db_id, sha256)
        try:
            response = httpx.get(url, timeout=self._http.timeout)
        except httpx.TransportError as exc:
            raise unreachable(url.split("?")[0], exc) from None
        if response.status_code != 200:
            raise _api.download_failed(response.status_code)
        _api.check_sha256(response.content, sha256)
        return response.content

    def download_blob(
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
        info = self.blob_info(db_id, sha256)
        out = Path(dest)
        partial = _api.part_path(out)
        digest = hashlib.sha256()
        try:
            with httpx.stream("GET", info["url"], timeout=None) as response:
                if response.status_code != 200:
                    raise _api.download_failed(response.status_code)
                with partial.open("wb") as fh:
                    for chunk in response.iter_bytes(_api.CHUNK):
                        digest.update(chunk)
                        fh.write(chunk)
                        if progress is not None:
                            progress(len(chunk), info.get("size"))
            _api.check_digest(digest.hexdigest(), sha256)
        except httpx.TransportError as exc:
            partial.unlink(missing_ok=True)
            raise unreachable(str(info["url"]).split("?")[0], exc) from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(out)
        return _api.download_result(sha256, info, out)

    def claim_blob(self, db_id: str, sha256: str, ref: str) -> dict[str, Any]:
        return dict(self._json(_api.blob_claim(db_id, sha256, ref)))

    def release_blob(self, db_id: str, sha256: str, ref: str) -> dict[str, Any]:
        return dict(self._json(_api.blob_release(db_id, sha256, ref)))

    def list_blobs(self, db_id: str, sha256: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        return list(self._json(_api.blob_list(db_id, sha256, limit))["blobs"])

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

    def follow_changes(
        self, db_id: str, since: int = 0, *, reconnect: bool = True
    ) -> Generator[Event, None, None]:
        """Yield ``change`` events after ``since``; raise :class:`ResetRequired` on ``reset``.

        With ``reconnect=False`` connection errors and the end of the stream are raised (the
        replica does its own backoff).
        """
        return self._stream(_api.ChangesCursor(db_id, since, reconnect))


def _chunks(fh: Any, progress: UploadProgress | None) -> Iterator[bytes]:
    while chunk := fh.read(_api.CHUNK):
        if progress is not None:
            progress(len(chunk))
        yield chunk
