"""Moving relay messages over ASGI: the producer's body in, the consumer's response out.

The producer's body is read from ``receive()`` only as each chunk is handed on,
so hypercorn stops reading a fast producer's socket while its consumer is slow.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import trio

from skald.relay.channels import Transfer
from skald.server.hang_ups import on_hang_up
from skald.server.joined_writes import joined_writes
from skald.server.patches import queued_receive

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ProducerGone(Exception):
    """The producer disconnected before its whole body was read."""


class BodyReader:
    """The producer's body. ``fixed`` (from ``body=``) replaces whatever the request carried."""

    def __init__(self, receive: Receive, fixed: bytes | None = None) -> None:
        self._receive = receive
        # What hypercorn already queued is taken without a trip through the scheduler per chunk.
        self._receive_nowait: Callable[[], Message] | None = queued_receive(receive)
        self._fixed = fixed
        self._buffered: deque[Message] = deque()
        self.gone = trio.Event()

    async def left_while_waiting(self) -> bool:
        """Run while unpaired: return ``True`` once the client left, reading at most one body chunk ahead.

        A small body arrives whole in the first message; after it the next
        ``receive()`` returns only when the client goes away. A larger body
        stops the watch (``False``) after one chunk: reading on would buffer it.
        """
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.gone.set()
                return True
            if self._fixed is None:
                self._buffered.append(message)
            if message.get("more_body", False):
                return False

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        if self._fixed is not None:
            if self._fixed:
                yield self._fixed
            return
        while True:
            message = self._buffered.popleft() if self._buffered else self._queued() or await self._receive()
            if message["type"] == "http.disconnect":
                raise ProducerGone
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

    def _queued(self) -> Message | None:
        if self._receive_nowait is None:
            return None
        try:
            return self._receive_nowait()
        except trio.WouldBlock:
            return None


@contextlib.asynccontextmanager
async def unless_gone(gone: trio.Event, left: Callable[[], Awaitable[bool]]) -> AsyncIterator[None]:
    """Run the block; if the client leaves meanwhile, set ``gone`` and cancel the block (quietly).

    A hang-up is seen on the socket where it can be (no task needed); elsewhere
    a task awaits ``left()``, which watches ``http.disconnect``.
    """
    with trio.CancelScope() as scope:

        def leave() -> None:
            gone.set()
            scope.cancel(reason="peer left")

        with on_hang_up(leave) as watched:
            if watched:
                yield
                return
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    if await left():
                        leave()

                nursery.start_soon(watch)
                try:
                    yield
                except Exception as exc:  # raised below, outside the nursery: not wrapped in a group
                    failed: Exception | None = exc
                else:
                    failed = None
                nursery.cancel_scope.cancel(reason="block finished")
            if failed is not None:
                raise failed


async def wait_unless_gone(reader: BodyReader, wait: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``wait()`` while watching for the producer's disconnect; raise :class:`ProducerGone` on it."""
    result: list[Any] = []
    async with unless_gone(reader.gone, reader.left_while_waiting):
        result.append(await wait())
    if not result:
        raise ProducerGone
    return result[0]


async def pump(reader: BodyReader, transfers: list[Transfer], on_bytes: Callable[[int], None]) -> None:
    """Stream the body into every transfer (those whose consumer left are skipped); close them after.

    Raises :class:`ProducerGone` if the producer left mid-body (consumers then see a cut body).
    """
    live = list(transfers)
    aborted = False
    try:
        async with contextlib.aclosing(reader.chunks()) as chunks:
            async for chunk in chunks:
                for transfer in list(live):
                    try:
                        await transfer.body.put(chunk)
                        on_bytes(len(chunk))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        live.remove(transfer)
                # With every consumer gone the rest is read and dropped: an HTTP/1.1 client
                # reads the 502 only after it has sent its whole body.
    except ProducerGone:
        aborted = True
        raise
    finally:
        for transfer in transfers:
            transfer.producer_aborted = aborted
            transfer.body.end()


async def deliver(
    get_transfer: Callable[[], Awaitable[Transfer | None]], receive: Receive, send: Send, *, method: str = "GET"
) -> bool:
    """Wait for a transfer and stream it as this request's response; return whether it arrived whole.

    ``get_transfer`` may return ``None`` (nothing to deliver; nothing is sent). ``method`` is this
    request's (a response to ``HEAD`` has no body).

    Delivered means every byte the client needs was handed to its connection. A sized response
    ends with its last body byte, so that piece completes it at once, without waiting for the
    producer's end of message: curl closes the moment it has ``Content-Length`` bytes, and that
    hang-up, seen before the end arrived, must not turn a whole delivery into a 502 (a script that
    retries on 502 would send twice). The client going away before then (a hang-up, or
    ``http.disconnect``) cancels the wait or the transfer; the transfer is then finished as not
    delivered, so its producer answers 502.
    """
    delivered = False
    gone = trio.Event()

    async def disconnected() -> bool:
        while (await receive())["type"] != "http.disconnect":
            pass
        return True

    async with unless_gone(gone, disconnected):
        transfer = await get_transfer()
        if transfer is None:
            return False
        try:
            due = _bytes_due(transfer, method)
            # The head leaves once the body's first piece is at hand: as legacy's Go server, which sends
            # headers with the first body bytes.
            data = None if due == 0 else await transfer.body.take()
            head: Message | None = {"type": "http.response.start", "status": transfer.status,
                                    "headers": _framed(transfer)}
            sent, last, whole = 0, b"", due == 0
            while data is not None:
                if (due is not None and sent + len(data) >= due) or (
                    transfer.body.drained and not transfer.producer_aborted
                ):
                    last, whole = data, True  # the whole rest: it ends the response in the same write
                    break
                if head is not None:
                    await send(head)
                    head = None
                await send({"type": "http.response.body", "body": data, "more_body": True})
                sent += len(data)
                data = await transfer.body.take()
            else:
                whole = whole or (not transfer.producer_aborted and (due is None or sent == due))
            if not whole:
                if head is not None:
                    await send(head)
                # Ending the app without the message's end makes hypercorn close the connection:
                # the client sees a cut body, not a whole one.
                return False
            if not gone.is_set():
                # Shielded: completing the response makes hypercorn report a disconnect at once,
                # which must not cancel the very send that completed it. What is left of the response
                # (all of it, for a small message) leaves in one socket write.
                with trio.CancelScope(shield=True):
                    async with joined_writes():
                        if head is not None:
                            await send(head)
                        await send({"type": "http.response.body", "body": last, "more_body": False})
                delivered = True
        finally:
            transfer.finish(delivered)
    return delivered


def _bytes_due(transfer: Transfer, method: str) -> int | None:
    """How many body bytes the client needs for a whole response; ``None``: until the producer's end (chunked)."""
    if method == "HEAD" or transfer.status in (204, 304):
        return 0  # a head only (hypercorn drops any body): it is whole as soon as the head is written
    return transfer.length


def _framed(transfer: Transfer) -> list[tuple[bytes, bytes]]:
    """The transfer's headers and its framing: a known length is ``Content-Length``, else h11 chunks it.

    204 and 304 answers carry no body, so they are not given a length (RFC 9110, 8.6).
    """
    if transfer.length is None or transfer.status in (204, 304):
        return transfer.headers
    return [*transfer.headers, (b"content-length", str(transfer.length).encode())]


async def whole_response(
    send: Send, status: int, content_type: bytes, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A response whose body is at hand."""
    start = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    with contextlib.suppress(OSError):
        async with joined_writes():  # head and body in one socket write
            await send({"type": "http.response.start", "status": status, "headers": start + (headers or [])})
            await send({"type": "http.response.body", "body": body, "more_body": False})


async def text_response(send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A short ``text/plain`` answer, as legacy scripts grep them."""
    await whole_response(send, status, b"text/plain; charset=utf-8", (text + "\n").encode() if text else b"", headers)
