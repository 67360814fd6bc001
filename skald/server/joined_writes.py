"""Joined writes: the ASGI messages an app sends inside :func:`joined_writes` leave in one socket write.

hypercorn (0.18, trio worker) writes every ASGI message to the socket as it comes: a small relay message
costs the consumer's response three writes (head, body, end of message) and the producer's answer two
(head, end). On loopback each ``send()`` is the costliest single step of the relay's small messages
(py-spy, ``bench/relay.py`` 1 KiB messages: 35% of the server's samples in ``socket.send``). A caller that
has the whole response at hand sends it inside the block; the bytes hypercorn would have written are
collected and written once, when the block ends, or earlier, just before the connection does anything
else (closes, goes idle for keep-alive), so their order never changes.

Only what the current task sends is joined (a :mod:`contextvars` variable: hypercorn runs the app's
``send`` in the app's own task), and only on a server whose config names the ``joined_writes`` patch
(:mod:`skald.server.patches`); elsewhere the block changes nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio
from hypercorn.events import Event, RawData

ProtocolSend = Callable[[Any, Event], Awaitable[None]]


@dataclasses.dataclass(eq=False)
class _Pending:
    server: Any = None  # the hypercorn TCPServer whose writes are held (the first one to write)
    chunks: list[bytes] = dataclasses.field(default_factory=list)


_pending: contextvars.ContextVar[_Pending | None] = contextvars.ContextVar("skald_joined_writes", default=None)
_original_send: list[ProtocolSend] = []  # hypercorn's TCPServer.protocol_send, once the hook is installed


@contextlib.asynccontextmanager
async def joined_writes() -> AsyncIterator[None]:
    """Hold the socket writes of this task's ASGI sends; write them as one when the block ends.

    The final write is shielded from cancellation: hypercorn's h11 state already counts those bytes as
    sent, so dropping them would leave a response cut off mid-way (hypercorn shields its own writes too).
    """
    pending = _Pending()
    reset = _pending.set(pending)
    try:
        yield
    finally:
        _pending.reset(reset)
        with trio.CancelScope(shield=True):
            await _flush(pending)


async def _flush(pending: _Pending) -> None:
    if pending.chunks and _original_send:
        data = pending.chunks[0] if len(pending.chunks) == 1 else b"".join(pending.chunks)
        pending.chunks.clear()
        await _original_send[0](pending.server, RawData(data=data))


def hook(original: ProtocolSend, active: Callable[[Any], bool]) -> ProtocolSend:
    """``TCPServer.protocol_send`` that holds writes inside :func:`joined_writes` (for servers ``active`` names)."""
    _original_send[:] = [original]

    async def protocol_send(self: Any, event: Event) -> None:
        pending = _pending.get()
        if pending is not None and active(self.config):
            if type(event) is RawData and pending.server in (None, self):
                pending.server = self
                pending.chunks.append(event.data)
                return
            await _flush(pending)  # anything else (close, keep-alive idle) comes after what was held
        await original(self, event)

    return protocol_send
