"""Moving relay messages over ASGI: the producer's body in, the consumer's response out.

The producer's body is read from ``receive()`` only as each chunk is handed on,
so hypercorn stops reading a fast producer's socket while its consumer is slow.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping
from typing import Any

import trio

from skald.hypercorn_patches import hung_up
from skald.relay import Transfer

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ProducerGone(Exception):
    """The producer disconnected before its whole body was read."""


class BodyReader:
    """The producer's body. ``fixed`` (from ``body=``) replaces whatever the request carried."""

    def __init__(self, receive: Receive, fixed: bytes | None = None) -> None:
        self._receive = receive
        # hypercorn's trio worker hands over a memory channel's bound ``receive``: what it already
        # queued can be taken without a trip through the scheduler per chunk.
        self._receive_nowait: Callable[[], Message] | None = getattr(
            getattr(receive, "__self__", None), "receive_nowait", None
        )
        self._fixed = fixed
        self._buffered: deque[Message] = deque()
        self.gone = trio.Event()

    async def watch_while_waiting(self) -> None:
        """Run while unpaired: notice a disconnect, reading at most one body chunk ahead.

        A small body arrives whole in the first message; after it the next
        ``receive()`` returns only when the client goes away. A larger body
        stops the watch after one chunk: reading on would buffer it.
        """
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.gone.set()
                return
            if self._fixed is None:
                self._buffered.append(message)
            if message.get("more_body", False):
                return

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


async def wait_unless_gone(reader: BodyReader, wait: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``wait()`` while watching for the producer's disconnect; raise :class:`ProducerGone` on it."""
    result: list[Any] = []
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            await reader.watch_while_waiting()
            if reader.gone.is_set():
                nursery.cancel_scope.cancel()

        async def watch_socket() -> None:
            await hung_up()
            reader.gone.set()
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        nursery.start_soon(watch_socket)
        result.append(await wait())
        nursery.cancel_scope.cancel()
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


class _CutShort(Exception):
    """Ends a response without its last chunk so the client sees an incomplete body."""


async def deliver(get_transfer: Callable[[], Awaitable[Transfer | None]], receive: Receive, send: Send) -> bool:
    """Wait for a transfer and stream it as this request's response; return whether it arrived whole.

    ``get_transfer`` may return ``None`` (nothing to deliver; nothing is sent).
    The client going away (``http.disconnect``) cancels the wait or the transfer;
    the transfer is then finished as not delivered, so its producer answers 502.
    """
    delivered = False
    transfer: Transfer | None = None
    async with trio.open_nursery() as nursery:
        gone = trio.Event()

        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    nursery.cancel_scope.cancel()
                    return

        async def watch_hang_up() -> None:
            await hung_up()
            gone.set()
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch_disconnect)
        nursery.start_soon(watch_hang_up)
        transfer = await get_transfer()
        if transfer is None:
            nursery.cancel_scope.cancel()
            return False
        try:
            await send({"type": "http.response.start", "status": transfer.status, "headers": transfer.headers})
            while (data := await transfer.body.take()) is not None:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            if transfer.producer_aborted:
                raise _CutShort
            if not gone.is_set():
                # Shielded: completing the response makes hypercorn report a disconnect at once,
                # which must not cancel the very send that completed it.
                with trio.CancelScope(shield=True):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                delivered = True
        finally:
            transfer.finish(delivered)
        nursery.cancel_scope.cancel()
    return delivered


async def text_response(send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A short ``text/plain`` answer, as legacy scripts grep them."""
    body = (text + "\n").encode() if text else b""
    start = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    with contextlib.suppress(OSError):
        await send({"type": "http.response.start", "status": status, "headers": start + (headers or [])})
        await send({"type": "http.response.body", "body": body, "more_body": False})
